"""The `build` phase of scripts/gpu_launch_check.sh: a carry directory that runs shim on a GPU
node whose only Python is a bare CPython 3.12 (no packages, no headers, no network).

Run by CPython 3.12 itself (this machine: pyenv's 3.12.1, which has the headers), from the repo
root. The carry holds:

- site/: shim as installed (its conf as shim/conf, shim/_install.py naming ROOT/etc/site as the
  system configuration directory), its C core `shim._core` built here for cp312 (cffi API mode,
  compiled directly from the C cffi emits, so no setuptools is needed), the native front-end
  shim/libexec/shimrun compiled to start the planner as ROOT/bin/python3 (a wrapper the node phase
  writes around the node's python3.12), shim_audit.so; and the packages shim imports while
  planning a launch, unpacked from their cp312 manylinux wheels: cffi (its _cffi_backend),
  pyelftools, PyYAML, psutil, nvidia-ml-py. Not carried: cryptography (imported only under a
  signature policy), zstandard (OCI pulls).
- image/: the directory image (scripts/gpu_image.py): a CUDA runtime and /opt/app/cudacheck.
- ROOT: where the node phase installs the carry (the front-end's planner path is compiled in).
- BUILD.txt: what was built, the glibc symbol versions each native file needs, the sizes.

`bare-python DEST` instead copies this machine's CPython 3.12 without site-packages (and with its
RUNPATH made relative) to DEST, world-readable: the stand-in for a GPU node's bare python3.12 when
the node phase runs here (pyenv's copy lives under /root, which an ordinary user cannot enter)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "scripts"))

from gpu_image import build_image  # noqa: E402

# The packages shim imports while planning and launching, as pip names them, and the top-level
# names their wheels install (what is copied into site/). pycparser is needed only to build.
RUNTIME = {"cffi": ("cffi", "_cffi_backend"), "pyelftools": ("elftools",), "pyyaml": ("yaml", "_yaml"),
           "psutil": ("psutil",), "nvidia-ml-py": ("pynvml",)}
BUILD_ONLY = {"pycparser": ("pycparser",)}
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12"
TAG = "cp312"
CC_FLAGS = ["-O2", "-Wall", "-Wextra", "-std=gnu11", "-Icsrc"]
GLIBC_FLOOR_NOTE = (2, 34)   # RHEL 9; older nodes (RHEL 8: 2.28) cannot run what is built here


def log(text: str) -> None:
    print(f"gpu_bundle: {text}", flush=True)


def _wheel_glob(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower() + "-*.whl"


def wheels(cache: Path) -> dict[str, Path]:
    """Each package's cp312 manylinux wheel, from `cache` or downloaded there once (pip)."""
    cache.mkdir(parents=True, exist_ok=True)
    names = [*RUNTIME, *BUILD_ONLY, CUDA_RUNTIME]
    missing = [n for n in names if not _find(cache, n)]
    if missing:
        log(f"pip download {' '.join(missing)} (cp312 manylinux wheels) into {cache}")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        "--only-binary=:all:", "--no-deps", "--python-version", "3.12", "--implementation", "cp",
                        "--abi", TAG, "--abi", "abi3", "--abi", "none", "--platform", "manylinux2014_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
                        "-d", str(cache), *missing], check=True)
    found = {n: _find(cache, n) for n in names}
    lost = [n for n, p in found.items() if p is None]
    if lost:
        raise SystemExit(f"gpu_bundle: no cp312 manylinux wheel of {', '.join(lost)} in {cache}")
    return {n: p for n, p in found.items() if p is not None}


def _find(cache: Path, name: str) -> Path | None:
    hits = sorted(p for p in cache.glob(_wheel_glob(name))
                  if "-py3-none-" in p.name or f"-{TAG}-{TAG}-" in p.name or "-abi3-" in p.name)
    return hits[-1] if hits else None


def unpack(wheel: Path, tops: tuple[str, ...], dest: Path) -> None:
    """The wheel's top-level packages/modules named `tops` (the code, not its metadata) into dest."""
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            top = member.split("/")[0]
            stem = top.split(".")[0]
            if stem in tops and not top.endswith((".dist-info", ".data")):
                z.extract(member, dest)


def copy_shim(site: Path, root: str) -> None:
    """shim as setup.py installs it: the package, conf/ as shim/conf, _install.py."""
    skip = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    shutil.copytree(REPO / "shim", site / "shim", ignore=skip)
    shutil.copytree(REPO / "conf", site / "shim" / "conf", ignore=skip)
    (site / "shim" / "_install.py").write_text(
        f'"""Written by scripts/gpu_bundle.py."""\n\nSYSTEM_CONF_DIR = {root + "/etc/site"!r}\n')


def build_core(site: Path, work: Path, deps: Path) -> Path:
    """shim._core for this Python (cp312): the C module cffi emits from csrc/build_core.py's
    definition, compiled with the C core in one shared object."""
    sys.path.insert(0, str(deps))
    import importlib.util

    spec = importlib.util.spec_from_file_location("shim_build_core", REPO / "csrc" / "build_core.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # also writes csrc/gen (the constants shared with Python)
    c_file = work / "_core.c"
    module.ffibuilder.emit_c_code(str(c_file))
    suffix = sysconfig.get_config_var("EXT_SUFFIX")   # .cpython-312-x86_64-linux-gnu.so
    out = site / "shim" / f"_core{suffix}"
    sources = sorted(str(p.relative_to(REPO)) for p in (REPO / "csrc").glob("*.c") if p.name != "frontend.c")
    _cc([*CC_FLAGS, "-fPIC", "-shared", f"-I{sysconfig.get_paths()['include']}", "-o", str(out),
         str(c_file), *sources])
    return out


def build_native(site: Path, root: str) -> list[Path]:
    """The front-end (its planner: ROOT/bin/python3) and the audit library, as setup.py builds them."""
    libexec = site / "shim" / "libexec"
    libexec.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p.relative_to(REPO)) for p in (REPO / "csrc").glob("*.c"))
    front = libexec / "shimrun"
    _cc([*CC_FLAGS, f'-DSHIM_PYTHON="{root}/bin/python3"', "-o", str(front), *sources])
    audit = libexec / "shim_audit.so"
    _cc(["-O2", "-Wall", "-Wextra", "-std=gnu11", "-nostdlib", "-ffreestanding", "-fPIC", "-shared",
         "-fno-stack-protector", "-fno-builtin", "-Wl,-z,noexecstack", "-Wl,--hash-style=both",
         "-o", str(audit), "csrc/audit/shim_audit.c"])
    return [front, audit]


def _cc(args: list[str]) -> None:
    subprocess.run([os.environ.get("CC", "cc"), *args], check=True, cwd=REPO)


def glibc_needs(path: Path) -> tuple[int, ...]:
    """The newest GLIBC_x.y symbol version `path` needs (() for none)."""
    out = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True, check=True).stdout
    found = {tuple(int(x) for x in m.group(1).split(".")) for m in re.finditer(r"\(GLIBC_([0-9.]+)\)", out)}
    return max(found) if found else ()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def report(carry: Path, native: list[Path], in_image: list[Path]) -> str:
    """BUILD.txt: the glibc the node needs (for what runs on the node's own libraries), the
    glibc the image's files need (they run on the image's copy of this machine's), the sizes."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    lines = [f"carry {carry.name}: built {when} on {os.uname().machine}, git {_git_head()}", "",
             "glibc symbol versions needed (objdump -T):"]
    newest: tuple[int, ...] = ()
    for path in native:
        need = glibc_needs(path)
        newest = max(newest, need)
        lines.append(f"  {path.relative_to(carry)}: GLIBC_{'.'.join(map(str, need)) or '-'}")
    verdict = "fine on glibc >= " + ".".join(map(str, newest))
    if newest > GLIBC_FLOOR_NOTE:
        verdict += (f" (newer than {'.'.join(map(str, GLIBC_FLOOR_NOTE))}: "
                    "older nodes need a build on an older distribution)")
    lines += [f"  => the node needs glibc >= {'.'.join(map(str, newest))}; {verdict}",
              f"in the image (run on its own glibc, {os.confstr('CS_GNU_LIBC_VERSION')}):"]
    lines += [f"  {p.relative_to(carry)}: GLIBC_{'.'.join(map(str, glibc_needs(p))) or '-'}" for p in in_image]
    lines.append("")
    total = _size(carry)
    lines.append(f"size: site {_size(carry / 'site') >> 10} KiB, image {_size(carry / 'image') >> 10} KiB, "
                 f"total {total / (1 << 20):.1f} MiB (the device tool carries at most 64 MiB)")
    if total > 64 << 20:
        raise SystemExit(f"gpu_bundle: the carry is {total >> 20} MiB, over the device tool's 64 MiB")
    (carry / "GLIBC_NEEDED").write_text(".".join(map(str, newest)) + "\n")
    return "\n".join(lines) + "\n"


def _git_head() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       check=False)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return (r.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def build(carry: Path, root: str, cache: Path) -> None:
    if sys.version_info[:2] != (3, 12):
        raise SystemExit(f"gpu_bundle: run by CPython 3.12 (this is {sys.version.split()[0]})")
    found = wheels(cache)
    if carry.exists():
        shutil.rmtree(carry)
    site, work = carry / "site", REPO / "build" / "gpu-carry"
    shutil.rmtree(work, ignore_errors=True)
    deps = work / "deps"
    for name, tops in RUNTIME.items():
        unpack(found[name], tops, site)
    for name, tops in {**BUILD_ONLY, "cffi": RUNTIME["cffi"]}.items():
        unpack(found[name], tops, deps)
    copy_shim(site, root)
    log("building shim._core for cp312 and the native front-end")
    native = [build_core(site, work, deps), *build_native(site, root)]
    packaged = {Path(p) for p in glob.glob(str(site / "*.so")) + glob.glob(str(site / "*" / "*.so"))}
    native += sorted(packaged - set(native))
    image = build_image(carry / "image", found[CUDA_RUNTIME], REPO / "scripts" / "gpu_cudacheck.c", work)
    (carry / "ROOT").write_text(root + "\n")
    in_image = [image / "opt" / "app" / "cudacheck", *image.glob("usr/local/cuda-*/lib64/libcudart.so.*.*")]
    text = report(carry, native, in_image)
    (carry / "BUILD.txt").write_text(text)
    print(text, end="")
    subprocess.run(["chmod", "-R", "a+rX", str(carry)], check=True)


def bare_python(dest: Path) -> None:
    """This CPython without site-packages, tests, IDLE, tkinter; its RUNPATH (an absolute path under
    the source prefix) made $ORIGIN/../lib in place, so that it runs from `dest` for anyone."""
    prefix = Path(sys.base_prefix)
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "bin").mkdir(parents=True)
    (dest / "lib").mkdir()
    skip = shutil.ignore_patterns("__pycache__", "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip",
                                  "config-*", "site-packages", "lib2to3")
    shutil.copytree(prefix / "lib" / ver, dest / "lib" / ver, ignore=skip)
    (dest / "lib" / ver / "site-packages").mkdir()
    for lib in prefix.glob("lib/libpython*.so.*"):   # the SONAME file, not the link-time name
        shutil.copy2(lib, dest / "lib" / lib.name, follow_symlinks=True)
    exe = Path(os.path.realpath(sys.executable))
    data = exe.read_bytes()
    old = f"{prefix}/lib".encode() + b"\0"
    new = b"$ORIGIN/../lib\0"
    if data.count(old) == 1 and len(new) <= len(old):
        data = data.replace(old, new + b"\0" * (len(old) - len(new)))
    (dest / "bin" / ver).write_bytes(data)
    (dest / "bin" / ver).chmod(0o755)
    subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)
    print(dest / "bin" / ver)


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["bare-python"] and len(args) == 2:
        bare_python(Path(args[1]))
    elif args[:1] == ["build"] and len(args) == 4:
        build(Path(args[1]).resolve(), args[2], Path(args[3]))
    else:
        raise SystemExit("usage: gpu_bundle.py build CARRY ROOT WHEEL_CACHE | bare-python DEST")


if __name__ == "__main__":
    main()
