"""Image sources as Apptainer spells them, parsed into what to fetch.

    docker://[REGISTRY/]NAME[:TAG|@sha256:HEX]     the OCI distribution API (also docker:NAME; @sha512: too)
    docker-archive:FILE.tar                       `docker save` output (legacy and Docker >= 25)
    oci-archive:FILE.tar[:TAG]                    a tar of an OCI image layout
    oci:DIR[:TAG|@sha256:HEX]                     an OCI image layout directory

Docker Hub's defaults apply to docker:// names as in Docker: no registry means docker.io
(served at registry-1.docker.io), a one-part name means library/NAME, no tag means latest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shim.errors import UsageError, shown
from shim.oci import digest as digests

TRANSPORTS = ("docker", "docker-archive", "oci-archive", "oci")
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

# The distribution spec's grammar for repository names and tags.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Source:
    transport: str          # one of TRANSPORTS
    path: str = ""          # archive file or layout directory
    registry: str = ""      # docker: host[:port] as written (docker.io for Docker Hub)
    repository: str = ""    # docker: library/debian, sci/app
    tag: str = ""           # a tag, or "" (oci: the layout's only image; docker: latest)
    digest: str = ""        # sha256:... when pinned

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        if self.transport == "docker":
            ref = f"{self.registry}/{self.repository}"
            return f"docker://{ref}@{self.digest}" if self.digest else f"docker://{ref}:{self.tag or 'latest'}"
        where = self.path + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        return f"{self.transport}:{where}"

    @property
    def default_name(self) -> str:
        """Apptainer's default pull name: NAME_TAG.sif from the last path component."""
        if self.transport == "docker":
            base, tag = self.repository.rsplit("/", 1)[-1], self.tag or "latest"
        else:
            base = re.sub(r"\.(tar|oci)$", "", self.path.rstrip("/").rsplit("/", 1)[-1]) or "image"
            tag = self.tag or "latest"
        if self.digest and not self.tag:
            tag = self.digest.split(":", 1)[1][:12]
        return f"{base}_{tag}.sif"


def is_source(text: str) -> bool:
    """Whether `text` names an OCI/Docker source (rather than a directory or tarball)."""
    return any(text.startswith(f"{t}:") for t in TRANSPORTS)


def parse(text: str) -> Source:
    transport, sep, rest = text.partition(":")
    if not sep or transport not in TRANSPORTS:
        raise UsageError(f"{text!r} is not an image source",
                         "use docker://NAME[:TAG], docker-archive:FILE, oci-archive:FILE[:TAG] or oci:DIR[:TAG]")
    rest = rest.removeprefix("//")
    if not rest:
        raise UsageError(f"{text!r}: nothing after {transport}:", "name the image, file or directory")
    if transport == "docker":
        return _docker(text, rest)
    if transport == "docker-archive":
        return Source("docker-archive", path=rest)
    return _layout(text, transport, rest)


def _layout(text: str, transport: str, rest: str) -> Source:
    path, digest = rest, ""
    if "@" in rest:
        path, _, digest = rest.rpartition("@")
        _check_digest(text, digest)
    tag = ""
    # A tag is what follows the last colon, when that is not part of a directory name.
    head, sep, tail = path.rpartition(":")
    if sep and head and "/" not in tail:
        path, tag = head, tail
        if not _TAG.match(tag):
            raise UsageError(f"{text!r}: {tag!r} is not a valid tag", "a tag is letters, digits, _ . - (at most 128)")
    return Source(transport, path=path, tag=tag, digest=digest)


def _docker(text: str, rest: str) -> Source:
    name, digest = rest, ""
    if "@" in rest:
        name, _, digest = rest.partition("@")
        _check_digest(text, digest)
    tag = ""
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
        if not _TAG.match(tag):
            raise UsageError(f"{text!r}: {tag!r} is not a valid tag", "a tag is letters, digits, _ . - (at most 128)")
    first, sep, remainder = name.partition("/")
    # Docker's rule: the first component is a registry when it has a dot or a port, or is localhost.
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
    else:
        registry, repository = DOCKER_HUB, name
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _NAME.match(repository):
        raise UsageError(f"{text!r}: {repository!r} is not a valid repository name",
                         "names are lower-case letters, digits and separators (. _ -), parts joined by /")
    if not digest and not tag:
        tag = "latest"
    return Source("docker", registry=registry, repository=repository, tag=tag, digest=digest)


def _check_digest(text: str, digest: str) -> None:
    if not digests.valid(digest):
        raise UsageError(f"{shown(text)}: {shown(digest, 80)} is not a digest",
                         "write @sha256: and 64 lower-case hex digits (or @sha512: and 128)")
