"""pytest fixtures for OCI tests (registered by conftest.py's pytest_plugins): cached image
layouts, and real registries (plain HTTP, and TLS with basic auth). See tests/oci.py.

Layout fixtures give an oci.Layout: .path (the layout directory, world-readable, shared by the
whole session and by later runs: never modify it; copy it first), .tag, .name (a suggested
repository), .manifest_digest, .manifest, .config, .platforms, .tags, .blob(digest), .with_tag(tag).
Registry fixtures give an oci.Registry: .host, .storage, .push(layout, repo_tag), .blob_file(digest),
.url(path), .get(path), .log_tail(); the TLS one also .ca_file (world-readable), .tls.cert_dir,
.username, .password. The token one (an oci.TokenRegistry: plain HTTP, bearer tokens from an
in-process token server) has .username, .password, .realm (the token endpoint), .service,
.issuer, .token(*scopes, creds=, anonymous=), and .get(path, follow=False) for the bare challenge.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import oci
import pytest


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (requirements-apt.txt lists the packages)")


@pytest.fixture(scope="session")
def app_layout() -> oci.Layout:
    """sci/app:1, three layers (gzip, zstd, uncompressed): busybox, every tar entry kind, whiteouts."""
    need_tools("zstd")
    return oci.build_layout(oci.app_spec())


@pytest.fixture(scope="session")
def app_layout_gzip() -> oci.Layout:
    """The app image with its zstd layer gzipped instead: Debian's umoci 0.4.7 cannot unpack zstd."""
    return oci.build_layout(oci.app_spec("gzip"))


@pytest.fixture(scope="session")
def noshell_layout() -> oci.Layout:
    """sci/noshell:1: only /bin/busybox (no /bin/sh); Entrypoint ["/bin/busybox", "env"], no Cmd."""
    return oci.build_layout(oci.noshell_spec())


@pytest.fixture(scope="session")
def multi_layout() -> oci.Layout:
    """Tag "multi": an index of linux/amd64 (the app image) and linux/arm64/v8; .with_tag("arm64-only")."""
    need_tools("zstd")
    return oci.build_layout(oci.multi_spec())


@pytest.fixture(scope="session")
def debian_layout() -> oci.Layout:
    """sci/debian:1: images.DEBIAN_BASE's root in 3 layers (rootfs minus /usr/share, /usr/share,
    whiteouts + opaque /etc/skel + new files); oci.debian_expected_listing gives what it unpacks to."""
    return oci.build_layout(oci.debian_spec())


@pytest.fixture(scope="session")
def tools_layout() -> oci.Layout:
    """sci/tools:1: a Debian root with bash, no Entrypoint, Env GREETING (oci.TOOLS_GREETING)."""
    return oci.build_layout(oci.tools_spec())


def _need_registry(*tools: str) -> None:
    need_tools("skopeo", *tools)
    if not oci.REGISTRY_BIN.exists():
        pytest.skip(f"{oci.REGISTRY_BIN} not installed (requirements-apt.txt lists docker-registry)")


@contextlib.contextmanager
def _running_registry(kind: str, tls: bool = False, token: bool = False) -> Iterator[oci.Registry]:
    # Not under pytest's tmp (0700 under /root): the test user must be able to read the CA certificate.
    base = Path(tempfile.mkdtemp(prefix=f"shim-{kind}-registry.", dir="/var/tmp"))
    try:
        base.chmod(0o755)
        reg = oci.start_token_registry(base / "registry") if token else oci.start_registry(base / "registry", tls=tls)
        try:
            yield reg
        finally:
            oci.stop_registry(reg)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def registry() -> Iterator[oci.Registry]:
    """/usr/bin/docker-registry on a free 127.0.0.1 port, plain HTTP, no auth, deletes enabled."""
    _need_registry()
    with _running_registry("plain", tls=False) as reg:
        yield reg


@pytest.fixture(scope="session")
def tls_registry() -> Iterator[oci.Registry]:
    """The same over HTTPS (certificate for IP 127.0.0.1 from a throwaway CA) with htpasswd
    (bcrypt) basic auth: user "sci", a random password."""
    _need_registry("openssl", "htpasswd")
    with _running_registry("tls", tls=True) as reg:
        yield reg


@pytest.fixture(scope="session")
def token_registry() -> Iterator[oci.TokenRegistry]:
    """Bearer token auth as public registries do it: a plain-HTTP registry (auth.token, service
    oci.TOKEN_SERVICE) and a token server (.realm) whose RS256 tokens carry their signing
    certificate (x5c), issued by a throwaway CA the registry trusts. Anonymous clients may pull
    repositories under public/ only; user "sci" with a random password may pull and push anywhere."""
    _need_registry("openssl")
    with _running_registry("token", token=True) as reg:
        assert isinstance(reg, oci.TokenRegistry)
        yield reg
