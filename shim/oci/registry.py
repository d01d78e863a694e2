"""The OCI distribution API, as a client that pulls: manifests and blobs over HTTPS (system CAs,
plus --ca-file) or, with --no-https, plain HTTP; anonymous bearer tokens as public registries
hand them out, and basic auth (credentials and where they may go: shim.oci.auth).

Everything a registry sends is an attacker's until checked: a manifest against the digest it was
asked by (or the one its header claims), a blob and a config on their full bytes against their
descriptor (shim.oci.verify), sizes against MAX_JSON before a byte is read, and every transfer
under the deadlines and the minimum rate of shim.oci.transport. Errors are one line naming the
registry and what was read; text it sent (an error code, a realm) is escaped and bounded.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.error
import urllib.parse
from collections.abc import Iterator

from shim.errors import ExitCode, ImageError, ShimError, UsageError, shown
from shim.oci import digest as digests
from shim.oci.auth import RegistryOptions, basic, challenge, check_realm, credentials, token_from
from shim.oci.model import INDEX_TYPES, MANIFEST_TYPES, MAX_JSON, Descriptor
from shim.oci.reference import Source
from shim.oci.transport import Body, Limits, Transport, Watch, host_of, origin
from shim.oci.verify import VerifyingReader

ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
MAX_ERROR_BODY = 64 << 10


class Registry:
    def __init__(self, source: Source, opts: RegistryOptions, limits: Limits | None = None) -> None:
        self.source, self.opts = source, opts
        self.base = f"{'http' if opts.no_https else 'https'}://{source.api_host}"
        self.origin = origin(self.base)
        self.auth = ""  # the Authorization header that worked
        self.creds = credentials(source, opts)
        ctx = ssl.create_default_context()
        if opts.ca_file:
            try:
                ctx.load_verify_locations(opts.ca_file)
            except (OSError, ssl.SSLError) as e:
                raise UsageError(f"--ca-file {opts.ca_file}: cannot load it ({e})",
                                 "give a PEM CA certificate") from None
        self.watch = Watch(limits or Limits.from_env())
        self.http = Transport(ctx, self.watch, allow_http=opts.no_https)

    # ---- requests ----

    @contextlib.contextmanager
    def _get(self, path: str, what: str, size: int = -1, accept: str = "") -> Iterator[Body]:
        """The body of GET `path` (authenticating as the registry asks), under one transfer's deadline."""
        with self.watch.transfer(shown(self.source.api_host, 80), what, size):
            resp = self._open(path, what, accept)
            with resp:
                yield Body(resp, self.watch, what)

    def _open(self, path: str, what: str, accept: str):
        url = self.base + path
        headers = {"Accept": accept} if accept else {}
        for attempt in range(3):
            try:
                return self.http.open(url, what, headers, (self.auth, self.origin))
            except urllib.error.HTTPError as e:
                answered = e.url or url
                with e:
                    if e.code == 401 and origin(answered) != self.origin:
                        raise ShimError(ExitCode.AUTH, f"{self.source.registry} sent the request for {what} on to "
                                        f"{host_of(answered)}, which asks for credentials: shim sends those for "
                                        f"{self.source.registry} to no other host",
                                        "the registry's storage must not need them; tell its operator") from None
                    if e.code == 401 and attempt < 2 and self._authenticate(e.headers.get("WWW-Authenticate", "")):
                        continue
                    raise self._http_error(e, what) from None
        raise self._auth_error()

    def _authenticate(self, header: str) -> bool:
        """Answer the registry's own 401 challenge; False when there is nothing (more) to try."""
        scheme, params = challenge(header)
        if scheme == "basic":
            if not self.creds or self.auth.startswith("Basic"):
                return False
            self.auth = basic(self.creds)
            return True
        if scheme != "bearer" or not params.get("realm") or self.auth.startswith("Bearer"):
            return False
        realm = params["realm"]
        check_realm(realm, self.base, self.source, self.opts.no_https)
        query = {k: params[k] for k in ("service", "scope") if k in params}
        query.setdefault("scope", f"repository:{self.source.repository}:pull")
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        auth = (basic(self.creds) if self.creds else "", origin(realm))
        what = f"a token for {self.source.repository}"
        try:
            with self.http.open(url, what, {}, auth) as resp:
                data = Body(resp, self.watch, what).read_all(MAX_JSON)
        except urllib.error.HTTPError as e:
            with e:
                if e.code in (401, 403):
                    raise self._auth_error() from None
                raise self._http_error(e, what) from None
        self.auth = f"Bearer {token_from(data, self.source)}"
        return True

    def _auth_error(self) -> ShimError:
        if self.creds:
            return ShimError(ExitCode.AUTH, f"{self.source.registry} refused the credentials of user "
                             f"{self.creds[0]!r} for {self.source.repository}", "check the user name and password")
        return ShimError(ExitCode.AUTH, f"{self.source.registry} wants credentials for {self.source.repository}",
                         "set SHIMRUN_DOCKER_USERNAME and SHIMRUN_DOCKER_PASSWORD, or log in (docker/podman "
                         "login) and pass --authfile")

    def _http_error(self, e: urllib.error.HTTPError, what: str) -> ShimError:
        code = message = ""
        with contextlib.suppress(ValueError, AttributeError, TypeError, OSError, ShimError, RecursionError):
            body = json.loads(Body(e, self.watch, what).read_all(MAX_ERROR_BODY))  # type: ignore[arg-type]
            first = (body.get("errors") or [{}])[0]
            code, message = str(first.get("code", "")), str(first.get("message", "") or first.get("detail", ""))
        detail = f"HTTP {e.code}" + (f" {shown(code, 40)}" if code else "") + (f": {shown(message)}" if message else "")
        if e.code in (401, 403):
            return self._auth_error()
        if e.code == 404:
            kind = "manifest" if "manifest" in what else "blob"
            return ShimError(ExitCode.NO_SUCH_IMAGE, f"{self.source}: no such {kind} in {self.source.registry} "
                             f"({detail})", "check the repository name and tag")
        return ShimError(ExitCode.UNREACHABLE, f"{host_of(e.url or self.base)} answered {detail} for {what}",
                         "the registry has a problem; try again later")

    # ---- what a pull needs ----

    def manifest(self, ref: str, size: int = -1) -> tuple[Descriptor, bytes]:
        """The manifest or index for a tag or digest, checked against the digest (and `size`, when known)."""
        if size > MAX_JSON:
            raise ImageError(f"{self.source}: manifest {ref[:19]} declares {size} bytes, more than "
                             f"{MAX_JSON >> 20} MiB", "the registry is broken or hostile")
        what = f"the manifest {self.source.repository}{'@' if digests.valid(ref) else ':'}{ref}"
        with self._get(f"/v2/{self.source.repository}/manifests/{ref}", what, MAX_JSON, ACCEPT) as body:
            data = body.read_all(MAX_JSON)
            media = body.headers.get("Content-Type", "").split(";")[0].strip()
            said = body.headers.get("Docker-Content-Digest", "")
        if len(data) > MAX_JSON:
            raise ImageError(f"{self.source}: the manifest is larger than {MAX_JSON >> 20} MiB")
        if digests.valid(ref):
            expected = ref
        elif said:
            expected = digests.check(said, f"{self.source}: the registry's Docker-Content-Digest header",
                                     "the registry is broken or hostile")
        else:
            expected = ""
        digest = digests.of(data, digests.split(expected)[0] if expected else "sha256")
        if expected and expected != digest:
            raise ImageError(f"{self.source}: the manifest has digest {digest}, not {expected}",
                             "the registry served something else; do not use it")
        if size >= 0 and len(data) != size:
            raise ImageError(f"{self.source}: manifest {ref[:19]} is {len(data)} bytes, its descriptor says {size}",
                             "the registry served something else; do not use it")
        return Descriptor(media, digest, len(data)), data

    def read_blob(self, desc: Descriptor) -> bytes:
        """A small blob (the config), whole and verified against its descriptor."""
        if desc.size > MAX_JSON:
            raise ImageError(f"{self.source}: blob {desc.what} is larger than {MAX_JSON >> 20} MiB")
        with self.blob(desc) as raw:
            return VerifyingReader(raw, desc.digest, desc.size, desc.what).read()

    @contextlib.contextmanager
    def blob(self, desc: Descriptor) -> Iterator[Body]:
        """A blob's raw (unverified) bytes, under its transfer deadline."""
        with self._get(f"/v2/{self.source.repository}/blobs/{desc.digest}", f"blob {desc.what}", desc.size) as body:
            yield body
