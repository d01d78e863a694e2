"""Staged copies under attack (issue #24's staging, shim/launch/staging.py): a staged copy is
served only if it holds the bytes of the image the policy judged, and nobody else on the node can
substitute it. Each test is a story with two people: the governed user launching, and a second
ordinary user (a squatter in /tmp, the owner of an image on the "network" file system, or someone
writing into a directory the user opened by mistake); the user's own slips (a copy changed in
place, a symlink left in its place) must not be served either. No network file system here:
SHIMRUN_STAGE=always stages what `auto` would stage from NFS/Lustre/GPFS, and `--serve mount` keeps
the copy (an unpack drops it once unpacked). What is served is told by the image's /marker."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import VENV_PYTHON, as_user
from dirimage import marked_sif
from policy import make_conf

from shim.errors import ExitCode
from shim.image.sif import primary_partition, read_sif

STAGED = re.compile(r"shimrun: staged (\S+) \(\d+ MiB\) to (\S+) in [\d.]+ s; later launches on this node use it")
NOT_STAGED = "shimrun: notice: the image is not staged: "
CHANGED = "shimrun: notice: the staged copy "


def _env(user_dir: Path, **more: str) -> dict[str, str]:
    return {"SHIMRUN_CACHE": str(user_dir / "cache"), "SHIMRUN_STAGE": "always", "SHIMRUN_SERVE": "mount", **more}


def _partition(sif: Path) -> bytes:
    part = primary_partition(read_sif(sif))
    with open(sif, "rb") as f:
        f.seek(part.offset)
        return f.read(part.size)


def _staged(user_dir: Path) -> Path:
    return user_dir / "cache" / "staged"


def _copies(user_dir: Path) -> list[Path]:
    return sorted(_staged(user_dir).glob("*.sqfs"))


def _marker(shim, image: Path, env: dict[str, str], *opts: str):
    return shim.run([*opts, image, "/bin/busybox", "cat", "/marker"], env=env)


def _as(who, code: str) -> None:
    """Python `code` run as `who` (what that user does to files by hand)."""
    r = as_user(who, [VENV_PYTHON, "-c", code])
    assert r.returncode == 0, r.stderr


@pytest.fixture
def images(shim, user_dir: Path) -> tuple[Path, Path]:
    """(the image the user runs, the squashfs of an image of the same size whose /marker says
    "bad", readable by all)."""
    image, bad = marked_sif(shim.shimrun, user_dir, "old"), marked_sif(shim.shimrun, user_dir, "bad")
    evil = user_dir / "bad.sqfs"
    evil.write_bytes(_partition(bad))
    evil.chmod(0o644)
    assert evil.stat().st_size == len(_partition(image))
    return image, evil


def _staged_once(shim, user_dir: Path, image: Path) -> Path:
    """The user's first launch: the image staged and served; the copy."""
    r = _marker(shim, image, _env(user_dir))
    assert (r.returncode, r.stdout) == (0, "old\n"), r.stderr
    (m,) = STAGED.findall(r.stderr)
    copy = Path(m[1])
    assert _copies(user_dir) == [copy]
    return copy


def _served_old_and_staged_anew(shim, user_dir: Path, image: Path) -> str:
    """The next launch serves the judged bytes, from a copy made anew that hashes to its name;
    its stderr."""
    r = _marker(shim, image, _env(user_dir))
    assert (r.returncode, r.stdout) == (0, "old\n"), r.stderr
    assert len(STAGED.findall(r.stderr)) == 1, r.stderr
    (copy,) = _copies(user_dir)
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == copy.stem and copy.stat().st_nlink == 1
    assert not copy.is_symlink() and copy.stat().st_uid == shim.user.uid
    return r.stderr


def test_a_squatted_tmp_directory_gets_no_copy_and_its_planted_copy_is_not_served(shim, user_dir, other_user,
                                                                                 images, tmp_private):
    """Another user made /tmp/shim-UID first and planted staged/DIGEST.sqfs (the "bad" squashfs, by
    the name the real image's digest gives it): refused before anything is made in it, the image
    served as it is; `check` says why it is not staged."""
    image, bad = images
    digest = hashlib.sha256(_partition(image)).hexdigest()
    planted = tmp_private / "staged" / f"{digest}.sqfs"
    assert as_user(other_user, ["mkdir", "-m", "0777", "-p", planted.parent, tmp_private / "rootfs"]).returncode == 0
    assert as_user(other_user, ["chmod", "0777", tmp_private]).returncode == 0
    _as(other_user, f"open({str(planted)!r}, 'wb').write(open({str(bad)!r}, 'rb').read())")
    before = sorted(str(p) for p in tmp_private.rglob("*"))
    conf = make_conf(user_dir / "conf", '\n[serve]\nlocal_dir = "/tmp"\n')
    env = _env(user_dir)
    check = shim.run(["check", "--conf", conf, image], env=env)
    line = next(ln for ln in check.stdout.splitlines() if ln.startswith("served: "))
    assert "not staged (asked by SHIMRUN_STAGE): no local directory: " in line and \
        f"{tmp_private} belongs to uid {other_user.uid}, not to you: refused" in line, line
    r = _marker(shim, image, env, "--conf", str(conf))
    assert (r.returncode, r.stdout) == (0, "old\n") and not STAGED.search(r.stderr), r.stderr
    assert sorted(str(p) for p in tmp_private.rglob("*")) == before


@pytest.mark.parametrize("plant", ["file", "symlink", "before-the-first-launch"])
def test_a_copy_planted_in_a_staged_directory_others_can_write_is_not_served(shim, user_dir, other_user, images,
                                                                             plant):
    """The user opened their staged directory to others (mode 0777, the cache above it 0755): the
    other user puts the "bad" squashfs (or a symlink to theirs) where the copy is, or before it
    was ever made, under the name the image's digest gives it. The directory is not used (one
    notice naming it), and the image is served as judged."""
    image, bad = images
    evil = bad.read_bytes()
    staged = _staged(user_dir)
    if plant == "before-the-first-launch":
        (user_dir / "cache").mkdir(mode=0o755)
        staged.mkdir()
        shutil.chown(user_dir / "cache", shim.user.uid, shim.user.gid)
        shutil.chown(staged, shim.user.uid, shim.user.gid)
        copy = staged / f"{hashlib.sha256(_partition(image)).hexdigest()}.sqfs"
    else:
        copy = _staged_once(shim, user_dir, image)
        (user_dir / "cache").chmod(0o755)
    staged.chmod(0o777)
    theirs = Path(other_user.home) / "bad.sqfs"
    _as(other_user, f"open({str(theirs)!r}, 'wb').write(open({str(bad)!r}, 'rb').read())")
    tmp = staged / "theirs.tmp"
    if plant == "symlink":
        _as(other_user, f"import os; os.symlink({str(theirs)!r}, {str(tmp)!r}); os.rename({str(tmp)!r}, {str(copy)!r})")
    else:
        _as(other_user, f"import shutil, os; shutil.copyfile({str(theirs)!r}, {str(tmp)!r}); "
                        f"os.chmod({str(tmp)!r}, 0o644); os.rename({str(tmp)!r}, {str(copy)!r})")
    if plant == "before-the-first-launch":  # their lock too, where the user's launch would take its own
        _as(other_user, f"open({str(copy.with_suffix('.lock'))!r}, 'a').close()")
    r = _marker(shim, image, _env(user_dir))
    assert (r.returncode, r.stdout) == (0, "old\n"), r.stderr
    assert "Traceback" not in r.stderr and not STAGED.search(r.stderr), r.stderr
    said = [ln for ln in r.stderr.splitlines() if ln.startswith(NOT_STAGED)]
    assert said == [f"{NOT_STAGED}{staged} has mode 0777, not 0700: refused (chmod 0700 it)"], r.stderr
    # what they planted is left as it was (nothing written through their link)
    assert theirs.read_bytes() == evil and (copy.is_symlink() or copy.stat().st_uid == other_user.uid)
    # once the user closes the directory again, their own copy is made and served
    staged.chmod(0o700)
    for p in staged.iterdir():
        if p.is_symlink() or p.stat().st_uid != shim.user.uid:
            p.unlink()
    _served_old_and_staged_anew(shim, user_dir, image)


# What the user does to their copy, as Python run as them (`copy`: its path, `bad`: the "bad"
# squashfs, as many bytes as the copy)
TAMPER = {
    "a-bit-flipped": "f = open(copy, 'r+b'); f.seek(len(bad) // 2); b = f.read(1); f.seek(len(bad) // 2); "
                     "f.write(bytes([b[0] ^ 0x10])); f.close()",
    "rewritten": "f = open(copy, 'r+b'); f.write(bad); f.close()",
    "rewritten-keeping-its-times": "st = os.stat(copy); f = open(copy, 'r+b'); f.write(bad); f.close(); "
                                   "os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))",
    "truncated": "os.truncate(copy, len(bad) // 2)",
    "extended": "f = open(copy, 'ab'); f.write(bytes(65536)); f.close()",
}


@pytest.mark.parametrize("how", list(TAMPER))
def test_a_copy_changed_in_place_is_never_served(shim, user_dir, images, how):
    """The user's copy changed in place after it was staged (the same file: a bit flipped, the "bad"
    squashfs written over it, its times put back after that, cut short, grown): the next launch
    does not serve it; it copies the image again, says so, and serves the judged bytes."""
    image, bad = images
    copy = _staged_once(shim, user_dir, image)
    inode = copy.stat().st_ino
    _as(shim.user, f"import os; copy = {str(copy)!r}; bad = open({str(bad)!r}, 'rb').read(); "
                   + TAMPER[how])
    assert copy.stat().st_ino == inode and hashlib.sha256(copy.read_bytes()).hexdigest() != copy.stem
    err = _served_old_and_staged_anew(shim, user_dir, image)
    assert f"{CHANGED}{copy} " in err and err.count(CHANGED) == 1, err


def test_a_kept_mount_of_a_copy_changed_in_place_is_not_joined(shim, user_dir, images):
    """A kept mount (kept up across launches) of the copy: once the copy is rewritten, the next
    launch does not join the mount of the changed file; it stages again and serves the judged bytes."""
    image, bad = images
    env = _env(user_dir, SHIMRUN_SERVE="kept", SHIMRUN_KEPT_IDLE="2")
    first = _marker(shim, image, env)
    assert (first.returncode, first.stdout) == (0, "old\n"), first.stderr
    (copy,) = _copies(user_dir)
    _as(shim.user, f"import os; copy = {str(copy)!r}; bad = open({str(bad)!r}, 'rb').read(); "
                   + TAMPER["rewritten-keeping-its-times"])
    r = _marker(shim, image, env)
    assert (r.returncode, r.stdout) == (0, "old\n") and len(STAGED.findall(r.stderr)) == 1, r.stderr
    assert r.stderr.count(CHANGED) == 1 and hashlib.sha256(copy.read_bytes()).hexdigest() == copy.stem


@pytest.mark.parametrize("what", ["the-copy", "the-directory"])
def test_a_symlink_put_in_place_of_the_copy_or_its_directory_is_not_followed(shim, user_dir, images, what):
    """A symlink where the copy (or the staged directory) was, to a file (a directory) of the
    user's holding the "bad" squashfs under the copy's name: not followed, nothing written through it."""
    image, bad = images
    copy = _staged_once(shim, user_dir, image)
    elsewhere = user_dir / "elsewhere"
    code = (f"import os, shutil; os.mkdir({str(elsewhere)!r}, 0o700); "
            f"open({str(elsewhere / copy.name)!r}, 'wb').write(open({str(bad)!r}, 'rb').read())")
    if what == "the-copy":
        code += f"; os.unlink({str(copy)!r}); os.symlink({str(elsewhere / copy.name)!r}, {str(copy)!r})"
    else:
        code += (f"; shutil.copy({str(copy.with_suffix('.lock'))!r}, {str(elsewhere)!r}); "
                 f"shutil.rmtree({str(copy.parent)!r}); os.symlink({str(elsewhere)!r}, {str(copy.parent)!r})")
    _as(shim.user, code)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    env = _env(user_dir)
    r = _marker(shim, image, env)
    assert (r.returncode, r.stdout) == (0, "old\n"), r.stderr
    assert "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before
    if what == "the-copy":
        assert len(STAGED.findall(r.stderr)) == 1 and not copy.is_symlink(), r.stderr
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == copy.stem
    else:
        said = [ln for ln in r.stderr.splitlines() if ln.startswith(NOT_STAGED)]
        assert said == [f"{NOT_STAGED}{copy.parent} is a symbolic link (not made by shim): refused"], r.stderr
        check = shim.run(["check", image], env=env)
        assert f"not staged (asked by SHIMRUN_STAGE): {copy.parent} is a symbolic link" in check.stdout, check.stdout


@pytest.mark.parametrize("keep_times", [False, True], ids=["new-times", "times-put-back"])
@pytest.mark.parametrize("serve", ["mount", "unpack"])
def test_an_image_rewritten_on_the_shared_fs_is_staged_anew(shim, user_dir, other_user, serve, keep_times):
    """The image is another user's (a project's image on the shared file system, readable by all),
    rewritten in place by them (the same inode; its times put back, even): the user's next launch
    stages the new bytes under their own digest, never the stale copy."""
    old, new = marked_sif(shim.shimrun, user_dir, "old"), marked_sif(shim.shimrun, user_dir, "new")
    project = Path(other_user.home) / "project"
    shutil.rmtree(project, ignore_errors=True)
    assert as_user(other_user, ["mkdir", "-m", "0755", "-p", project]).returncode == 0
    image = project / "image.sif"
    assert as_user(other_user, ["cp", old, image]).returncode == 0
    env = _env(user_dir, SHIMRUN_SERVE=serve)
    first = _marker(shim, image, env)
    assert (first.returncode, first.stdout) == (0, "old\n") and len(STAGED.findall(first.stderr)) == 1, first.stderr
    inode = image.stat().st_ino
    _as(other_user, f"import os; st = os.stat({str(image)!r}); f = open({str(image)!r}, 'r+b'); f.truncate(0); "
                    f"f.write(open({str(new)!r}, 'rb').read()); f.close()"
                    + (f"; os.utime({str(image)!r}, ns=(st.st_atime_ns, st.st_mtime_ns))" if keep_times else ""))
    assert image.stat().st_ino == inode
    second = _marker(shim, image, env)
    assert (second.returncode, second.stdout) == (0, "new\n"), second.stderr
    (m,) = STAGED.findall(second.stderr)
    assert Path(m[1]).name == hashlib.sha256(_partition(new)).hexdigest() + ".sqfs"
    if serve == "mount":
        assert {p.stem for p in _copies(user_dir)} == {hashlib.sha256(_partition(s)).hexdigest() for s in (old, new)}
    else:  # an unpack's copy goes once unpacked, and its seal with it
        assert not [p for p in _staged(user_dir).iterdir() if p.suffix in (".sqfs", ".seal")]
    shutil.rmtree(project, ignore_errors=True)


def test_junk_in_the_staged_directory_is_never_served(shim, user_dir, images):
    """Many entries of the user's own in the staged directory (copies of other digests, of the
    right size or not, killed copies' leftovers, a directory where the copy goes): none is
    served, the copy is made and served, `cache list` lists without failing."""
    image, bad = images
    digest = hashlib.sha256(_partition(image)).hexdigest()
    staged = _staged(user_dir)
    size = len(_partition(image))
    code = (f"import os\nos.makedirs({str(staged)!r}, 0o700)\nbad = open({str(bad)!r}, 'rb').read()\n"
            f"for i in range(200):\n"
            f"    name = os.path.join({str(staged)!r}, '%064x' % i)\n"
            f"    open(name + '.sqfs', 'wb').write(bad[: {size} * (i % 3) // 2])\n"
            f"    open(name + '.partial.%d' % i, 'wb').write(bad[:4096])\n"
            f"os.mkdir(os.path.join({str(staged)!r}, {digest!r} + '.sqfs'), 0o700)\n")
    _as(shim.user, code)
    r = _marker(shim, image, _env(user_dir))
    assert "Traceback" not in r.stderr, r.stderr
    # the directory in its place: one line saying what to remove (nothing shim made: not removed)
    assert r.returncode == ExitCode.HOST and r.stderr.count("\n") == 1, r.stderr
    assert f"{staged / digest}.sqfs is a directory: the staged copy cannot be put there" in r.stderr
    assert not [p for p in staged.iterdir() if re.fullmatch(r"[0-9a-f]{32}\.partial\.\d+", p.name)]  # its own copy's
    os.rmdir(staged / f"{digest}.sqfs")
    r = _marker(shim, image, _env(user_dir))
    assert (r.returncode, r.stdout) == (0, "old\n") and len(STAGED.findall(r.stderr)) == 1, r.stderr
    listed = shim.run(["cache", "list", "--json"], env=_env(user_dir))
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    copy = staged / f"{digest}.sqfs"
    assert copy.is_file() and hashlib.sha256(copy.read_bytes()).hexdigest() == digest


def test_an_image_shorter_than_its_partition_stages_nothing(shim, user_dir, images):
    """A SIF cut short (its descriptor says more bytes than the file holds: a copy still being
    written to the shared file system): one line, nothing staged, no leftover."""
    image, _bad = images
    cut = user_dir / "cut.sif"
    cut.write_bytes(image.read_bytes()[:-100_000])
    cut.chmod(0o644)
    r = _marker(shim, cut, _env(user_dir))
    assert r.returncode == ExitCode.IMAGE and r.stderr.count("\n") == 1 and "cut short" in r.stderr, r.stderr
    assert not STAGED.search(r.stderr)
    assert _copies(user_dir) == [] and not list(_staged(user_dir).glob("*.partial.*"))
