"""The image policy holds against a second user who swaps the image under the launching user.

The attacker (a second ordinary user) can write the project directory the images lie in, and
exchanges two names in it (renameat2 RENAME_EXCHANGE) as fast as one core allows, for the whole
test: a signed SIF and an unsigned one, or a symlink into the site's allowed place and one out of
it. The user launches the name hundreds of times, planned and from the launch record. What the
policy judged must be what ran: no launch may print the unsigned (or outside) image's marker; each
one either runs the trusted image or is refused with the policy's exit code. `shimrun verify` is
held to the same: its verdict is about one file, never pieces of two."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cbuild import build_c
from conftest import User
from dirimage import busybox_dir, marked_sif
from policy import make_conf, make_signing_key

from shim.errors import ExitCode
from shim.record.format import NO_RECORD_CACHE

LAUNCHES = 500

# Exchanges two names in a loop until the stop file appears: bursts as fast as it can, between
# pauses of 0, 1 and 400 ms, so that launches meet each name in flux and settled (a rename
# changes the file's change time, so a launch record is run again only once the name is still).
SWAPPER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    unsigned long n = 0, burst;
    if (argc != 4)
        return 2;
    for (;;) {
        for (burst = 0; burst < 4000; burst++)
            if (syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], RENAME_EXCHANGE) == 0)
                n++;
        if (access(argv[3], F_OK) == 0)
            break;
        usleep((unsigned)((n / 4000) % 3 == 2 ? 400000 : (n / 4000) % 3 * 1000));
    }
    printf("%lu\n", n);
    return n ? 0 : 1;
}
"""


@contextmanager
def swapping(attacker: User, a: Path, b: Path) -> Iterator[None]:
    """`attacker` exchanges `a` and `b` until the block ends (it must have swapped, many times)."""
    exe = build_c("swapper", SWAPPER)
    stop = a.parent / ".stop"
    proc = subprocess.Popen([exe, a, b, stop], user=attacker.uid, group=attacker.gid, extra_groups=[],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.05)
        yield
    finally:
        stop.touch()
        out, err = proc.communicate(timeout=30)
        stop.unlink()
    assert proc.returncode == 0 and int(out) > 1000, (out, err)


@pytest.fixture
def project(user_dir: Path, other_user: User) -> Path:
    """A shared project directory the second user may write (entries in it can be renamed)."""
    d = user_dir / "project"
    d.mkdir()
    os.chown(d, other_user.uid, other_user.gid)
    d.chmod(0o777)
    return d


def launches(shim, args: list, n: int = LAUNCHES) -> list[subprocess.CompletedProcess]:
    return [shim.run(["--debug", *args]) for _ in range(n)]


def tally(results: list[subprocess.CompletedProcess]) -> Counter:
    return Counter("warm" if "from the cache (no Python)" in r.stderr else "planned" for r in results)


@pytest.mark.parametrize("serve", ["unpack", "mount"])
def test_a_signed_and_an_unsigned_sif_swapped_under_the_launch(shim, user_dir: Path, project: Path,
                                                               other_user: User, serve: str) -> None:
    """Served from a node-local copy (the record's root is the copy, its IMAGE_FILE the SIF) or
    mounted from the opened SIF: the same holds."""
    private, public = make_signing_key(user_dir)
    conf = make_conf(user_dir / "conf", "allow_unsigned = false", (public,))
    signed, unsigned = marked_sif(shim.shimrun, user_dir, "signed"), marked_sif(shim.shimrun, user_dir, "UNSIGNED")
    r = subprocess.run([shim.shimrun, "sign", "--key", private, signed], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    # root's files: neither user can rewrite them in place, only rename them in the project
    name, other = project / "app.sif", project / "spare.sif"
    os.rename(signed, name)
    os.rename(unsigned, other)
    args = ["--serve", serve, "--conf", conf, name, "busybox", "cat", "/marker"]
    first = shim.run(args)
    assert first.stdout == "signed\n", first.stderr
    with swapping(other_user, name, other):
        results = launches(shim, args)
        # warm launches from a copy are quick: more of them, until the swapper's pauses and bursts
        # have met both the planned and the warm path often enough
        while len(results) < 4 * LAUNCHES and not os.environ.get(NO_RECORD_CACHE) and min(
                tally(results)[k] for k in ("warm", "planned")) < 20:
            results += launches(shim, args, 100)
    ran = [r for r in results if r.returncode == 0]
    assert all(r.stdout == "signed\n" for r in ran), [r.stderr for r in ran if r.stdout != "signed\n"][:3]
    refused = [r for r in results if r.returncode != 0]
    assert all(r.returncode == ExitCode.UNTRUSTED and "images.allow_unsigned:" in r.stderr for r in refused), \
        [r.stderr for r in refused if r.returncode != ExitCode.UNTRUSTED][:2]
    kinds = tally(results)
    assert ran and refused, kinds  # both files were met
    if not os.environ.get(NO_RECORD_CACHE):
        assert kinds["warm"] >= 20 and kinds["planned"] >= 20, kinds


def test_a_directory_image_swapped_for_one_outside_the_allowed_place(shim, user_dir: Path, project: Path,
                                                                     other_user: User, world_dir: Path) -> None:
    allowed = world_dir / f"allowed-{user_dir.name}"
    inside = busybox_dir(allowed / "img")
    (inside / "marker").write_text("inside\n")
    outside = busybox_dir(user_dir / "outside-img")
    (outside / "marker").write_text("OUTSIDE\n")
    for p in (inside / "marker", outside / "marker"):
        p.chmod(0o644)
    conf = make_conf(user_dir / "conf", f'paths = ["{allowed}"]')
    name, other = project / "img", project / "spare"
    name.symlink_to(inside)
    other.symlink_to(outside)
    try:
        with swapping(other_user, name, other):
            results = launches(shim, ["--conf", conf, name, "busybox", "cat", "/marker"])
    finally:
        subprocess.run(["rm", "-rf", str(allowed)], check=False)
    ran = [r for r in results if r.returncode == 0]
    assert all(r.stdout == "inside\n" for r in ran), [r.stdout for r in ran if r.stdout != "inside\n"][:3]
    refused = [r for r in results if r.returncode != 0]
    assert all(r.returncode == ExitCode.UNTRUSTED and "images.paths:" in r.stderr for r in refused), \
        [r.stderr for r in refused if r.returncode != ExitCode.UNTRUSTED][:2]
    assert ran and refused, tally(results)


def test_verify_judges_one_file(shim, user_dir: Path, project: Path, other_user: User) -> None:
    """A verdict read from pieces of two files would name an object changed after signing, or a
    short read; each verdict must be the signed file's or the unsigned one's."""
    private, public = make_signing_key(user_dir)
    signed, unsigned = marked_sif(shim.shimrun, user_dir, "signed"), marked_sif(shim.shimrun, user_dir, "UNSIGNED")
    r = subprocess.run([shim.shimrun, "sign", "--key", private, signed], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    name, other = project / "app.sif", project / "spare.sif"
    os.rename(signed, name)
    os.rename(unsigned, other)
    with swapping(other_user, name, other):
        results = [shim.run(["verify", "--key", public, name]) for _ in range(LAUNCHES)]
    outcomes = Counter()
    for r in results:
        if r.returncode == 0:
            assert r.stdout.splitlines()[-1].startswith("verified: group 1"), r.stdout
            outcomes["signed"] += 1
        else:
            unsigned = "not verified: group 1 has no signature: the image is not signed\n"
            assert r.returncode == ExitCode.UNTRUSTED and r.stdout == unsigned, (r.returncode, r.stdout, r.stderr)
            outcomes["unsigned"] += 1
    assert outcomes["signed"] and outcomes["unsigned"], outcomes


@pytest.mark.parametrize("kind", ["sif", "dir"])
def test_the_image_path_is_looked_up_once_per_launch(shim, user_dir: Path, busybox_sif: Path, kind: str) -> None:
    """Planned and warm, the image's name reaches the kernel in one syscall (the O_PATH open):
    every later step goes through that descriptor (strace -f of the whole launch)."""
    policy = make_conf(user_dir / "conf", f'paths = ["{user_dir}"]')
    if kind == "sif":
        img = user_dir / "img.sif"
        img.write_bytes(busybox_sif.read_bytes())
        img.chmod(0o644)
    else:
        img = busybox_dir(user_dir / "img")
    trace = user_dir / "trace"
    for state in ("planned", "warm"):
        r = shim.sh(f"strace -f -qq -o {trace} -e trace=%file,%desc {shim.shimrun} --debug --conf {policy} {img} "
                    "/bin/busybox true")
        assert r.returncode == 0, r.stderr
        if state == "warm" and os.environ.get(NO_RECORD_CACHE):
            continue  # every launch is planned: the planned one was traced
        assert ("from the cache (no Python)" in r.stderr) == (state == "warm"), r.stderr
        naming = [ln for ln in trace.read_text().splitlines() if f'"{img}' in ln and "ENOENT" not in ln]
        assert len(naming) == 1 and "O_PATH" in naming[0], (state, naming)
