"""Legacy Singularity 2 images (.simg: "#!/usr/bin/env run-singularity\\n", then a squashfs) as an
ordinary user: run (each way of serving the image), inspected, through `singularity exec --userns`
(cwltool's probe), judged by the site's policy exactly as a bare squashfs file; a launch line
followed by garbage, by ext3 (a Singularity 2 .img) or longer than the bound refused with one line
(exit 65) before anything is mounted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Runner, User, compat_bin_dir
from error_line import one_error_line
from leftovers import host_fuse_mounts
from policy import make_conf, refused

from shim.errors import ExitCode
from shim.image.legacy import EXT_MAGIC, EXT_MAGIC_AT, HEADER_LIMIT
from shim.image.sif import read_sif

LAUNCH_LINE = b"#!/usr/bin/env run-singularity\n"


def _squashfs_of(sif: Path) -> bytes:
    """The busybox SIF's primary partition: a squashfs file system, as bytes."""
    part = next(d for d in read_sif(sif).descriptors if d.is_primary)
    with open(sif, "rb") as f:
        f.seek(part.offset)
        return f.read(part.size)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o644)
    return path


@pytest.fixture
def squashfs_bytes(busybox_sif: Path) -> bytes:
    return _squashfs_of(busybox_sif)


@pytest.fixture
def simg(user_dir: Path, squashfs_bytes: bytes) -> Path:
    """What Singularity 2.4+ wrote: the launch line, then the squashfs right after its newline."""
    return _write(user_dir / "busybox.simg", LAUNCH_LINE + squashfs_bytes)


@pytest.mark.parametrize("serve", ["mount", "unpack", "kept"])
def test_a_simg_runs_as_an_ordinary_user(shim: Runner, simg: Path, user_dir: Path, serve: str):
    env = {"SHIMRUN_CACHE": str(user_dir / "cache"), "SHIMRUN_KEPT_IDLE": "1"}
    before = host_fuse_mounts()
    for _ in range(2):  # planned, then from the launch record
        r = shim.run(["--serve", serve, simg, "cat", "/proc/self/mountinfo"], env=env)
        assert r.returncode == 0, r.stderr
        assert "squashfuse" in r.stdout.splitlines()[0] or serve == "unpack", r.stdout
    r = shim.run(["--serve", serve, simg, "/bin/busybox", "echo", "ran"], env=env)
    assert (r.returncode, r.stdout) == (0, "ran\n"), r.stderr
    if serve == "mount":
        assert host_fuse_mounts() == before


def test_inspect_says_what_it_is(shim: Runner, simg: Path):
    r = shim.run(["inspect", simg])
    assert r.returncode == 0, r.stderr
    kind = next(ln for ln in r.stdout.splitlines() if ln.startswith("Kind:"))
    assert f"legacy Singularity image (squashfs at offset {len(LAUNCH_LINE)})" in kind, r.stdout
    assert "Squashfs:" in r.stdout
    doc = json.loads(shim.run(["inspect", "--json", simg]).stdout)
    assert (doc["kind"], doc["offset"]) == ("simg", len(LAUNCH_LINE)) and doc["squashfs"]["inodes"] > 0
    # its Apptainer metadata is read at the offset too (the busybox image's labels)
    labels = shim.run(["inspect", "--labels", simg])
    assert labels.returncode == 0 and labels.stdout, labels.stderr
    one_error_line(shim.run(["inspect", "--sbom", simg]), ExitCode.IMAGE, "legacy Singularity image",
                   "only a SIF carries SBOM objects")


def test_singularity_exec_userns_as_cwltool_probes_it(user: User, simg: Path, user_dir: Path):
    singularity = Runner(user, str(compat_bin_dir() / "singularity"))
    env = {"SHIMRUN_CACHE": str(user_dir / "cache")}
    r = singularity.run(["exec", "--userns", simg, "true"], env=env)
    assert r.returncode == 0 and "error" not in r.stderr, r.stderr
    r = singularity.run(["exec", "--userns", simg, "no-such-program"], env=env)
    assert r.returncode == ExitCode.NOT_FOUND and "no-such-program" in r.stderr, r.stderr


def test_cwltools_own_hello_simg(shim: Runner, user: User, user_dir: Path):
    """The image cwltool probes with (built by Singularity 2.5): it holds one i386 program and no
    `true`, so the probe gets "executable file not found" (127) from a launch that got that far, not 65:
    Apptainer's words, which cwltool takes to mean that --userns works."""
    from engines import conformance_venv

    found = sorted(conformance_venv().glob("lib/python3*/site-packages/cwltool/hello.simg"))
    assert found, "cwltool ships hello.simg"
    hello = _write(user_dir / "hello.simg", found[0].read_bytes())
    singularity = Runner(user, str(compat_bin_dir() / "singularity"))
    r = singularity.run(["exec", "--userns", hello, "true"], env={"SHIMRUN_CACHE": str(user_dir / "cache")})
    assert r.returncode == ExitCode.NOT_FOUND and "true: executable file not found in the image" in r.stderr, r.stderr
    r = shim.run(["inspect", hello])
    assert f"legacy Singularity image (squashfs at offset {len(LAUNCH_LINE)})" in r.stdout, r.stderr


def test_garbage_after_the_launch_line_is_a_bad_image(shim: Runner, user_dir: Path, squashfs_bytes: bytes):
    garbage = _write(user_dir / "garbage.simg", LAUNCH_LINE + b"\x00garbage" * 1000)
    one_error_line(shim.run([garbage, "true"]), ExitCode.IMAGE, str(garbage),
                   "neither a SIF header", f"squashfs file system (at offset {len(LAUNCH_LINE)})")
    # the magic, then a damaged superblock: the superblock check names the offset
    broken = bytearray(squashfs_bytes)
    broken[12:16] = (3).to_bytes(4, "little")  # block size 3: no squashfs has it
    bad_super = _write(user_dir / "bad-super.simg", LAUNCH_LINE + bytes(broken))
    one_error_line(shim.run([bad_super, "true"]), ExitCode.IMAGE, f"offset {len(LAUNCH_LINE)}", "block size 3")
    # cut short: the squashfs claims more than the file holds
    cut = _write(user_dir / "cut.simg", LAUNCH_LINE + squashfs_bytes[:4096])
    one_error_line(shim.run([cut, "true"]), ExitCode.IMAGE, "claims", "cut short")
    # a SIF is still a SIF (it begins with the same line), and a damaged one is not taken for a .simg
    assert shim.run(["inspect", "--json", garbage]).returncode == ExitCode.IMAGE


def test_a_launch_line_longer_than_the_bound_is_refused(shim: Runner, user_dir: Path, squashfs_bytes: bytes):
    line = b"#!/usr/bin/env run-singularity" + b" " * HEADER_LIMIT + b"\n"
    long = _write(user_dir / "long.simg", line + squashfs_bytes)
    one_error_line(shim.run([long, "true"]), ExitCode.IMAGE, f"longer than {HEADER_LIMIT} bytes")
    # one byte under the bound (the newline the 4096th) is still an image
    line = b"#!/usr/bin/env run-singularity" + b" " * (HEADER_LIMIT - 31) + b"\n"
    assert len(line) == HEADER_LIMIT
    at_bound = _write(user_dir / "at-bound.simg", line + squashfs_bytes)
    r = shim.run([at_bound, "/bin/busybox", "echo", "ran"])
    assert (r.returncode, r.stdout) == (0, "ran\n"), r.stderr
    # a "#!" script that does not name the launcher is no image
    script = _write(user_dir / "script.simg", b"#!/bin/sh\n" + squashfs_bytes)
    one_error_line(shim.run([script, "true"]), ExitCode.IMAGE, "not a SIF image, a squashfs file or a directory")


def test_an_ext3_singularity_2_image_is_refused(shim: Runner, user_dir: Path):
    fs = bytearray(64 << 10)
    fs[EXT_MAGIC_AT:EXT_MAGIC_AT + 2] = EXT_MAGIC
    img = _write(user_dir / "old.img", LAUNCH_LINE + bytes(fs))
    line = one_error_line(shim.run([img, "true"]), ExitCode.IMAGE, "Singularity 2 ext3 image")
    assert "apptainer build OUT.sif" in line


def test_the_policy_judges_it_as_a_bare_squashfs_file(shim: Runner, user_dir: Path, simg: Path,
                                                       squashfs_bytes: bytes):
    sqfs = _write(user_dir / "busybox.sqfs", squashfs_bytes)
    for images, rule in (("allow_directories = false", "allow_directories"),
                         ("allow_unsigned = false", "allow_unsigned")):
        conf = make_conf(user_dir / f"conf-{rule}", images)
        for image in (sqfs, simg):
            r = shim.run(["--conf", conf, image, "true"])
            assert refused(r, rule), r.stderr
            assert ("legacy Singularity 2 image" in r.stderr) == (image == simg), r.stderr
            assert refused(shim.run(["check", "--conf", conf, image]), rule)
    # a policy that allows bare squashfs files allows it too
    conf = make_conf(user_dir / "conf-paths", f'paths = ["{user_dir}"]')
    for image in (sqfs, simg):
        r = shim.run(["--conf", conf, image, "/bin/busybox", "echo", "ran"])
        assert (r.returncode, r.stdout) == (0, "ran\n"), r.stderr
