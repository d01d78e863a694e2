"""Binds nested in other binds, as Apptainer makes them (README, "Binds inside binds"): a bind
whose destination lies in a writable bind the user asked for (--home, --bind, --mount) gets its
mount point made in that bind's host directory, which stays writable and keeps the (empty) mount
point after the run; inside a read-only bind, or the image, the mount point is made in an underlay
and the host directory is left alone; inside --contain's in-memory home it is made there. Real
launches as the ordinary user, checking what is writable in the container and what the host
directories hold afterwards; and symlinks planted at the nested destination's name never carry a
mount point or a mount out of the container's root."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from conftest import Runner, User, as_user, compat_bin_dir

from shim.errors import ExitCode

# A line per probe: `rw PATH` where the container could create or write it, `ro PATH` where not.
PROBE = 'for p in "$@"; do if (: >> "$p") 2>/dev/null; then echo "rw $p"; else echo "ro $p"; fi; done'


def probe(paths: list[str]) -> list[str]:
    """Arguments to run the writability probe on `paths` in the container with the image's sh."""
    return ["/bin/sh", "-c", PROBE, "probe", *paths]


def owned(user: User, *paths: Path) -> None:
    for p in paths:
        os.lchown(p, user.uid, user.gid)


def make_dir(user: User, path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True)
    for name, text in (files or {}).items():
        (path / name).write_text(text)
        owned(user, path / name)
    owned(user, path)
    return path


def make_file(user: User, path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    owned(user, path)
    return path


def listing(d: Path) -> dict[str, str]:
    """Everything under d: relative path -> 'dir', 'link:TARGET' or the file's text."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        out[rel] = (f"link:{os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir() else p.read_text())
    return out


def ok(r: subprocess.CompletedProcess) -> list[str]:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout.splitlines()


@pytest.fixture(scope="module")
def apptainer(user: User) -> Runner:
    return Runner(user, str(compat_bin_dir() / "apptainer"))


def test_file_binds_inside_writable_home(shim, busybox_sif, user_dir, user):
    home = make_dir(user, user_dir / "H", {"old": "old\n"})
    ro_src = make_file(user, user_dir / "in.txt", "input\n")
    rw_src = make_file(user, user_dir / "out.txt", "before\n")
    r = shim.run(["exec", "--home", f"{home}:/kx", "--mount", f"type=bind,source={ro_src},target=/kx/f.txt,readonly",
                  "--bind", f"{rw_src}:/kx/g.txt", "--pwd", "/kx", busybox_sif, "/bin/sh", "-c",
                  f'cat f.txt; echo after > g.txt; touch new; {PROBE}', "probe", "/kx/old", "/kx/f.txt"])
    assert ok(r) == ["input", "rw /kx/old", "ro /kx/f.txt"]
    # the outer bind stayed writable; the mount points are left in it, empty, as Apptainer leaves them
    assert listing(home) == {"f.txt": "", "g.txt": "", "new": "", "old": "old\n"}
    assert ro_src.read_text() == "input\n" and rw_src.read_text() == "after\n"


def test_directory_binds_inside_writable_home(shim, busybox_sif, user_dir, user):
    home = make_dir(user, user_dir / "H")
    data = make_dir(user, user_dir / "data", {"d.txt": "data\n"})
    out = make_dir(user, user_dir / "out")
    r = shim.run(["--home", f"{home}:/kx", "--bind", f"{data}:/kx/deep/in:ro", "--bind", f"{out}:/kx/out",
                  busybox_sif, *probe(["/kx/x", "/kx/deep/y", "/kx/deep/in/z", "/kx/out/o"])])
    assert ok(r) == ["rw /kx/x", "rw /kx/deep/y", "ro /kx/deep/in/z", "rw /kx/out/o"]
    r = shim.run(["--home", f"{home}:/kx", "--bind", f"{data}:/kx/deep/in:ro", busybox_sif, "/bin/busybox", "cat",
                  "/kx/deep/in/d.txt"])
    assert ok(r) == ["data"]
    assert listing(home) == {"deep": "dir", "deep/in": "dir", "deep/y": "", "out": "dir", "x": ""}
    assert listing(data) == {"d.txt": "data\n"} and listing(out) == {"o": ""}


def test_binds_inside_a_read_only_bind(shim, busybox_sif, user_dir, user):
    """The outer directory is the user's and writable on the host, but bound read-only: shim makes
    nothing in it (an underlay takes the mount points) and it stays read-only."""
    outer = make_dir(user, user_dir / "R", {"r.txt": "outer\n"})
    inner = make_file(user, user_dir / "g.txt", "inner\n")
    sub = make_dir(user, user_dir / "sub", {"s.txt": "sub\n"})
    r = shim.run(["--bind", f"{outer}:/r:ro", "--bind", f"{inner}:/r/g.txt", "--bind", f"{sub}:/r/a/b",
                  busybox_sif, "/bin/sh", "-c", f"cat /r/r.txt /r/g.txt /r/a/b/s.txt; {PROBE}", "probe",
                  "/r/new", "/r/r.txt", "/r/g.txt", "/r/a/b/s.txt"])
    assert ok(r) == ["outer", "inner", "sub", "ro /r/new", "ro /r/r.txt", "rw /r/g.txt", "rw /r/a/b/s.txt"]
    assert listing(outer) == {"r.txt": "outer\n"}  # no mount point was made on the host


def test_binds_inside_contains_home(shim, busybox_sif, user_dir, user):
    """--contain's home is an in-memory tmpfs of the launch: the mount points are made there, and
    the user's real home on the host is not touched."""
    src = make_file(user, user_dir / "f.txt", "file\n")
    d = make_dir(user, user_dir / "d", {"e.txt": "dir\n"})
    h = user.home
    r = shim.run(["--contain", "--bind", f"{src}:{h}/in/f.txt:ro", "--bind", f"{d}:{h}/work", busybox_sif,
                  "/bin/sh", "-c", f"cat {h}/in/f.txt {h}/work/e.txt; {PROBE}", "probe", f"{h}/new",
                  f"{h}/in/new", f"{h}/in/f.txt", f"{h}/work/w"])
    assert ok(r) == ["file", "dir", f"rw {h}/new", f"rw {h}/in/new", f"ro {h}/in/f.txt", f"rw {h}/work/w"]
    assert not any(os.path.lexists(f"{h}/{name}") for name in ("in", "new", "work"))  # the host's home
    assert listing(d) == {"e.txt": "dir\n", "w": ""}


@pytest.mark.parametrize("middle", ["rw", "ro"])
def test_three_levels_deep_given_innermost_first(shim, busybox_sif, user_dir, user, middle):
    """Given in any order, the binds are made outer-first; each level's mount point is made in the
    level above (on the host where that level is a writable bind, in an underlay where read-only)."""
    a = make_dir(user, user_dir / "A", {"a.txt": "A\n"})
    b = make_dir(user, user_dir / "B", {"b.txt": "B\n"})
    c = make_file(user, user_dir / "c.txt", "C\n")
    r = shim.run(["--bind", f"{c}:/a/b/c/d/e.txt", "--bind", f"{b}:/a/b/c:{middle}", "--bind", f"{a}:/a",
                  busybox_sif, "/bin/sh", "-c", f"cat /a/a.txt /a/b/c/b.txt /a/b/c/d/e.txt; {PROBE}", "probe",
                  "/a/x", "/a/b/y", "/a/b/c/z", "/a/b/c/d/e.txt"])
    assert ok(r) == ["A", "B", "C", "rw /a/x", "rw /a/b/y", f"{middle} /a/b/c/z", "rw /a/b/c/d/e.txt"]
    assert listing(a) == {"a.txt": "A\n", "b": "dir", "b/c": "dir", "b/y": "", "x": ""}
    if middle == "rw":
        assert listing(b) == {"b.txt": "B\n", "d": "dir", "d/e.txt": "", "z": ""}
    else:
        assert listing(b) == {"b.txt": "B\n"}
    assert c.read_text() == "C\n"


def test_cwltool_initial_workdir_through_apptainer(apptainer, busybox_sif, user_dir, user):
    """cwltool --singularity with an InitialWorkDirRequirement: the staged input bound read-only
    into the writable working directory, and the tool writes beside it (an index next to it)."""
    out = make_dir(user, user_dir / "out")
    staged = make_file(user, user_dir / "input.txt", "input\n")
    r = apptainer.run(["--quiet", "exec", "--contain", "--ipc", "--cleanenv", "--no-eval", "--pid", "--home",
                       f"{out}:/kx", f"--mount=type=bind,source={staged},target=/kx/input.txt,readonly",
                       "--pwd", "/kx", "--net", "--network", "none", busybox_sif, "/bin/sh", "-c",
                       "touch new && cat input.txt > input.txt.idx1 && ls"])
    assert ok(r) == ["input.txt", "input.txt.idx1", "new"]
    assert listing(out) == {"input.txt": "", "input.txt.idx1": "input\n", "new": ""}
    assert staged.read_text() == "input\n"


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_planted_file_symlink_to_an_absolute_path(shim, busybox_sif, user_dir, user):
    """home/f.txt -> /etc/shadow: resolved inside the container's root (the image's file gets the
    bind), never the host's /etc/shadow, which is neither covered nor touched."""
    home = make_dir(user, user_dir / "H")
    (home / "f.txt").symlink_to("/etc/shadow")
    owned(user, home / "f.txt")
    src = make_file(user, user_dir / "in.txt", "planted\n")
    before = (_sha("/etc/shadow"), os.stat("/etc/shadow").st_mtime_ns)
    r = shim.run(["--home", f"{home}:/kx", "--bind", f"{src}:/kx/f.txt:ro", busybox_sif, "/bin/busybox", "cat",
                  "/etc/shadow"])
    assert ok(r) == ["planted"]  # the container's own /etc/shadow took the bind
    assert (_sha("/etc/shadow"), os.stat("/etc/shadow").st_mtime_ns) == before
    assert listing(home) == {"f.txt": "link:/etc/shadow"}


@pytest.mark.parametrize("target", ["/shim-nest-escape/f.txt", "../../../../../../../tmp/shim-nest-escape.txt"])
def test_planted_dangling_symlink_is_refused(shim, busybox_sif, user_dir, user, target):
    """A symlink at the destination's name pointing at nothing (absolute, or ../.. out of the bound
    directory on the host): one line, exit 71, and nothing is created anywhere."""
    home = make_dir(user, user_dir / "H")
    (home / "f.txt").symlink_to(target)
    owned(user, home / "f.txt")
    src = make_file(user, user_dir / "in.txt", "planted\n")
    r = shim.run(["--home", f"{home}:/kx", "--bind", f"{src}:/kx/f.txt", busybox_sif, "/bin/busybox", "true"])
    assert r.returncode == ExitCode.LAUNCH, (r.stdout, r.stderr)
    assert "dangling symlink" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    for host in ("/shim-nest-escape", "/tmp/shim-nest-escape.txt", home.parent / "tmp"):
        assert not os.path.lexists(host)
    assert listing(home) == {"f.txt": f"link:{target}"}


@pytest.mark.parametrize("target", ["/", "../.."])
def test_planted_directory_symlink_lands_inside_the_root(shim, busybox_sif, user_dir, user, target):
    """home/d -> / (or ../.., the host's parent of the bound directory): a bind to /kx/d/NEW lands at
    /NEW in the container's root (an underlay over the image's /), never in a host directory."""
    home = make_dir(user, user_dir / "H")
    (home / "d").symlink_to(target)
    owned(user, home / "d")
    src = make_dir(user, user_dir / "src", {"s.txt": "src\n"})
    around = sorted(os.listdir(user_dir.parent))  # where ../.. leads on the host
    r = shim.run(["--home", f"{home}:/kx", "--bind", f"{src}:/kx/d/shim-nest-new", busybox_sif, "/bin/sh", "-c",
                  f"cat /shim-nest-new/s.txt; {PROBE}", "probe", "/kx/x"])
    assert ok(r) == ["src", "rw /kx/x"]
    assert not os.path.lexists("/shim-nest-new")
    assert sorted(os.listdir(user_dir.parent)) == around
    assert listing(home) == {"d": f"link:{target}", "x": ""}
    assert listing(src) == {"s.txt": "src\n"}


def test_symlink_planted_by_another_user(shim, busybox_sif, user_dir, user, other_user):
    """A shared writable directory bound as home: someone else plants f.txt -> their host file.
    The bind follows it inside the container's root only (here the host's /var/tmp is bound in, so
    the container's view of that file is covered, in the launch's own mount namespace); the host
    file is neither covered nor touched, and nothing is made in the shared directory."""
    home = make_dir(user, user_dir / "H")
    home.chmod(0o1777)
    victim = make_file(other_user, user_dir / "victim.txt", "victim\n")
    planted = as_user(other_user, ["ln", "-s", str(victim), str(home / "f.txt")])
    assert planted.returncode == 0, planted.stderr
    src = make_file(user, user_dir / "in.txt", "planted\n")
    r = shim.run(["--home", f"{home}:/kx", "--bind", f"{src}:/kx/f.txt", busybox_sif, "/bin/busybox", "cat",
                  str(victim)])
    assert ok(r) == ["planted"]
    assert victim.read_text() == "victim\n" and listing(home) == {"f.txt": f"link:{victim}"}
    assert as_user(other_user, ["cat", str(victim)]).stdout == "victim\n"
