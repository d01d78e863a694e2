"""Untrusted image content: symlinks in the image can never carry a bind mount outside the
container root. Checked on the resolver alone and through real launches of crafted images."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from shim.errors import ExitCode

# name in the crafted image -> symlink target; every one of these points "outside" if followed
# on the host, and must resolve to /etc inside the container.
ESCAPES = {
    "abs_dotdot": "/../../etc",
    "rel_dotdot": "../../../../../etc",
    "chain_a": "chain_b",
    "chain_b": "/../../../tmp/../etc",
    "via_proc": "/proc/self/root/etc",  # a magic link: refused rather than followed
}


def make_crafted_rootfs(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for d in ("etc", "proc", "sys", "dev", "tmp", "home"):
        (root / d).mkdir(exist_ok=True)
    (root / "etc" / "image-file").write_text("image\n")
    for name, target in ESCAPES.items():
        (root / name).symlink_to(target)
    (root / "dangling").symlink_to("/no/such/place")
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return root


@pytest.fixture(scope="module")
def crafted(world_dir: Path) -> Path:
    return make_crafted_rootfs(world_dir / "crafted-rootfs")


@pytest.mark.parametrize("link", ["abs_dotdot", "rel_dotdot", "chain_a"])
def test_resolver_stays_inside_root(crafted, link):
    from shim._core import ffi, lib

    out = ffi.new("char[]", 4096)
    rc = lib.shim_resolve_in_root(str(crafted).encode(), f"/{link}/image-file".encode(), out, 4096)
    assert rc == 0
    assert ffi.string(out).decode() == str(crafted / "etc" / "image-file")


def test_resolver_refuses_magic_links(crafted):
    from shim._core import ffi, lib

    out = ffi.new("char[]", 4096)
    rc = lib.shim_resolve_in_root(str(crafted).encode(), b"/via_proc/image-file", out, 4096)
    assert rc < 0


@pytest.mark.parametrize("link", ["abs_dotdot", "rel_dotdot", "chain_a"])
@pytest.mark.parametrize("image_kind", ["dir", "squashfs"])
def test_bind_through_symlink_lands_inside(shim, crafted, user_dir, world_dir, link, image_kind):
    image = crafted
    if image_kind == "squashfs":
        image = world_dir / "crafted.sqfs"
        if not image.exists():
            subprocess.run(["mksquashfs", str(crafted), str(image), "-noappend", "-no-xattrs", "-all-root",
                            "-no-progress", "-quiet"], check=True, stdout=subprocess.DEVNULL)
            image.chmod(0o644)
    src = user_dir / "payload"
    src.mkdir()
    (src / "marker").write_text("payload\n")
    subprocess.run(["chmod", "-R", "a+rX", str(user_dir)], check=True)
    host_target = Path("/etc") / "shim-escape-test"
    r = shim.run(["--bind", f"{src}:/{link}/shim-escape-test", image, "/bin/busybox", "sh", "-c",
                  "cat /etc/shim-escape-test/marker; grep -c ' /etc/shim-escape-test ' /proc/self/mountinfo"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["payload", "1"]  # mounted at /etc/... inside the container
    assert not host_target.exists()
    assert not (Path("/") / link).exists()


def test_dangling_symlink_destination_is_refused(shim, crafted, user_dir):
    src = user_dir / "x"
    src.mkdir()
    os.chown(src, shim.user.uid, shim.user.gid)
    r = shim.run(["--bind", f"{src}:/dangling/sub", crafted, "/bin/busybox", "true"])
    assert r.returncode == ExitCode.LAUNCH
    assert "dangling symlink" in r.stderr and r.stderr.count("\n") == 1
