"""The site's configuration directory (fixed at install) always holds: its [images] and
[provenance] apply whatever --conf, SHIMRUN_CONF or SHIMRUN_HOST_ROOT name, which may add rules
(a tighter policy) and provenance directories but never drop or loosen the site's. And under a
signature rule, an image file that someone besides the user (or root) can rewrite in place is
refused: its signature would say nothing about the bytes mounted later.

These tests write the installed shim's system directory (tests/policy.py: system_conf) and put
back what was there."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import User
from policy import make_conf, make_signing_key, readable_copy, refused, system_conf
from signed_sifs import SIFS

from shim.errors import ExitCode


@pytest.fixture
def keypair(user_dir: Path) -> tuple[Path, Path]:
    return make_signing_key(user_dir)


@pytest.fixture
def signed(shim, user_dir: Path, busybox_sif: Path, keypair) -> Path:
    sif = readable_copy(busybox_sif, user_dir / "signed.sif")
    r = subprocess.run([shim.shimrun, "sign", "--key", keypair[0], sif], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return sif


@pytest.fixture
def unsigned(user_dir: Path, busybox_sif: Path) -> Path:
    return readable_copy(busybox_sif, user_dir / "unsigned.sif")


def test_a_named_configuration_cannot_drop_the_sites_policy(shim, user_dir: Path, signed: Path, unsigned: Path,
                                                            keypair) -> None:
    loose = make_conf(user_dir / "loose", "allow_unsigned = true")
    host_root = user_dir / "hostroot"
    make_conf(host_root / "etc" / "shim", "allow_unsigned = true")
    with system_conf("allow_unsigned = false", (keypair[1],)):
        ways = {"--conf": (["--conf", loose], {}), "SHIMRUN_CONF": ([], {"SHIMRUN_CONF": str(loose)}),
                "SHIMRUN_HOST_ROOT": ([], {"SHIMRUN_HOST_ROOT": str(host_root)}), "none": ([], {})}
        for way, (opts, env) in ways.items():
            for _ in range(2):  # planned, then from the launch record
                r = shim.run([*opts, unsigned, "echo", "ran"], env=env)
                assert refused(r, "allow_unsigned") and "ran" not in r.stdout, (way, r.returncode, r.stderr)
                r = shim.run([*opts, signed, "echo", "ran"], env=env)
                assert r.returncode == 0 and r.stdout == "ran\n", (way, r.stderr)
        # check says the same as the launch
        assert refused(shim.run(["check", "--conf", loose, unsigned]), "allow_unsigned")
    # the site's directory gone, the same command line runs again (the record names the file)
    assert shim.run(["--conf", loose, unsigned, "echo", "ran"]).stdout == "ran\n"


def test_a_named_configuration_may_tighten_the_policy(shim, user_dir: Path, signed: Path, unsigned: Path,
                                                      keypair, world_dir: Path) -> None:
    strict = make_conf(user_dir / "strict", "allow_unsigned = false", (keypair[1],))
    with system_conf(f'paths = ["{world_dir}"]'):
        r = shim.run(["--conf", strict, unsigned, "true"])
        assert refused(r, "allow_unsigned"), r.stderr
        assert shim.run(["--conf", strict, signed, "echo", "ran"]).stdout == "ran\n"
        assert shim.run([unsigned, "echo", "ran"]).stdout == "ran\n"  # the site's own rule alone lets it
        # both apply: the site's paths refuse an image elsewhere, even one the named directory trusts
        elsewhere = readable_copy(signed, Path(shim.user.home) / "signed-elsewhere.sif")
        try:
            r = shim.run(["--conf", strict, elsewhere, "true"])
            assert refused(r, "paths"), r.stderr
        finally:
            elsewhere.unlink()


def test_the_sites_provenance_directory_holds_under_another_configuration(shim, user_dir: Path,
                                                                          busybox_sif: Path) -> None:
    records = user_dir / "site-records"
    records.mkdir()
    records.chmod(0o1777)
    other = user_dir / "other"
    other.mkdir()
    (other / "shim.toml").write_text("[launch]\nbinds = []\n")
    other.chmod(0o755)
    (other / "shim.toml").chmod(0o644)
    with system_conf("", extra=f'[provenance]\ndir = "{records}"'):
        assert shim.run(["--conf", other, busybox_sif, "true"]).returncode == 0
    written = list(records.iterdir())
    assert len(written) == 1 and json.loads(written[0].read_text())["schema"] == "shim-provenance/1"


def _posix_acl(entries: list[tuple[int, int, int]]) -> bytes:
    """system.posix_acl_access: version 2, then (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_an_image_another_user_can_rewrite_is_refused_under_a_signature_rule(
        shim, user_dir: Path, signed: Path, keypair, other_user: User) -> None:
    conf = make_conf(user_dir / "conf", "allow_unsigned = false", (keypair[1],))
    assert shim.run(["--conf", conf, signed, "true"]).returncode == 0
    cases = {"owner": lambda p: os.chown(p, other_user.uid, other_user.gid),
             "group": lambda p: p.chmod(0o664), "everyone": lambda p: p.chmod(0o646),
             "acl": lambda p: os.setxattr(p, "system.posix_acl_access", _posix_acl(
                 [(0x01, 6, 0xFFFFFFFF), (0x02, 6, other_user.uid), (0x04, 4, 0xFFFFFFFF), (0x10, 6, 0xFFFFFFFF),
                  (0x20, 4, 0xFFFFFFFF)]))}
    says = {"owner": f"it belongs to uid {other_user.uid}", "group": "its group", "everyone": "everyone may write it",
            "acl": f"an ACL lets user {other_user.uid} write it"}
    for case, make in cases.items():
        copy = readable_copy(signed, user_dir / f"{case}.sif")
        make(copy)
        r = shim.run(["--conf", conf, copy, "echo", "ran"])
        assert refused(r, "allow_writable") and says[case] in r.stderr and "ran" not in r.stdout, (case, r.stderr)
    # a site that accepts it says so
    lenient = make_conf(user_dir / "lenient", "allow_unsigned = false\nallow_writable = true", (keypair[1],))
    r = shim.run(["--conf", lenient, user_dir / "owner.sif", "echo", "ran"])
    assert r.returncode == 0 and r.stdout == "ran\n", r.stderr
    # without a signature rule, who may write the file is not the policy's business
    paths_only = make_conf(user_dir / "paths", f'paths = ["{user_dir}"]')
    assert shim.run(["--conf", paths_only, user_dir / "owner.sif", "true"]).returncode == 0


def test_a_system_directory_that_cannot_be_read_refuses(shim, user_dir: Path, unsigned: Path) -> None:
    """Failing closed: a site's shim.toml the user cannot read is an error, not no policy."""
    loose = make_conf(user_dir / "loose", "allow_unsigned = true")
    with system_conf("allow_unsigned = false") as where:
        (where / "shim.toml").chmod(0o600)
        r = shim.run(["--conf", loose, unsigned, "true"])
    assert r.returncode == ExitCode.CONFIG and r.stderr.count("\n") == 1 and "cannot read" in r.stderr, r.stderr


def test_golden_unsigned_image_refused_through_the_compat_command(shim, user_dir: Path, keypair) -> None:
    """apptainer exec reads the same system directory."""
    from conftest import compat_bin_dir

    img = readable_copy(SIFS / "one-group.sif", user_dir / "golden-unsigned.sif")
    with system_conf("allow_unsigned = false", (keypair[1],)):
        r = shim.run([img, "true"])
        assert refused(r, "allow_unsigned"), r.stderr
        p = subprocess.run([compat_bin_dir() / "apptainer", "exec", img, "true"], capture_output=True, text=True,
                           check=False, env=shim.env(), user=shim.user.uid, group=shim.user.gid, extra_groups=[],
                           cwd="/tmp")
        assert p.returncode == ExitCode.UNTRUSTED and "images.allow_unsigned" in p.stderr, p.stderr
