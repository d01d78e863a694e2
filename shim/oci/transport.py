"""HTTP for the registry client, on rules a hostile server cannot bend.

- Only http:// and https:// are ever opened: the opener has no file, ftp or data handler, and
  every URL (a redirect's Location, a token realm) is checked before it is opened. A redirect
  from https to http is refused unless plain HTTP was allowed (--no-https).
- Redirects are followed here (at most MAX_REDIRECTS), so that the Authorization header goes to
  the origin it was given for (scheme, host and port) and to no other; the caller learns where a
  refusal came from (HTTPError.url) and fails when a 401 comes from another host.
- Time is bounded three ways (Limits, from the environment): each network read
  (SHIMRUN_PULL_TIMEOUT); each transfer (a manifest, a blob, a token) by a deadline of
  SHIMRUN_PULL_BLOB_DEADLINE seconds plus its declared size at the minimum rate, and by that
  rate (SHIMRUN_PULL_MIN_RATE bytes/s, over every SHIMRUN_PULL_TIMEOUT seconds); the whole pull
  by SHIMRUN_PULL_DEADLINE. A watchdog thread enforces the last two by shutting the transfer's
  sockets down, so a server dripping a byte every few seconds (in the status line, the headers
  or the body) fails as surely as a silent one.
- Every network or protocol failure is one ShimError (exit 75) naming the host and what was
  being read, with registry text escaped (shim.errors.shown).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from shim.errors import ExitCode, ShimError, UsageError, shown

MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_SCHEMES = ("http", "https")
_LIMITS_HINT = ("check the network; the limits are SHIMRUN_PULL_TIMEOUT, SHIMRUN_PULL_MIN_RATE, "
                "SHIMRUN_PULL_BLOB_DEADLINE and SHIMRUN_PULL_DEADLINE")


@dataclass(frozen=True)
class Limits:
    read_timeout: float = 60.0          # one network read; also the window the rate is measured over
    min_rate: int = 10 << 10            # bytes per second, at least, over each window
    blob_floor: float = 300.0           # a transfer's deadline: this, plus its declared size at min_rate
    pull_deadline: float = 12 * 3600.0  # the whole pull's network part

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Limits:
        def number(name: str, default: float) -> float:
            text = env.get(name, "")
            if not text:
                return default
            try:
                value = float(text)
            except ValueError:
                value = -1.0
            if not 0 < value < 1e9:
                raise UsageError(f"{name}={shown(text, 40)} is not a positive number", f"e.g. {name}={default:g}")
            return value

        return cls(number("SHIMRUN_PULL_TIMEOUT", cls.read_timeout), int(number("SHIMRUN_PULL_MIN_RATE", cls.min_rate)),
                   number("SHIMRUN_PULL_BLOB_DEADLINE", cls.blob_floor),
                   number("SHIMRUN_PULL_DEADLINE", cls.pull_deadline))

    def transfer_deadline(self, size: int) -> float:
        return self.blob_floor + max(size, 0) / max(self.min_rate, 1)


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port): where credentials given for `url` may go."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme, (parts.hostname or "").lower(), port or (443 if parts.scheme == "https" else 80)


def host_of(url: str) -> str:
    return shown(urllib.parse.urlsplit(url).netloc, 80)


@dataclass
class _Transfer:
    host: str
    what: str
    ends: float                       # monotonic time
    started: float = field(default_factory=time.monotonic)
    received: int = 0


class Watch:
    """The pull's deadline and the current transfer's deadline and rate, enforced by a thread
    that shuts the transfer's sockets down (a blocked read then returns) and records why."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.pull_ends = time.monotonic() + limits.pull_deadline
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        self.tripped: ShimError | None = None
        self.current: _Transfer | None = None

    @contextlib.contextmanager
    def transfer(self, host: str, what: str, size: int = -1) -> Iterator[_Transfer]:
        if self.current is not None:  # a token fetched inside a transfer: it counts toward that one
            yield self.current
            return
        now = time.monotonic()
        if now >= self.pull_ends:
            raise self._late(_Transfer(host, what, now), self.limits.pull_deadline, "SHIMRUN_PULL_DEADLINE")
        t = self.current = _Transfer(host, what, min(self.pull_ends, now + self.limits.transfer_deadline(size)))
        stop = threading.Event()
        guard = threading.Thread(target=self._guard, args=(t, stop), name="shim-pull-watch", daemon=True)
        guard.start()
        try:
            yield t
            self.check()
        finally:
            stop.set()
            guard.join()
            with self.lock:
                for s in self.socks:
                    s.close()
                self.socks.clear()
            self.current, self.tripped = None, None

    def attach(self, sock: socket.socket) -> None:
        """Watch a new connection of the current transfer (a duplicate descriptor: shutting it
        down ends the connection whatever the reading side wraps it in, TLS included)."""
        with self.lock:
            watched = sock.dup()
            self.socks.append(watched)
            if self.tripped is not None:
                _cut(watched)

    def check(self) -> None:
        if self.tripped is not None:
            raise self.tripped

    def _guard(self, t: _Transfer, stop: threading.Event) -> None:
        window = self.limits.read_timeout
        mark, seen = t.started, 0
        while not stop.wait(min(1.0, window / 4)):
            now = time.monotonic()
            if now >= t.ends:
                pull = t.ends >= self.pull_ends
                self._trip(self._late(t, self.limits.pull_deadline if pull else t.ends - t.started,
                                      "SHIMRUN_PULL_DEADLINE" if pull else "SHIMRUN_PULL_BLOB_DEADLINE"))
                return
            if now - mark >= window:
                if t.received - seen < self.limits.min_rate * (now - mark):
                    self._trip(ShimError(ExitCode.UNREACHABLE, f"{t.host} is too slow sending {t.what}: "
                                         f"{t.received - seen} bytes in the last {now - mark:.0f} s, less than "
                                         f"{self.limits.min_rate} bytes/s", _LIMITS_HINT))
                    return
                mark, seen = now, t.received

    def _late(self, t: _Transfer, seconds: float, setting: str) -> ShimError:
        return ShimError(ExitCode.UNREACHABLE, f"{t.host} did not finish sending {t.what} within {seconds:.0f} s "
                         f"({t.received} bytes came; {setting})", _LIMITS_HINT)

    def _trip(self, error: ShimError) -> None:
        with self.lock:
            self.tripped = error
            for s in self.socks:
                _cut(s)


def _cut(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)


def _watched(watch: Watch):
    def create(address: tuple[str, int], timeout: float | None = socket.getdefaulttimeout(),  # noqa: B008
               source_address: tuple[str, int] | None = None, **kw: Any) -> socket.socket:
        sock = socket.create_connection(address, timeout, source_address, **kw)
        watch.attach(sock)
        return sock
    return create


class _Connection(http.client.HTTPConnection):
    def __init__(self, *args, watch: Watch, **kw) -> None:
        super().__init__(*args, **kw)
        self._create_connection = _watched(watch)


class _TLSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, watch: Watch, **kw) -> None:
        super().__init__(*args, **kw)
        self._create_connection = _watched(watch)


class _HTTP(urllib.request.HTTPHandler):
    def __init__(self, watch: Watch) -> None:
        super().__init__()
        self.watch = watch

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_Connection, watch=self.watch), req)


class _HTTPS(urllib.request.HTTPSHandler):
    def __init__(self, watch: Watch, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self.watch = watch

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_TLSConnection, watch=self.watch), req, context=self._context)


class Transport:
    """GET requests under a Watch: http(s) only, redirects followed here, credentials kept to
    their origin."""

    def __init__(self, context: ssl.SSLContext, watch: Watch, allow_http: bool) -> None:
        self.watch, self.allow_http = watch, allow_http
        self.opener = urllib.request.OpenerDirector()
        for handler in (urllib.request.ProxyHandler(), _HTTP(watch), _HTTPS(watch, context),
                        urllib.request.UnknownHandler(), urllib.request.HTTPDefaultErrorHandler(),
                        urllib.request.HTTPErrorProcessor()):
            self.opener.add_handler(handler)

    def check_url(self, url: str, what: str, came_from: str = "") -> None:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        where = f"{host_of(came_from)} redirected {what} to" if came_from else f"{what} is at"
        if scheme not in _SCHEMES:
            raise ShimError(ExitCode.UNREACHABLE, f"{where} '{shown(url, 80)}': shim opens only http:// and "
                            "https:// addresses", "the registry is misconfigured or hostile")
        if came_from and scheme == "http" and origin(came_from)[0] == "https" and not self.allow_http:
            raise ShimError(ExitCode.UNREACHABLE, f"{where} '{shown(url, 80)}', from https to plain http",
                            "shim follows no redirect out of TLS (unless --no-https)")

    def open(self, url: str, what: str, headers: Mapping[str, str], auth: tuple[str, tuple]
             ) -> http.client.HTTPResponse:
        """The response to GET `url` (after redirects). `auth`: (Authorization value, the origin
        it is for). Raises urllib.error.HTTPError for a status that is not 2xx (its .url: the
        address that answered so), ShimError for anything else."""
        came_from = ""
        for _ in range(MAX_REDIRECTS + 1):
            self.check_url(url, what, came_from)
            req = urllib.request.Request(url, headers=dict(headers))
            if auth[0] and origin(url) == auth[1]:
                req.add_header("Authorization", auth[0])
            try:
                return self.opener.open(req, timeout=self.watch.limits.read_timeout)  # type: ignore[no-any-return]
            except urllib.error.HTTPError as e:
                location = e.headers.get("Location") if e.code in _REDIRECTS and e.headers else None
                if not location:
                    self.watch.check()
                    raise
                e.close()
                came_from, url = url, urllib.parse.urljoin(url, location)
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
                self.watch.check()
                raise network_error(e, host_of(url), what) from None
        raise ShimError(ExitCode.UNREACHABLE, f"{host_of(url)} redirected {what} more than {MAX_REDIRECTS} times",
                        "the registry is misconfigured or hostile")


class Body:
    """A response body read under the Watch: reads count toward the rate, a connection closed
    before the declared length is an error, and every error names the host and what was read."""

    def __init__(self, resp: http.client.HTTPResponse, watch: Watch, what: str) -> None:
        self.resp, self.watch, self.what = resp, watch, what
        self.host = host_of(resp.geturl() or "") if hasattr(resp, "geturl") else ""
        self.count = 0

    @property
    def headers(self):
        return self.resp.headers

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        try:
            data = self.resp.read(n)
        except (OSError, http.client.HTTPException, ValueError) as e:
            self.watch.check()
            raise network_error(e, self.host, f"{self.what} (after {self.count} bytes)") from None
        self.watch.check()
        left = getattr(self.resp, "length", None)
        if not data and left:
            raise ShimError(ExitCode.UNREACHABLE, f"{self.host} closed the connection after {self.count} bytes of "
                            f"{self.what} ({left} more were announced)", "try again later")
        self.count += len(data)
        if self.watch.current is not None:
            self.watch.current.received += len(data)
        return data

    def read_all(self, limit: int) -> bytes:
        """The whole body, at most `limit` bytes (one more is an error of the caller's)."""
        parts, total = [], 0
        while total <= limit and (chunk := self.read(min(1 << 20, limit + 1 - total))):
            parts.append(chunk)
            total += len(chunk)
        return b"".join(parts)

    def readable(self) -> bool:
        return True


def network_error(e: BaseException, host: str, what: str) -> ShimError:
    """One line for a failure to reach `host` or to read `what` from it."""
    reason = getattr(e, "reason", e)
    if isinstance(reason, ssl.SSLCertVerificationError):
        return ShimError(ExitCode.UNREACHABLE, f"{host}: its TLS certificate is not trusted "
                         f"({shown(reason.verify_message)})", "pass the registry's CA with --ca-file, or --no-https "
                         "for a plain-HTTP registry")
    if isinstance(reason, ssl.SSLError):
        return ShimError(ExitCode.UNREACHABLE, f"{host}: TLS failed ({shown(str(reason))})",
                         "for a plain-HTTP registry pass --no-https")
    if isinstance(reason, socket.timeout | TimeoutError):
        return ShimError(ExitCode.UNREACHABLE, f"{host} did not answer in time while sending {what}",
                         "check the network and try again (SHIMRUN_PULL_TIMEOUT sets the wait)")
    if isinstance(e, http.client.HTTPException):
        return ShimError(ExitCode.UNREACHABLE, f"{host} broke off or garbled {what} ({type(e).__name__}: "
                         f"{shown(str(e), 80)})", "try again later; if it persists, the registry is broken")
    text = getattr(reason, "strerror", None) or str(reason)
    return ShimError(ExitCode.UNREACHABLE, f"cannot reach the registry {host} for {what} ({shown(text, 80)})",
                     "check the address and that it is up; try again later")
