"""The OCI test infrastructure itself (tests/oci.py, tests/oci_fixtures.py): layouts are valid and
deterministic, the registries serve them, the independent tools read what we write."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import os
import socket
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import oci
import pytest
from conftest import GOLDEN
from images import DEBIAN_BASE, build_rootfs


def _uncompressed_digest(blob: Path, media_type: str) -> str:
    if media_type.endswith("+gzip"):
        data = gzip.decompress(blob.read_bytes())
    elif media_type.endswith("+zstd"):
        data = subprocess.run(["zstd", "-dc", str(blob)], check=True, capture_output=True).stdout
    else:
        data = blob.read_bytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_app_layout_is_a_valid_oci_layout(app_layout: oci.Layout) -> None:
    assert json.loads((app_layout.path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert app_layout.tag == "1" and app_layout.name == "sci/app" and app_layout.media_type == oci.MT_MANIFEST
    for blob in (app_layout.path / "blobs" / "sha256").iterdir():  # content-addressed
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    layers = app_layout.manifest["layers"]
    assert [la["mediaType"] for la in layers] == [oci.MT_LAYER[c] for c in ("gzip", "zstd", "none")]
    assert [_uncompressed_digest(app_layout.blob(la["digest"]), la["mediaType"]) for la in layers] \
        == app_layout.config["rootfs"]["diff_ids"]
    conf = app_layout.config["config"]
    assert conf["Entrypoint"] == ["/bin/app-entry"] and conf["Cmd"] == ["default-arg"]
    assert conf["WorkingDir"] == "/work" and "SPACED=a b  c" in conf["Env"]
    assert (app_layout.config["architecture"], app_layout.config["os"]) == ("amd64", "linux")
    for dirpath, dirnames, filenames in os.walk(app_layout.path):  # shimrun reads it as the test user
        for name in [*dirnames, *filenames]:
            assert os.stat(Path(dirpath) / name).st_mode & 0o004, name


def test_layouts_are_deterministic(app_layout: oci.Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIM_TEST_CACHE", str(tmp_path))
    again = oci.build_layout(oci.app_spec())
    assert again.path != app_layout.path and again.path.parent == tmp_path / "oci"
    assert again.manifest_digest == app_layout.manifest_digest
    assert sorted(p.name for p in (tmp_path / "oci").iterdir()) == sorted([again.path.name, f".{again.path.name}.lock"])


def test_noshell_layout(noshell_layout: oci.Layout) -> None:
    conf = noshell_layout.config["config"]
    assert conf["Entrypoint"] == ["/bin/busybox", "env"] and "Cmd" not in conf
    with tarfile.open(noshell_layout.blob(noshell_layout.manifest["layers"][0]["digest"])) as tar:
        names = tar.getnames()
    assert "bin/busybox" in names and "bin/sh" not in names


def test_multi_layout(multi_layout: oci.Layout, app_layout: oci.Layout) -> None:
    assert multi_layout.tag == "multi" and multi_layout.media_type == oci.MT_INDEX
    assert set(multi_layout.tags) == {"multi", "arm64-only"}
    assert multi_layout.platforms["linux/amd64"] == app_layout.manifest_digest
    arm = multi_layout.with_tag("arm64-only")
    assert list(arm.platforms) == ["linux/arm64/v8"] and arm.config["architecture"] == "arm64"


def test_registry_answers_v2(registry: oci.Registry) -> None:
    status, headers, _ = registry.get("/v2/")
    assert status == 200, registry.log_tail()
    assert headers.get("Docker-Distribution-Api-Version") == "registry/2.0"


def test_push_then_inspect_gives_the_layout_digest(registry: oci.Registry, app_layout: oci.Layout) -> None:
    assert registry.push(app_layout, "sci/app:1") == app_layout.manifest_digest
    info = json.loads(oci.skopeo("inspect", *registry.skopeo_args(""), f"docker://{registry.host}/sci/app:1").stdout)
    assert info["Digest"] == app_layout.manifest_digest
    status, _, body = registry.get("/v2/sci/app/manifests/1", headers={"Accept": oci.MT_MANIFEST})
    assert status == 200 and body == app_layout.blob(app_layout.manifest_digest).read_bytes()
    stored = registry.blob_file(app_layout.config_digest)
    assert stored.read_bytes() == app_layout.blob(app_layout.config_digest).read_bytes()


def test_push_index(registry: oci.Registry, multi_layout: oci.Layout) -> None:
    assert registry.push(multi_layout, "sci/multi:multi") == multi_layout.manifest_digest
    arm = multi_layout.with_tag("arm64-only")
    assert registry.push(arm, "sci/multi:arm64-only") == arm.manifest_digest
    status, headers, body = registry.get("/v2/sci/multi/manifests/multi", headers={"Accept": oci.MT_INDEX})
    assert status == 200 and headers["Content-Type"] == oci.MT_INDEX
    assert {m["digest"] for m in json.loads(body)["manifests"]} == set(multi_layout.platforms.values())


def test_tls_registry_needs_the_password(tls_registry: oci.Registry, app_layout: oci.Layout) -> None:
    assert tls_registry.scheme == "https" and tls_registry.username == "sci" and tls_registry.password
    assert tls_registry.ca_file is not None and tls_registry.ca_file.stat().st_mode & 0o004
    assert tls_registry.get("/v2/")[0] == 200, tls_registry.log_tail()
    assert tls_registry.get("/v2/", anonymous=True)[0] == 401
    status, headers, _ = tls_registry.get("/v2/", creds=("sci", tls_registry.password + "x"))
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert tls_registry.push(app_layout, "sci/app:1") == app_layout.manifest_digest
    with pytest.raises(RuntimeError, match="(?i)unauthorized|401"):
        oci.skopeo("inspect", "--cert-dir", str(tls_registry.tls.cert_dir), "--creds", "sci:wrong",
                   f"docker://{tls_registry.host}/sci/app:1")


@contextlib.contextmanager
def first_port_taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Hold a listening port and make it the first one a registry start is offered."""
    if not oci.REGISTRY_BIN.exists():
        pytest.skip("docker-registry is not installed (requirements-apt.txt lists it)")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken])
        free = oci._free_port
        monkeypatch.setattr(oci, "_free_port", lambda: next(ports, None) or free())
        yield taken


def test_registry_start_retries_a_taken_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with first_port_taken(monkeypatch) as taken:
        reg = oci.start_registry(tmp_path / "reg")
        try:
            assert reg.host != f"127.0.0.1:{taken}" and reg.get("/v2/")[0] == 200
            assert "address already in use" in (tmp_path / "reg" / "registry.0.log").read_text()
        finally:
            oci.stop_registry(reg)


def test_umoci_unpack_applies_the_layers(app_layout_gzip: oci.Layout, tmp_path: Path) -> None:
    root = oci.umoci_rootfs(app_layout_gzip, "1", tmp_path / "bundle")
    listing = {e[0]: e for e in oci.tree_listing(root)}
    assert "etc/remove-me" not in listing and "etc/.wh.remove-me" not in listing
    assert sorted(p for p in listing if p.startswith("opt/old/")) == ["opt/old/c"]
    assert listing["opt/app/data-link"][4] == listing["opt/app/data.txt"][4] == hashlib.sha256(oci.APP_DATA).hexdigest()
    assert listing["opt/app/current"][1:] == ("symlink", None, None, None, "data.txt")
    assert listing["usr/bin/su-like"][2] == 0o4755 and listing["bin/app-entry"][2] == 0o755
    assert listing["opt/empty"][1] == "dir" and listing["bin/sh"][5] == "busybox"
    # umoci --rootless cannot mknod: it leaves an empty regular file where the device was.
    assert listing["dev/null-ish"][1:4] == ("file", 0o666, 0)


def test_archives_read_back_by_skopeo(app_layout: oci.Layout, tmp_path: Path) -> None:
    config = app_layout.config_digest
    docker = oci.docker_archive(app_layout, "1", tmp_path / "docker.tar")
    with tarfile.open(docker) as tar:
        legacy = json.load(tar.extractfile("manifest.json"))
    assert legacy[0]["RepoTags"] == ["docker.io/sci/app:1"] and legacy[0]["Config"] == f"{config[7:]}.json"
    archive = oci.oci_archive(app_layout, "1", tmp_path / "oci.tar")
    raw = oci.skopeo("inspect", "--raw", f"oci-archive:{archive}:1").stdout
    assert raw.encode() == app_layout.blob(app_layout.manifest_digest).read_bytes()
    d25 = oci.docker25_archive(app_layout, "1", tmp_path / "docker25.tar")
    with tarfile.open(d25) as tar:
        names = tar.getnames()
        legacy = json.load(tar.extractfile("manifest.json"))
        index = json.load(tar.extractfile("index.json"))
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith("blobs/sha256/"):
                assert hashlib.sha256(tar.extractfile(member).read()).hexdigest() == member.name.rsplit("/", 1)[1]
    assert {"oci-layout", "index.json", "manifest.json"} <= set(names) and names[0] == "blobs"
    assert legacy[0]["RepoTags"] == ["sci/app:1"] and legacy[0]["Config"] == f"blobs/sha256/{config[7:]}"
    assert legacy[0]["Layers"] == [f"blobs/sha256/{d[7:]}" for d in app_layout.config["rootfs"]["diff_ids"]]
    assert index["manifests"][0]["annotations"] == {oci.IMAGE_NAME: "docker.io/sci/app:1", oci.REF_NAME: "1"}
    # Both kinds of reader accept it: as a legacy docker archive and as an OCI layout tar.
    for ref in (f"docker-archive:{d25}", f"oci-archive:{d25}:1"):
        info = json.loads(oci.skopeo("inspect", "--config", ref).stdout)
        assert info["rootfs"]["diff_ids"] == app_layout.config["rootfs"]["diff_ids"], ref
    assert all(p.stat().st_mode & 0o004 for p in (docker, archive, d25))


def test_debian_layout_unpacks_to_the_rootfs_with_layer3(debian_layout: oci.Layout, tmp_path: Path) -> None:
    assert [la["mediaType"] for la in debian_layout.manifest["layers"]] == [oci.MT_LAYER[c] for c in
                                                                             ("gzip", "gzip", "none")]
    root = oci.umoci_rootfs(debian_layout, "1", tmp_path / "bundle")
    got, want = oci.tree_listing(root), oci.debian_expected_listing(build_rootfs(DEBIAN_BASE))
    assert got == want, (sorted(set(got) - set(want))[:10], sorted(set(want) - set(got))[:10])
    assert (root / "etc" / "debian_version").exists() and not (root / "etc" / "motd").exists()


def test_tree_listing_kinds(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / ".singularity.d" / "env").mkdir(parents=True)
    (root / ".shim-stage").mkdir()
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"x")
    os.link(root / "d" / "f", root / "d" / "hard")
    (root / "d" / "s").symlink_to("f")
    (root / "d" / "f").chmod(0o4755)
    listing = oci.tree_listing(root)
    digest = hashlib.sha256(b"x").hexdigest()
    assert listing == [("d", "dir", stat.S_IMODE((root / "d").stat().st_mode), None, None, None),
                       ("d/f", "file", 0o4755, 1, digest, None), ("d/hard", "file", 0o4755, 1, digest, None),
                       ("d/s", "symlink", None, None, None, "f")]
    assert {e[0] for e in oci.tree_listing(root, exclude=())} >= {".singularity.d/env", ".shim-stage"}


def test_sif_rootfs_extracts_the_primary_partition(tmp_path: Path) -> None:
    sif = GOLDEN / "apptainer" / "busybox_amd64.sif"
    if not sif.exists():
        pytest.skip(f"{sif} is not there")
    root = oci.sif_rootfs(sif, tmp_path / "rootfs")
    listing = {e[0]: e for e in oci.tree_listing(root)}
    assert listing["bin/busybox"][1] == "file" and not any(p.startswith(".singularity.d") for p in listing)


def test_token_registry_anonymous_pull_of_a_public_repository(token_registry: oci.TokenRegistry,
                                                              app_layout: oci.Layout) -> None:
    reg = token_registry
    assert reg.push(app_layout, "public/app:1") == app_layout.manifest_digest, reg.log_tail()
    path, accept = "/v2/public/app/manifests/1", {"Accept": oci.MT_MANIFEST}
    status, headers, _ = reg.get(path, anonymous=True, headers=accept, follow=False)
    assert status == 401 and headers["WWW-Authenticate"] == \
        f'Bearer realm="{reg.realm}",service="{oci.TOKEN_SERVICE}",scope="repository:public/app:pull"'
    challenge = oci.bearer_challenge(headers["WWW-Authenticate"])
    status, _, body = oci.fetch_token(challenge["realm"], challenge["service"], [challenge["scope"]])
    doc = json.loads(body)
    assert status == 200 and doc["token"] == doc["access_token"] and doc["expires_in"] == 300
    header, claims, _ = oci.jwt_parts(doc["token"])
    assert header["alg"] == "RS256" and header["x5c"] == [base64.b64encode(reg.signer.cert_der).decode()]
    assert (claims["iss"], claims["aud"], claims["sub"]) == (oci.TOKEN_ISSUER, oci.TOKEN_SERVICE, "")
    assert claims["nbf"] <= claims["iat"] < claims["exp"] == claims["iat"] + 300 and claims["jti"]
    assert claims["access"] == [{"type": "repository", "name": "public/app", "actions": ["pull"]}]
    status, _, body = reg.get(path, headers={**accept, "Authorization": f"Bearer {doc['token']}"})
    assert status == 200 and body == app_layout.blob(app_layout.manifest_digest).read_bytes(), reg.log_tail()
    # Anonymous clients get pull only, even when they ask for push; skopeo follows the same flow.
    anon_push = reg.token("repository:public/app:pull,push", anonymous=True)
    assert oci.jwt_parts(anon_push)[1]["access"] == claims["access"]
    info = json.loads(oci.skopeo("inspect", *reg.skopeo_args("", creds=False), f"docker://{reg.host}/public/app:1").stdout)
    assert info["Digest"] == app_layout.manifest_digest


def test_token_registry_private_repository_needs_credentials(token_registry: oci.TokenRegistry,
                                                             noshell_layout: oci.Layout) -> None:
    reg = token_registry
    assert reg.push(noshell_layout, "private/app:1") == noshell_layout.manifest_digest, reg.log_tail()
    path, accept, scope = "/v2/private/app/manifests/1", {"Accept": oci.MT_MANIFEST}, "repository:private/app:pull"
    anonymous = reg.token(scope, anonymous=True)
    assert oci.jwt_parts(anonymous)[1]["access"] == []
    status, headers, _ = reg.get(path, headers={**accept, "Authorization": f"Bearer {anonymous}"})
    assert status in (401, 403) and 'error="insufficient_scope"' in headers.get("WWW-Authenticate", "")
    assert reg.get(path, anonymous=True, headers=accept)[0] in (401, 403)
    user = reg.token(scope)
    assert oci.jwt_parts(user)[1]["sub"] == "sci"
    status, _, body = reg.get(path, headers={**accept, "Authorization": f"Bearer {user}"})
    assert status == 200 and body == noshell_layout.blob(noshell_layout.manifest_digest).read_bytes()
    assert reg.get(path, headers=accept)[0] == 200  # following the challenge with the password
    # Wrong credentials: the token server refuses them, whatever the scope.
    for creds in (("sci", reg.password + "x"), ("nobody", reg.password)):
        status, headers, _ = oci.fetch_token(reg.realm, reg.service, [scope], creds)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert oci.fetch_token(reg.realm, "another-service", [scope])[0] == 400
    with pytest.raises(RuntimeError, match="(?i)unauthorized|denied|401"):
        oci.skopeo("inspect", *reg.skopeo_args("", creds=False), f"docker://{reg.host}/private/app:1")


def test_token_registry_checks_the_signature(token_registry: oci.TokenRegistry) -> None:
    """A token whose claims were altered after signing opens nothing: the registry verifies it."""
    reg = token_registry
    header, claims, signature = reg.token("repository:private/app:pull", anonymous=True).split(".")
    forged = json.loads(oci.b64url_decode(claims))
    forged["access"] = [{"type": "repository", "name": "private/app", "actions": ["pull"]}]
    token = f"{header}.{oci.b64url(json.dumps(forged).encode())}.{signature}"
    status, _, _ = reg.get("/v2/private/app/tags/list", headers={"Authorization": f"Bearer {token}"})
    assert status == 401
    assert reg.get("/v2/private/app/tags/list")[0] in (200, 404)  # the real token works (404: not pushed yet)


def test_token_registry_start_retries_a_taken_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a port clash only the registry is restarted: the token server it trusts keeps serving."""
    with first_port_taken(monkeypatch) as taken:
        reg = oci.start_token_registry(tmp_path / "reg")
        try:
            assert reg.host != f"127.0.0.1:{taken}"
            assert "address already in use" in (tmp_path / "reg" / "registry.0.log").read_text()
            assert reg.get("/v2/", follow=False)[0] == 401 and reg.get("/v2/")[0] == 200
        finally:
            oci.stop_registry(reg)
    assert not (tmp_path / "reg").exists()
