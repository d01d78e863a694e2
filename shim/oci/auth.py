"""Registry credentials: where they come from, and where they may go.

Credentials, first found wins: SHIMRUN_DOCKER_USERNAME/_PASSWORD, APPTAINER_DOCKER_USERNAME/
_PASSWORD (SINGULARITY_DOCKER_* too), then the auth file: --authfile, $REGISTRY_AUTH_FILE, else
~/.docker/config.json ("auths": {"HOST": {"auth": base64("user:password")}}).

They go to the registry they were given for (its origin: scheme, host, port), and to the token
service ("realm") that registry names in a 401 of its own, when that realm is https:// (http://
only with --no-https, on the registry's own host). Never to a host a redirect leads to, and never
through any other scheme. A token a service hands out is sent back to the registry only.
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.parse
from dataclasses import dataclass

from shim.errors import ExitCode, ShimError, UsageError, shown
from shim.oci.model import MAX_JSON
from shim.oci.reference import DOCKER_HUB, Source

_ENV_USER = (("SHIMRUN_DOCKER_USERNAME", "SHIMRUN_DOCKER_PASSWORD"),
             ("APPTAINER_DOCKER_USERNAME", "APPTAINER_DOCKER_PASSWORD"),
             ("SINGULARITY_DOCKER_USERNAME", "SINGULARITY_DOCKER_PASSWORD"))
_TOKEN = re.compile(r"[\x21-\x7e]{1,65536}")  # a header value: printable ASCII, no space, no line break
MAX_TOKEN_RESPONSE = 1 << 20


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


def basic(creds: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(":".join(creds).encode()).decode()


def challenge(header: str) -> tuple[str, dict[str, str]]:
    """The scheme (lower case) and parameters of a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def check_realm(realm: str, registry_url: str, source: Source, allow_http: bool) -> None:
    """A token service the registry named, if credentials (or a token request) may go there."""
    parts = urllib.parse.urlsplit(realm)
    registry_host = urllib.parse.urlsplit(registry_url).hostname
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and allow_http and parts.hostname and parts.hostname == registry_host:
        return
    raise ShimError(ExitCode.AUTH, f"{source.registry} names the token service '{shown(realm, 80)}', which is "
                    "not https://: shim sends no credentials nor token request there",
                    "a registry's token service must be https:// (plain http:// only with --no-https, on the "
                    "registry's own host)")


def token_from(data: bytes, source: Source) -> str:
    """The token in a token service's answer ({"token": ...} or {"access_token": ...})."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise ShimError(ExitCode.UNREACHABLE, f"the token service of {source.registry} answered no JSON") from None
    value = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
    if not isinstance(value, str):
        raise ShimError(ExitCode.UNREACHABLE, f"the token service of {source.registry} gave no token")
    if not _TOKEN.fullmatch(value):
        raise ShimError(ExitCode.UNREACHABLE, f"the token service of {source.registry} gave a malformed token "
                        f"('{shown(value, 40)}')", "the token service is broken or hostile")
    return value
