"""A hostile registry's plumbing for the tests: a stdlib HTTP(S) server on 127.0.0.1 that answers
each path with a responder the test chose, and logs every request it gets with its headers (so a
test can assert where credentials went).

Responders (each a function of the request handler): `reply` (status, headers, body), `redirect`,
`challenge` (a 401 with a WWW-Authenticate header), `drip` (a whole raw response, one byte at a
time), `held` (a body shorter than its Content-Length, the connection kept open), `chunked_cut`
(a chunked body that stops in the middle of a chunk), `endless` (bytes until the client leaves).
A server may require an Authorization header on /v2/ (`gate`), as a registry with credentials does.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Responder = Callable[[http.server.BaseHTTPRequestHandler], None]


@dataclass(frozen=True)
class Seen:
    server: str
    path: str
    headers: dict[str, str]

    @property
    def authorization(self) -> str:
        return next((v for k, v in self.headers.items() if k.lower() == "authorization"), "")


class Server:
    def __init__(self, name: str, cert: tuple[str, str] | None = None) -> None:
        self.name = name
        self.routes: dict[str, Responder] = {}
        self.log: list[Seen] = []
        self.gate: tuple[str, str] | None = None   # (the Authorization wanted on /v2/, the 401's challenge)
        self.closing = threading.Event()
        handler = type("Handler", (_Handler,), {"owner": self})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*cert)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def authorizations(self) -> list[str]:
        return [s.authorization for s in self.log if s.authorization]


@contextlib.contextmanager
def servers(*names: str, cert: tuple[str, str] | None = None) -> Iterator[list[Server]]:
    made = [Server(n, cert) for n in names]
    try:
        yield made
    finally:
        for s in made:
            s.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        srv = self.owner
        srv.log.append(Seen(srv.name, self.path, dict(self.headers.items())))
        path = self.path.split("?", 1)[0]
        gate = srv.gate
        try:
            if gate and path.startswith("/v2/") and self.headers.get("Authorization") != gate[0]:
                challenge(gate[1])(self)
                return
            responder = srv.routes.get(path)
            if responder is None:
                errors = {"errors": [{"code": "NOT_FOUND", "message": "no such thing"}]}
                reply(json.dumps(errors).encode(), 404)(self)
            else:
                responder(self)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        self.close_connection = True

    def log_message(self, *_args) -> None:
        pass


def reply(body: bytes, status: int = 200, headers: dict[str, str] | None = None,
          content_type: str = "application/octet-stream") -> Responder:
    def respond(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
    return respond


def redirect(location: str, status: int = 307) -> Responder:
    return reply(b"", status, {"Location": location})


def challenge(header: str) -> Responder:
    return reply(b'{"errors":[{"code":"UNAUTHORIZED"}]}', 401, {"WWW-Authenticate": header}, "application/json")


def drip(raw: bytes, every: float, start: int = 0) -> Responder:
    """`raw` (a whole response: status line, headers, body): its first `start` bytes at once, then
    one byte per `every` seconds."""
    def respond(h: http.server.BaseHTTPRequestHandler) -> None:
        h.wfile.write(raw[:start])
        h.wfile.flush()
        for i in range(start, len(raw)):
            if h.owner.closing.wait(every):  # type: ignore[attr-defined]
                return
            h.wfile.write(raw[i:i + 1])
            h.wfile.flush()
    return respond


def raw_response(body: bytes, content_type: str = "application/octet-stream", length: int | None = None) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: "
            f"{len(body) if length is None else length}\r\n\r\n").encode() + body


def held(body: bytes, declared: int, content_type: str = "application/json", hold: float = 60.0) -> Responder:
    """A Content-Length of `declared` and only `body`; the connection then stays open."""
    def respond(h: http.server.BaseHTTPRequestHandler) -> None:
        h.wfile.write(raw_response(body, content_type, declared))
        h.wfile.flush()
        h.owner.closing.wait(hold)  # type: ignore[attr-defined]
    return respond


def chunked_cut(body: bytes, content_type: str = "application/json") -> Responder:
    """A chunked body announcing one chunk of len(body) + 100 bytes, sending `body`, then closing."""
    def respond(h: http.server.BaseHTTPRequestHandler) -> None:
        h.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
                      f"{len(body) + 100:x}\r\n".encode() + body)
        h.wfile.flush()
    return respond


def endless(total: list[int]) -> Responder:
    """A 200 without a length, zeros until the client goes (what was sent is added to `total`)."""
    def respond(h: http.server.BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
        chunk = b"\0" * 65536
        started = time.monotonic()
        while time.monotonic() - started < 60 and not h.owner.closing.is_set():  # type: ignore[attr-defined]
            h.wfile.write(chunk)
            total[0] += len(chunk)
    return respond
