"""The test-image library (tests/images.py): recipe keys, the build-once cache, a real Debian rootfs."""

from __future__ import annotations

import multiprocessing
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import images
import pytest
from images import DEBIAN_BASE, Recipe, build_rootfs, build_sif, build_squashfs


def test_recipe_key_is_stable_and_pure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIM_TEST_CACHE", str(tmp_path / "cache"))
    base = Recipe("demo", packages=("a", "b"))
    key = base.key
    assert len(key) == 16 and all(c in "0123456789abcdef" for c in key)
    assert Recipe("demo", packages=("a", "b")).key == key
    assert Recipe("demo", packages=["b", "a", "a"]).key == key  # a package set: order, duplicates irrelevant
    # Same key in a fresh interpreter with another hash seed: nothing process-dependent goes in.
    code = "import images; print(images.Recipe('demo', packages=('a', 'b')).key)"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(images.__file__).parent, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert out == key
    # Every field is part of the key.
    others = [Recipe("demo", packages=("a", "b", "c")), Recipe("demo2", packages=("a", "b")),
              Recipe("demo", suite="trixie", packages=("a", "b")),
              Recipe("demo", packages=("a", "b"), variant="minbase"),
              Recipe("demo", packages=("a", "b"), customize=("true",))]
    assert len({key, *(r.key for r in others)}) == 1 + len(others)
    assert Recipe("d", customize=("a", "b")).key != Recipe("d", customize=("b", "a")).key  # hooks: ordered
    assert DEBIAN_BASE.key != Recipe(**{**DEBIAN_BASE.__dict__, "packages": ("hello",)}).key
    # Pure: computing keys and paths touches no filesystem.
    assert images.image_dir(base) == tmp_path / "cache" / f"demo-{key}"
    assert not (tmp_path / "cache").exists()
    with pytest.raises(TypeError):
        Recipe("demo", packages="hello")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Recipe("../escape")


def _slow_make(counter: str, tmp: Path) -> None:
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\n")
    tmp.mkdir()
    time.sleep(0.5)
    (tmp / "done").write_text("ok")


def _build_with(args: tuple[str, str]) -> str:
    dest, counter = args
    return str(images.cached(Path(dest), lambda tmp: _slow_make(counter, tmp)))


def test_cached_builds_once_across_processes(tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "thing-0123" / "rootfs"
    counter = tmp_path / "builds"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_build_with, [(str(dest), str(counter))] * 4)
    assert results == [str(dest)] * 4
    assert len(counter.read_text().splitlines()) == 1
    assert (dest / "done").read_text() == "ok"
    assert [p.name for p in dest.parent.iterdir() if ".tmp." in p.name] == []

    # A failed build leaves nothing behind and the next caller tries again.
    dest2 = dest.parent / "other"

    def boom(tmp: Path) -> None:
        tmp.mkdir()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        images.cached(dest2, boom)
    assert not dest2.exists() and [p.name for p in dest.parent.iterdir() if ".tmp." in p.name] == []
    assert images.cached(dest2, lambda tmp: tmp.write_text("x")).read_text() == "x"


def test_mirror_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIM_DEBIAN_MIRROR", "http://mirror.example/debian")
    assert images.mirror_args("bookworm") == ["http://mirror.example/debian"]
    monkeypatch.setenv("SHIM_DEBIAN_MIRROR",
                       "deb http://m/debian bookworm main\ndeb http://m/sec bookworm-security main")
    assert images.mirror_args("bookworm") == ["deb http://m/debian bookworm main",
                                              "deb http://m/sec bookworm-security main"]
    monkeypatch.delenv("SHIM_DEBIAN_MIRROR")
    host = [
        {"Target-Of": "deb", "Component": "main", "Release": "bookworm", "Codename": "bookworm", "Label": "Debian",
         "Origin": "Debian", "Repo-URI": "http://local.mirror/debian/"},
        {"Target-Of": "deb", "Component": "main", "Release": "bookworm-security", "Label": "Debian-Security",
         "Origin": "Debian", "Repo-URI": "http://local.mirror/debian-security/"},
        {"Target-Of": "deb", "Component": "main", "Release": "nodistro", "Origin": "Node Source",
         "Repo-URI": "https://deb.nodesource.com/node_20.x/"},
    ]
    monkeypatch.setattr(images, "_apt_index_targets", lambda: host)
    assert images.mirror_args("bookworm") == ["deb http://local.mirror/debian bookworm main",
                                              "deb http://local.mirror/debian-security bookworm-security main"]
    assert images.mirror_args("trixie") == ["deb http://local.mirror/debian trixie main"]
    monkeypatch.setattr(images, "_apt_index_targets", list)
    assert images.mirror_args("bookworm") == []  # mmdebstrap's own default


def test_debian_base_rootfs_built_once(user) -> None:
    rootfs = build_rootfs(DEBIAN_BASE)  # cold: ~25-35 s; afterwards reused from the cache
    assert rootfs == images.cache_root() / f"debian-base-{DEBIAN_BASE.key}" / "rootfs"
    os_release = (rootfs / "etc" / "os-release").read_text()
    assert "VERSION_CODENAME=bookworm" in os_release
    for rel in ("bin/sh", "usr/bin/env"):
        assert os.access(rootfs / rel, os.X_OK), rel
    assert list((rootfs / "dev").iterdir()) == []
    assert not any(stat.S_ISCHR(os.lstat(p).st_mode) or stat.S_ISBLK(os.lstat(p).st_mode)
                   for p in rootfs.rglob("*") if not p.is_symlink())
    assert not [p for p in (rootfs / "usr" / "share" / "doc").rglob("*") if p.is_file()]  # docs excluded

    # World-readable, reachable by the non-root test user.
    for d in [rootfs, *rootfs.parents]:
        assert d.stat().st_mode & 0o005 == 0o005, d
    assert (rootfs / "etc" / "shadow").stat().st_mode & 0o004
    if os.getuid() == 0:
        r = subprocess.run(["cat", str(rootfs / "etc" / "os-release"), str(rootfs / "etc" / "shadow")],
                           check=False, user=user.uid, group=user.gid, extra_groups=[], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr

    # A second call reuses the tree.
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (rootfs, rootfs.parent / "recipe.json")]
    t = time.monotonic()
    assert build_rootfs(DEBIAN_BASE) == rootfs
    assert time.monotonic() - t < 1.0
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (rootfs, rootfs.parent / "recipe.json")] == before


def test_debian_base_squashfs() -> None:
    sqfs = build_squashfs(DEBIAN_BASE)
    assert sqfs == images.image_dir(DEBIAN_BASE) / "image.sqfs"
    assert sqfs.stat().st_mode & 0o004
    info = subprocess.run(["unsquashfs", "-s", str(sqfs)], capture_output=True, text=True, check=True).stdout
    assert "Compression zstd" in info
    listing = subprocess.run(["unsquashfs", "-l", "-d", "", str(sqfs)], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert "/etc/os-release" in listing and "/usr/bin/env" in listing
    mtime = sqfs.stat().st_mtime_ns
    assert build_squashfs(DEBIAN_BASE) == sqfs and sqfs.stat().st_mtime_ns == mtime


def test_debian_base_sif_is_cached() -> None:
    from shim.image.sif import primary_partition, read_sif

    sif = build_sif(DEBIAN_BASE)
    part = primary_partition(read_sif(sif))
    assert (part.fstype, part.arch) == ("Squashfs", "amd64")
    mtime = sif.stat().st_mtime_ns
    assert build_sif(DEBIAN_BASE) == sif and sif.stat().st_mtime_ns == mtime
