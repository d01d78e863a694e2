"""Bad input gets one line, a distinct exit code, no traceback and nothing left behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from error_line import one_error_line
from leftovers import stage_dir_entries

from shim.errors import ExitCode


def test_not_a_sif(shim, user_dir):
    bad = user_dir / "notes.sif"
    bad.write_text("just text\n" * 10)
    r = shim.run([bad, "true"])
    assert "is not a SIF image" in one_error_line(r, ExitCode.IMAGE)


def test_truncated_sif(shim, busybox_sif, user_dir):
    cut = user_dir / "cut.sif"
    cut.write_bytes(busybox_sif.read_bytes()[:20000])
    r = shim.run([cut, "true"])
    assert "truncated" in one_error_line(r, ExitCode.IMAGE).lower()


def test_no_primary_partition(shim, golden_copy):
    r = shim.run([golden_copy("sylabs-sif/empty.sif"), "true"])
    assert "primary" in one_error_line(r, ExitCode.IMAGE)


def test_unsupported_filesystem_type(shim, golden_copy, user_dir):
    data = bytearray(golden_copy("sylabs-sif/one-group.sif").read_bytes())
    fstype_at = 4096 + 585 + 201  # descriptor slot 1 (the PrimSys partition), extra.fstype
    assert data[fstype_at] == 1  # squashfs
    data[fstype_at] = 2  # ext3
    ext3 = user_dir / "ext3-primary.sif"
    ext3.write_bytes(bytes(data))
    r = shim.run([ext3, "true"])
    assert "ext3" in one_error_line(r, ExitCode.IMAGE).lower()


def test_foreign_architecture_names_both(shim, golden_copy):
    r = shim.run([golden_copy("apptainer/busybox_arm64.sif"), "/bin/busybox", "true"])
    line = one_error_line(r, ExitCode.ARCH)
    assert "arm64" in line and "amd64" in line


def test_missing_image(shim):
    r = shim.run(["/nonexistent/image.sif", "true"])
    assert "does not exist" in one_error_line(r, ExitCode.IMAGE)


@pytest.mark.parametrize("args", [[], ["--no-such-option", "x.sif", "true"]])
def test_usage_errors(shim, args):
    r = shim.run(args)
    assert r.returncode == ExitCode.USAGE
    assert "Traceback" not in r.stderr


def test_no_command(shim, busybox_sif):
    r = shim.run([busybox_sif])
    assert "no command" in one_error_line(r, ExitCode.USAGE)


def test_bad_bind_spec(shim, busybox_sif):
    r = shim.run(["--bind", "/tmp:relative", busybox_sif, "true"])
    assert "absolute" in one_error_line(r, ExitCode.USAGE)


def test_fuse_unusable_and_no_fallback(shim, busybox_sif, user_dir):
    # No squashfuse and no unsquashfs on PATH: nothing can open the squashfs. A cache of its own:
    # no copy extracted before (by a launch while another suite had /dev/fuse closed) is there.
    r = shim.run([busybox_sif, "/bin/busybox", "true"],
                 env={"PATH": "/nonexistent", "SHIMRUN_NO_FUSE": "1", "SHIMRUN_CACHE": str(user_dir / "cache")})
    line = one_error_line(r, ExitCode.HOST)
    assert "unsquashfs" in line and "squashfuse" in line


NEST_TO_THE_LIMIT = """\
if unshare -U --map-current-user true 2>/dev/null; then exec unshare -U --map-current-user sh "$0" "$@"; fi
exec "$@"
"""


def test_user_namespaces_unavailable(shim, busybox_sif, user_dir):
    """Real failure of unshare(CLONE_NEWUSER): with the sysctl set to 0 where this machine lets
    root write it, else by nesting user namespaces to the kernel's limit first."""
    knob = Path("/proc/sys/user/max_user_namespaces")
    if os.getuid() == 0 and os.access(knob, os.W_OK):
        saved = knob.read_text()
        knob.write_text("0\n")
        try:
            r = shim.run([busybox_sif, "/bin/busybox", "true"])
        finally:
            knob.write_text(saved)
        expect = "disabled"
    else:
        script = user_dir / "nest.sh"
        script.write_text(NEST_TO_THE_LIMIT)
        r = shim.sh(f"sh {script} {shim.shimrun} {busybox_sif} /bin/busybox true")
        expect = "limit is reached"
    line = one_error_line(r, ExitCode.HOST)
    assert expect in line and "user.max_user_namespaces" in line
    assert stage_dir_entries() == ["README"]


def test_unreadable_image(shim, busybox_sif, user_dir):
    locked = user_dir / "locked.sif"
    shutil.copyfile(busybox_sif, locked)
    locked.chmod(0)
    if os.getuid() != 0:
        pytest.skip("as the owner the file stays readable only to root tests")
    r = shim.run([locked, "true"])
    assert "Permission denied" in one_error_line(r, ExitCode.IMAGE)
