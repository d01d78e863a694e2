"""Real Debian root filesystems for the tests and benchmarks, built with mmdebstrap and cached.

A `Recipe` names what goes into an image (suite, variant, extra packages, customize hooks); its
`key` is a hash of the recipe, so a changed recipe gets a fresh cache entry and an unchanged one
is reused across runs. Cache layout (root: env SHIM_TEST_CACHE, default /var/cache/shim-test):

    CACHE/<name>-<key>/rootfs/        the extracted root filesystem (world-readable, no dev/ nodes)
    CACHE/<name>-<key>/image.sqfs     mksquashfs of rootfs (build_sif / build_squashfs)
    CACHE/<name>-<key>/recipe.json    the canonical recipe, the mmdebstrap command, build time
    CACHE/<name>-<key>/build.log      mmdebstrap's log of the last build attempt
    CACHE/<name>-<key>/.*.lock        flock files serialising concurrent builders

Each artifact is built into a hidden temporary path next to its final name and renamed into
place, under an exclusive fcntl lock, so concurrent test processes build it once and nobody ever
sees a half-built tree; its presence is the "done" marker. To rebuild, delete the directory (or
bump IMAGES_VERSION when the build procedure itself changes: it is part of every key).

Building needs root (mmdebstrap's root mode; tar extraction keeps ownership) and network access
to a Debian mirror. The mirror: env SHIM_DEBIAN_MIRROR if set, else the host's own apt sources for
the recipe's suite (and its -updates/-security), else mmdebstrap's default (deb.debian.org).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

# Bump when the build procedure (mmdebstrap options, post-processing) changes: invalidates every key.
IMAGES_VERSION = 1

DEFAULT_CACHE = Path("/var/cache/shim-test")
DATA = Path(__file__).resolve().parent / "data"

# Keep images small: no recommends, no docs/manpages/translations.
MMDEBSTRAP_OPTS: tuple[str, ...] = (
    "--aptopt=APT::Install-Recommends \"false\"",
    "--aptopt=APT::Install-Suggests \"false\"",
    "--aptopt=Acquire::Languages \"none\"",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
)

BUILD_TIMEOUT = 3600.0

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class Recipe:
    """What goes into a test image. `customize` entries are shell snippets passed to mmdebstrap's
    --customize-hook (run with `sh -c`, the rootfs path in "$1"; use `chroot "$1" CMD` to run
    something inside it)."""

    name: str
    suite: str = "bookworm"
    packages: tuple[str, ...] = ()
    variant: str = "apt"
    customize: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"recipe name {self.name!r}: use letters, digits and ._+- only")
        for field in ("packages", "customize"):
            value = getattr(self, field)
            if isinstance(value, str):
                raise TypeError(f"Recipe.{field} must be a sequence of strings, not a string")
            object.__setattr__(self, field, tuple(value))

    def canonical(self) -> str:
        """Canonical JSON: sorted keys, package set sorted (order is irrelevant to apt),
        customize hooks in order (it matters), plus IMAGES_VERSION."""
        doc = asdict(self)
        doc["packages"] = sorted(set(self.packages))
        doc["customize"] = list(self.customize)
        doc["images_version"] = IMAGES_VERSION
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @property
    def key(self) -> str:
        """Short hex digest of `canonical()`: stable across runs and machines, pure."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

    @property
    def slug(self) -> str:
        return f"{self.name}-{self.key}"


# ---------------------------------------------------------------------------------------------
# Predefined recipes

# The marker line makes the image's /etc/os-release differ from a Debian 12 host's own.
DEBIAN_BASE = Recipe(name="debian-base", suite="bookworm", variant="minbase",
                     customize=('echo "SHIM_TEST_IMAGE=debian-base" >> "$1/etc/os-release"',))


def _mpi_hooks(mpicc: str, build_packages: Sequence[str], run_env: str = "") -> tuple[str, ...]:
    """Hooks that put tests/data/mpi_hello.c at /opt/app/hello.c and tests/data/mpi_pingpong.c at
    /opt/app/pingpong.c, install the compiler packages, compile /opt/app/hello and /opt/app/pingpong
    with the image's own mpicc, smoke-run hello (singleton; pingpong needs 2 ranks), then purge the
    compiler packages again. The source texts are embedded, so editing either changes the key."""
    sources: dict[str, str] = {}
    for name in ("mpi_hello.c", "mpi_pingpong.c"):
        src = (DATA / name).read_text()
        if not src.endswith("\n"):
            src += "\n"
        assert "\nSHIM_EOF\n" not in src
        sources[name] = src
    apt = 'chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get -y -q'
    pkgs = " ".join(build_packages)
    return (
        f"mkdir -p \"$1/opt/app\" && cat > \"$1/opt/app/hello.c\" <<'SHIM_EOF'\n{sources['mpi_hello.c']}SHIM_EOF",
        f"cat > \"$1/opt/app/pingpong.c\" <<'SHIM_EOF'\n{sources['mpi_pingpong.c']}SHIM_EOF",
        f"{apt} install --no-install-recommends {pkgs}",
        f'chroot "$1" {mpicc} -O2 -o /opt/app/hello /opt/app/hello.c',
        f'chroot "$1" {mpicc} -O2 -o /opt/app/pingpong /opt/app/pingpong.c',
        f'chroot "$1" env {run_env} /opt/app/hello' if run_env else 'chroot "$1" /opt/app/hello',
        f"{apt} purge --autoremove {pkgs}",
        'chroot "$1" sh -c \'! ldd /opt/app/hello /opt/app/pingpong | grep "not found"\'',
        'chmod 0755 "$1/opt/app/hello" "$1/opt/app/pingpong"',
    )


# MPICH 4.0 (libmpich.so.12) with its hydra launcher (mpich: mpiexec), /opt/app/hello built with
# mpicc.mpich; libmpich-dev (gcc, g++, gfortran...) is only there while compiling.
DEBIAN_MPICH = Recipe(
    name="debian-mpich",
    suite="bookworm",
    variant="apt",
    packages=("libmpich12", "mpich"),
    customize=_mpi_hooks("mpicc.mpich", ("libmpich-dev", "gcc", "libc6-dev")),
)

# Open MPI 4.1 (libopenmpi3: libmpi.so.40) with openmpi-bin (mpirun), same program.
DEBIAN_OPENMPI = Recipe(
    name="debian-openmpi",
    suite="bookworm",
    variant="apt",
    packages=("libopenmpi3", "openmpi-bin"),
    customize=_mpi_hooks("mpicc.openmpi", ("libopenmpi-dev", "gcc", "libc6-dev"),
                         run_env="OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"),
)

# An older userland: glibc 2.31 with MPICH 3.4 (libmpich.so.12), so a host MPICH built against
# glibc >= 2.34 (Debian 12's own) must be refused although its ABI matches.
DEBIAN_BULLSEYE = Recipe(
    name="debian-bullseye",
    suite="bullseye",
    variant="apt",
    packages=("libmpich12",),
    customize=_mpi_hooks("mpicc.mpich", ("libmpich-dev", "gcc", "libc6-dev")),
)

# A scientific-Python userland (~1 GB unpacked): what benchmarks/bench_io.py measures an app reading
# (an import of numpy/scipy/pandas opens and maps thousands of files; tar reads all of /usr).
DEBIAN_SCIPY = Recipe(
    name="debian-scipy",
    suite="bookworm",
    variant="apt",
    packages=("python3-numpy", "python3-scipy", "python3-pandas"),
)

# Python with numpy, scipy and mpi4py over the image's MPICH 4.0 (libmpich.so.12, so the site's MPICH
# can be injected as for /opt/app/hello): an app that maps ~300 objects, most through Python's
# dlopen (benchmarks/bench_audit.py, tests/test_audit_slurm.py). Debian's python3-mpi4py is built
# for Open MPI, so mpi4py is built here from PyPI's source release with mpicc.mpich (fetched on the
# host by its pip: the chroot has no certificates of the host's); then what only the build needed is
# purged (not gcc nor python3-dev: python3-scipy depends on them through python3-pythran).
MPI4PY_VERSION = "3.1.6"
_MPI4PY_BUILD = "libmpich-dev gcc libc6-dev python3-dev python3-pip python3-setuptools python3-wheel"
_MPI4PY_PURGE = "libmpich-dev python3-pip python3-wheel"
_APT = 'chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get -y -q'
DEBIAN_MPI4PY = Recipe(
    name="debian-mpi4py",
    suite="bookworm",
    variant="apt",
    packages=("python3-numpy", "python3-scipy", "libmpich12"),
    customize=(
        f'python3 -m pip download -q --no-deps --no-binary=:all: -d "$1/tmp/mpi4py" "mpi4py=={MPI4PY_VERSION}"',
        f"{_APT} install --no-install-recommends {_MPI4PY_BUILD}",
        (f'chroot "$1" env MPICC=mpicc.mpich pip3 install -q --no-index --no-deps --no-build-isolation '
         f'--break-system-packages /tmp/mpi4py/mpi4py-{MPI4PY_VERSION}.tar.gz'),
        f"{_APT} purge --autoremove {_MPI4PY_PURGE}",
        'rm -rf "$1/tmp/mpi4py" "$1/root/.cache"',
        'chroot "$1" sh -c \'! ldd /usr/local/lib/python3*/dist-packages/mpi4py/MPI*.so | grep "not found"\'',
        'chroot "$1" python3 -c "import numpy, scipy.linalg; from mpi4py import MPI; print(MPI.Get_library_version())"',
    ),
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (DEBIAN_BASE, DEBIAN_MPICH, DEBIAN_OPENMPI, DEBIAN_BULLSEYE,
                                                  DEBIAN_SCIPY, DEBIAN_MPI4PY)}


# ---------------------------------------------------------------------------------------------
# Cache plumbing


def cache_root() -> Path:
    return Path(os.environ.get("SHIM_TEST_CACHE") or DEFAULT_CACHE)


def image_dir(recipe: Recipe) -> Path:
    """CACHE/<name>-<key> (not created)."""
    return cache_root() / recipe.slug


def _mkdir_world(path: Path) -> None:
    """mkdir -p, making every directory this creates 0755 (umask notwithstanding)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
            d.chmod(0o755)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove(path: Path, ignore_errors: bool = False) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=ignore_errors)
    else:
        with contextlib.suppress(*((OSError,) if ignore_errors else ())):
            path.unlink(missing_ok=True)


def cached(dest: Path, make: Callable[[Path], None]) -> Path:
    """Return `dest`, creating it at most once across processes: under an flock on
    `.<name>.lock` next to it, `make(tmp)` creates `tmp` (a file or directory beside `dest`),
    which is then renamed to `dest`. Leftovers of crashed builders are removed first."""
    if dest.exists():
        return dest
    _mkdir_world(dest.parent)
    with _locked(dest.parent / f".{dest.name}.lock"):
        if dest.exists():  # someone else built it while we waited
            return dest
        for stale in dest.parent.glob(f".{dest.name}.tmp.*"):
            _remove(stale, ignore_errors=True)
        tmp = dest.parent / f".{dest.name}.tmp.{os.getpid()}"
        try:
            make(tmp)
            os.rename(tmp, dest)
        except BaseException:
            if tmp.exists() or tmp.is_symlink():
                _remove(tmp, ignore_errors=True)
            raise
    return dest


# ---------------------------------------------------------------------------------------------
# Mirrors


def _apt_index_targets() -> list[dict[str, str]]:
    """The host's configured apt Packages indexes (`apt-get indextargets`), as dicts."""
    try:
        out = subprocess.run(["apt-get", "indextargets", "Created-By: Packages"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    targets = []
    for para in out.split("\n\n"):
        fields = {}
        for line in para.splitlines():
            k, sep, v = line.partition(": ")
            if sep:
                fields[k] = v.strip()
        if fields:
            targets.append(fields)
    return targets


def host_sources(suite: str) -> list[str]:
    """One-line `deb URI SUITE main` entries for `suite` (and SUITE-updates, SUITE-security) taken
    from the host's apt configuration, so whatever mirror or proxy the host uses is reused. If
    the host has no entry for that suite, its Debian archive URI is used with the new suite name.
    [] when the host has no usable Debian source."""
    wanted = (suite, f"{suite}-updates", f"{suite}-security", f"{suite}/updates")
    lines: list[str] = []
    archive_uris: list[str] = []
    for t in _apt_index_targets():
        if t.get("Target-Of", "deb") != "deb" or t.get("Component") != "main":
            continue
        if t.get("Origin", "Debian") != "Debian":
            continue
        uri = t.get("Repo-URI", "").rstrip("/")
        if not uri:
            continue
        names = [n for n in (t.get("Release"), t.get("Codename")) if n]
        match = next((n for n in wanted if n in names), None)
        if match is not None:
            line = f"deb {uri} {match} main"
            if line not in lines:
                lines.append(line)
        release = t.get("Release", "")
        is_archive = t.get("Label", "Debian") == "Debian" and not re.search(
            r"(-security|/updates|-updates|-backports)$", release)
        if is_archive and uri not in archive_uris:
            archive_uris.append(uri)
    if any(line.split()[2] == suite for line in lines):
        return lines
    if archive_uris:
        return [f"deb {archive_uris[0]} {suite} main"]
    return []


def mirror_args(suite: str) -> list[str]:
    """The MIRROR arguments for mmdebstrap. SHIM_DEBIAN_MIRROR may be: one or more mirror URLs
    (whitespace-separated; each becomes `deb URL SUITE main`), one-line `deb ...` entries
    (newline-separated), or the path of a sources.list / deb822 .sources file."""
    env = os.environ.get("SHIM_DEBIAN_MIRROR", "").strip()
    if env:
        if env.startswith(("deb ", "deb-src ")):
            return [line.strip() for line in env.splitlines() if line.strip()]
        if os.path.isfile(env):
            return [env]
        return env.split()
    return host_sources(suite)


# ---------------------------------------------------------------------------------------------
# Builders


def mmdebstrap_command(recipe: Recipe, target: str = "-") -> list[str]:
    cmd = ["mmdebstrap", f"--variant={recipe.variant}", "--format=tar", "--skip=output/dev", *MMDEBSTRAP_OPTS]
    if recipe.packages:
        cmd.append("--include=" + ",".join(sorted(set(recipe.packages))))
    cmd += [f"--customize-hook={hook}" for hook in recipe.customize]
    cmd += [recipe.suite, target, *mirror_args(recipe.suite)]
    return cmd


def _make_world_readable(root: Path) -> None:
    """a+r on everything, a+x on directories and on files executable by their owner (so
    /etc/shadow, /root, /var/cache/ldconfig... are readable by the non-root test user)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            want = mode | 0o444
            if stat.S_ISDIR(st.st_mode) or mode & 0o100:
                want |= 0o111
            if want != mode:
                os.chmod(p, want)


def _clear_dev(root: Path) -> None:
    """Leave an empty dev/ (0755): runtimes mount their own; device nodes stay out of the cache."""
    dev = root / "dev"
    if dev.is_symlink() or (dev.exists() and not dev.is_dir()):
        dev.unlink()
    dev.mkdir(exist_ok=True)
    for entry in dev.iterdir():
        _remove(entry)
    dev.chmod(0o755)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def build_rootfs(recipe: Recipe, timeout: float = BUILD_TIMEOUT) -> Path:
    """CACHE/<name>-<key>/rootfs, built with `mmdebstrap ... SUITE - | tar -x` if not cached."""
    d = image_dir(recipe)

    def make(tmp: Path) -> None:
        tmp.mkdir(mode=0o755)
        log = d / "build.log"
        cmd = mmdebstrap_command(recipe)
        t0 = time.monotonic()
        with open(log, "w") as logf:
            logf.write("$ " + " ".join(cmd) + "\n")
            logf.flush()
            env = {**os.environ, "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
            mm = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL, env=env)
            assert mm.stdout is not None
            tar = subprocess.Popen(["tar", "-x", "-p", "--numeric-owner", "--same-owner", "-f", "-",
                                    "-C", str(tmp), "--exclude=./dev/*"],
                                   stdin=mm.stdout, stderr=logf)
            mm.stdout.close()
            try:
                tar_rc = tar.wait(timeout=timeout)
                mm_rc = mm.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"building {recipe.slug}: timed out after {timeout:.0f}s; log: {log}") from None
            finally:  # on timeout or interrupt, don't leave a tar writing into what we are about to delete
                for proc in (tar, mm):
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
        log.chmod(0o644)
        if mm_rc != 0 or tar_rc != 0:
            raise RuntimeError(f"building {recipe.slug}: mmdebstrap exit {mm_rc}, tar exit {tar_rc}; "
                               f"log {log}:\n{_tail(log)}")
        if not (tmp / "etc" / "os-release").exists():
            raise RuntimeError(f"building {recipe.slug}: no etc/os-release in the result; log {log}")
        _clear_dev(tmp)
        _make_world_readable(tmp)
        tmp.chmod(0o755)
        meta = {"recipe": json.loads(recipe.canonical()), "key": recipe.key, "command": cmd,
                "build_seconds": round(time.monotonic() - t0, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (d / "recipe.json").write_text(json.dumps(meta, indent=2) + "\n")
        (d / "recipe.json").chmod(0o644)

    return cached(d / "rootfs", make)


def build_squashfs(recipe: Recipe) -> Path:
    """CACHE/<name>-<key>/image.sqfs: mksquashfs of build_rootfs(recipe) (zstd, all files root-owned)."""
    rootfs = build_rootfs(recipe)

    def make(tmp: Path) -> None:
        r = subprocess.run(["mksquashfs", str(rootfs), str(tmp), "-comp", "zstd", "-noappend", "-no-xattrs",
                            "-all-root", "-no-progress", "-quiet"],
                           check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"mksquashfs {rootfs} failed ({r.returncode}): {r.stderr or r.stdout}")
        tmp.chmod(0o644)

    return cached(image_dir(recipe) / "image.sqfs", make)


def _writer_key() -> str:
    """Hash of shim's SIF build code: a changed writer must not reuse an old cached SIF."""
    repo = Path(__file__).resolve().parents[1] / "shim" / "image"
    h = hashlib.sha256()
    for name in ("build.py", "sif_write.py", "arch.py"):
        h.update((repo / name).read_bytes())
    return h.hexdigest()[:12]


def build_sif(recipe: Recipe) -> Path:
    """CACHE/<name>-<key>/image-<writer>.sif: `shimrun build` of build_rootfs(recipe)."""
    rootfs = build_rootfs(recipe)
    shimrun = os.environ.get("SHIMRUN") or shutil.which("shimrun") or "/opt/shim/venv/bin/shimrun"

    def make(tmp: Path) -> None:
        r = subprocess.run([shimrun, "build", str(tmp), str(rootfs)], check=False, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"shimrun build {rootfs} failed ({r.returncode}): {r.stderr or r.stdout}")
        tmp.chmod(0o644)

    return cached(image_dir(recipe) / f"image-{_writer_key()}.sif", make)


if __name__ == "__main__":  # python3 tests/images.py [NAME...]: build (or reuse) and time recipes
    import sys

    for name in sys.argv[1:] or list(RECIPES):
        t = time.monotonic()
        path = build_rootfs(RECIPES[name])
        t_rootfs = time.monotonic() - t
        sqfs = build_sif(RECIPES[name])
        print(f"{name}: {path} ({t_rootfs:.1f}s), {sqfs} ({time.monotonic() - t:.1f}s total)", flush=True)
