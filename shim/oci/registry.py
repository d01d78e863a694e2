"""The OCI distribution API, as a client that pulls: manifests and blobs over HTTPS (system CAs,
plus --ca-file) or, with --no-https, plain HTTP; anonymous bearer tokens as public registries
hand them out, basic auth, and credentials from the environment or a Docker auth file.

Credentials, first found wins: SHIMRUN_DOCKER_USERNAME/_PASSWORD, APPTAINER_DOCKER_USERNAME/
_PASSWORD (SINGULARITY_DOCKER_* too), then the auth file: --authfile, $REGISTRY_AUTH_FILE, else
~/.docker/config.json ("auths": {"HOST": {"auth": base64("user:password")}}).
The Authorization header is never sent on to a redirect's host (blob storage behind a CDN).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from typing import IO

from shim.errors import ExitCode, ImageError, ShimError, UsageError
from shim.oci.model import INDEX_TYPES, MANIFEST_TYPES, MAX_JSON, Descriptor
from shim.oci.reference import DOCKER_HUB, Source

ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
TIMEOUT = 60.0
_ENV_USER = (("SHIMRUN_DOCKER_USERNAME", "SHIMRUN_DOCKER_PASSWORD"),
             ("APPTAINER_DOCKER_USERNAME", "APPTAINER_DOCKER_PASSWORD"),
             ("SINGULARITY_DOCKER_USERNAME", "SINGULARITY_DOCKER_PASSWORD"))


@dataclass(frozen=True)
class RegistryOptions:
    no_https: bool = False
    ca_file: str = ""
    authfile: str = ""


def credentials(source: Source, opts: RegistryOptions) -> tuple[str, str] | None:
    for user_var, pass_var in _ENV_USER:
        user = os.environ.get(user_var)
        if user:
            return user, os.environ.get(pass_var, "")
    path = opts.authfile or os.environ.get("REGISTRY_AUTH_FILE") or os.path.expanduser("~/.docker/config.json")
    if not os.path.exists(path):
        if opts.authfile:
            raise UsageError(f"--authfile {path} does not exist", "give the path of a Docker/Podman auth file")
        return None
    try:
        with open(path, "rb") as f:
            auths = json.loads(f.read(MAX_JSON)).get("auths", {})
    except (OSError, ValueError, AttributeError) as e:
        raise UsageError(f"cannot read the auth file {path} ({e})", "fix it, or pass --authfile") from None
    keys = [source.registry, f"https://{source.registry}", f"http://{source.registry}"]
    if source.registry == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    for key in keys:
        entry = auths.get(key) if isinstance(auths, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError:
                raise UsageError(f"{path}: the auth entry for {key} is not base64 of user:password") from None
            return user, password
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class Registry:
    def __init__(self, source: Source, opts: RegistryOptions) -> None:
        self.source, self.opts = source, opts
        self.base = f"{'http' if opts.no_https else 'https'}://{source.api_host}"
        self.auth = ""  # the Authorization header that worked
        self.creds = credentials(source, opts)
        ctx = ssl.create_default_context()
        if opts.ca_file:
            try:
                ctx.load_verify_locations(opts.ca_file)
            except (OSError, ssl.SSLError) as e:
                raise UsageError(f"--ca-file {opts.ca_file}: cannot load it ({e})",
                                 "give a PEM CA certificate") from None
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx))

    # ---- requests ----

    def _request(self, path: str, accept: str = "") -> HTTPResponse:
        url = self.base + path
        for attempt in range(3):
            req = urllib.request.Request(url)
            if accept:
                req.add_header("Accept", accept)
            if self.auth:
                req.add_unredirected_header("Authorization", self.auth)
            try:
                return self.opener.open(req, timeout=TIMEOUT)  # type: ignore[no-any-return]
            except urllib.error.HTTPError as e:
                if e.code == 401 and attempt < 2 and self._authenticate(e.headers.get("WWW-Authenticate", "")):
                    continue
                raise self._http_error(e, path) from None
            except (urllib.error.URLError, OSError, HTTPException) as e:
                raise self._unreachable(e) from None
        raise ShimError(ExitCode.AUTH, f"{self.source.registry} refused the credentials for {self.source.repository}",
                        "check the user name and password")

    def _authenticate(self, header: str) -> bool:
        """Answer a 401's challenge; False when there is nothing (more) to try."""
        scheme, params = _challenge(header)
        if scheme == "basic":
            if not self.creds or self.auth.startswith("Basic"):
                return False
            self.auth = "Basic " + base64.b64encode(":".join(self.creds).encode()).decode()
            return True
        if scheme != "bearer" or not params.get("realm") or self.auth.startswith("Bearer"):
            return False
        query = {k: params[k] for k in ("service", "scope") if k in params}
        if "scope" not in query:
            query["scope"] = f"repository:{self.source.repository}:pull"
        req = urllib.request.Request(params["realm"] + "?" + urllib.parse.urlencode(query))
        if self.creds:
            req.add_unredirected_header("Authorization",
                                        "Basic " + base64.b64encode(":".join(self.creds).encode()).decode())
        try:
            with self.opener.open(req, timeout=TIMEOUT) as resp:
                token = json.loads(resp.read(MAX_JSON))
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise self._auth_error() from None
            raise self._http_error(e, "token") from None
        except (urllib.error.URLError, OSError, HTTPException) as e:
            raise self._unreachable(e) from None
        except ValueError:
            raise ShimError(ExitCode.UNREACHABLE,
                            f"the token service of {self.source.registry} answered no JSON") from None
        value = token.get("token") or token.get("access_token") if isinstance(token, dict) else None
        if not isinstance(value, str):
            raise ShimError(ExitCode.UNREACHABLE, f"the token service of {self.source.registry} gave no token")
        self.auth = f"Bearer {value}"
        return True

    def _auth_error(self) -> ShimError:
        if self.creds:
            return ShimError(ExitCode.AUTH, f"{self.source.registry} refused the credentials of user "
                             f"{self.creds[0]!r} for {self.source.repository}", "check the user name and password")
        return ShimError(ExitCode.AUTH, f"{self.source.registry} wants credentials for {self.source.repository}",
                         "set SHIMRUN_DOCKER_USERNAME and SHIMRUN_DOCKER_PASSWORD, or log in (docker/podman "
                         "login) and pass --authfile")

    def _http_error(self, e: urllib.error.HTTPError, path: str) -> ShimError:
        try:
            body = json.loads(e.read(MAX_JSON))
            errors = body.get("errors") or []
            code = errors[0].get("code", "") if errors and isinstance(errors[0], dict) else ""
        except (ValueError, AttributeError, OSError):
            code = ""
        detail = f"HTTP {e.code}" + (f" {code}" if code else "")
        if e.code in (401, 403):
            return self._auth_error()
        if e.code == 404:
            what = "manifest" if "/manifests/" in path else "blob"
            return ShimError(ExitCode.NO_SUCH_IMAGE, f"{self.source}: no such {what} in {self.source.registry} "
                             f"({detail})", "check the repository name and tag")
        return ShimError(ExitCode.UNREACHABLE, f"{self.source.registry} answered {detail} for {path}",
                         "the registry has a problem; try again later")

    def _unreachable(self, e: Exception) -> ShimError:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ssl.SSLCertVerificationError):
            return ShimError(ExitCode.UNREACHABLE, f"{self.source.registry}: its TLS certificate is not trusted "
                             f"({reason.verify_message})", "pass the registry's CA with --ca-file, or --no-https "
                             "for a plain-HTTP registry")
        if isinstance(reason, ssl.SSLError):
            return ShimError(ExitCode.UNREACHABLE, f"{self.source.registry}: TLS failed ({reason})",
                             "for a plain-HTTP registry pass --no-https")
        if isinstance(reason, socket.timeout | TimeoutError):
            return ShimError(ExitCode.UNREACHABLE, f"{self.source.registry} did not answer in {TIMEOUT:.0f} s",
                             "check the network and try again")
        text = getattr(reason, "strerror", None) or str(reason)
        return ShimError(ExitCode.UNREACHABLE, f"cannot reach the registry {self.source.api_host} ({text})",
                         "check the address and that it is up; try again later")

    # ---- what a pull needs ----

    def manifest(self, ref: str) -> tuple[Descriptor, bytes]:
        """The manifest or index for a tag or digest, checked against the digest."""
        path = f"/v2/{self.source.repository}/manifests/{ref}"
        with self._request(path, ACCEPT) as resp:
            body = resp.read(MAX_JSON + 1)
            media = resp.headers.get("Content-Type", "").split(";")[0].strip()
            said = resp.headers.get("Docker-Content-Digest", "")
        if len(body) > MAX_JSON:
            raise ImageError(f"{self.source}: the manifest is larger than {MAX_JSON >> 20} MiB")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        expected = ref if ref.startswith("sha256:") else said if said.startswith("sha256:") else ""
        if expected and expected != digest:
            raise ImageError(f"{self.source}: the manifest has digest {digest}, not {expected}",
                             "the registry served something else; do not use it")
        return Descriptor(media, digest, len(body)), body

    def read_blob(self, desc: Descriptor) -> bytes:
        from shim.oci.verify import VerifyingReader

        if desc.size > MAX_JSON:
            raise ImageError(f"{self.source}: blob {desc.what} is larger than {MAX_JSON >> 20} MiB")
        with self.blob(desc) as raw:
            return VerifyingReader(raw, desc.digest, desc.size, desc.what).read()

    @contextlib.contextmanager
    def blob(self, desc: Descriptor) -> Iterator[IO[bytes]]:
        with self._request(f"/v2/{self.source.repository}/blobs/{desc.digest}") as resp:
            yield _Unreachable(resp, self)  # type: ignore[misc]


class _Unreachable:
    """A response body whose read errors (a dropped connection) read as the registry's."""

    def __init__(self, resp: HTTPResponse, registry: Registry) -> None:
        self.resp, self.registry = resp, registry

    def read(self, n: int = -1) -> bytes:
        try:
            return self.resp.read(n)
        except (OSError, HTTPException) as e:
            raise self.registry._unreachable(e) from None
