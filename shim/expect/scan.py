"""scan_image: what a mounted image expects of the hardware, read cheaply.

Looked up by name (ld.so.cache, a few directories), never by parsing every file: the CUDA
runtime, NCCL, CUDA stubs and forward-compat libraries, ROCm, the RDMA stack (verbs and its
providers, rdmacm, UCX and its transport modules, libfabric), OpenMP runtimes; the environment
scripts (CUDA_VERSION, NVIDIA_REQUIRE_*), labels.json, and an explicit declaration
(shim.expect.requires). Only the app, when given, and its direct libraries are ELF-parsed, for
the x86-64 ISA level they need.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping, Sequence

from shim.elf.rootpath import RootPaths, find_program
from shim.errors import ShimError
from shim.expect.envscripts import read_image_env
from shim.expect.libs import LibFinder, version_of
from shim.expect.model import CompatLib, ImageExpectations, LibFound, Requirement, VerbsProvider
from shim.expect.requires import FILES, LABEL, parse_requires
from shim.knowledge.rdma import provider_of
from shim.model import Diagnostic
from shim.options import TRUE_WORDS

LABELS_FILE = "/.singularity.d/labels.json"
_MAX_SMALL_FILE = 1 << 20

_COMPAT_DIRS = ("/usr/local/cuda*/compat", "/usr/local/cuda*/compat/lib", "/usr/local/cuda*/compat/lib.real")
_STUBS = ("/usr/local/cuda*/lib64/stubs/libcuda.so", "/usr/local/cuda*/targets/*/lib/stubs/libcuda.so")
_UCX_MODULE = re.compile(r"^lib(uc[mpst]_\w+?|ucx_\w+?)\.so(?:\.\d+)*$")
_FI_PROVIDER = re.compile(r"^lib(\w+)-fi\.so$")


def _read_small(paths: RootPaths, path: str) -> str | None:
    host = paths.regular_file(path)
    if host is None:
        return None
    try:
        with open(host, "rb") as f:
            return f.read(_MAX_SMALL_FILE).decode("utf-8", "replace")
    except OSError:
        return None


def read_labels(paths: RootPaths) -> dict[str, str]:
    """/.singularity.d/labels.json as strings; {} when missing or not a JSON object."""
    text = _read_small(paths, LABELS_FILE)
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def _requirements(paths: RootPaths, labels: Mapping[str, str]) -> tuple[list[Requirement], list[str], list[Diagnostic]]:
    reqs: list[Requirement] = []
    sources: list[str] = []
    diags: list[Diagnostic] = []
    found: list[tuple[str, str]] = []
    if labels.get(LABEL, "").strip():
        found.append((f"label {LABEL}", labels[LABEL]))
    for f in FILES:
        text = _read_small(paths, f)
        if text is not None:
            found.append((f, text))
    for source, text in found:
        r, d = parse_requires(text, source)
        sources.append(source)
        reqs.extend(x for x in r if x not in reqs)
        diags.extend(d)
    return reqs, sources, diags


def _verbs_providers(finder: LibFinder, verbs: LibFound | None) -> list[VerbsProvider]:
    # rdma-core loads providers from <its own libdir>/libibverbs; look there and in the defaults.
    dirs = [posixpath.dirname(verbs.real_path)] if verbs else []
    dirs += list(finder.default_dirs)
    out: list[VerbsProvider] = []
    seen: set[str] = set()
    for d in finder.existing(posixpath.join(x, "libibverbs") for x in dirs):
        for name in finder.listdir(d):
            found = provider_of(name)
            if found and found[0] not in seen:
                seen.add(found[0])
                out.append(VerbsProvider(found[0], found[1], posixpath.join(d, name)))
    return out


def _modules(finder: LibFinder, lib: LibFound | None, subdir: str, rx: re.Pattern[str]) -> list[str]:
    if lib is None:
        return []
    names: list[str] = []
    for name in finder.listdir(posixpath.join(posixpath.dirname(lib.real_path), subdir)):
        m = rx.match(name)
        if m and m.group(1) not in names:
            names.append(m.group(1))
    return names


def _compat_libs(finder: LibFinder) -> list[CompatLib]:
    libcuda_cached = finder.cached("libcuda.so.1")
    cached_real = finder.paths.resolve(libcuda_cached) if libcuda_cached else None
    ldpath_real = {finder.paths.resolve(d) for d in finder.ld_library_path}
    out: dict[str, CompatLib] = {}
    for d in finder.glob(_COMPAT_DIRS):
        in_ldpath = finder.paths.resolve(d) in ldpath_real
        for name in finder.listdir(d):
            if not name.startswith("libcuda.so."):
                continue
            real = finder.paths.resolve(posixpath.join(d, name))
            version = version_of("libcuda.so", real or "")
            if not real or not version or version.count(".") < 1 or not finder.paths.regular_file(real):
                continue  # libcuda.so.1 is the link; the real file carries the driver version
            prev = out.get(real)
            in_path = in_ldpath or real == cached_real or bool(prev and prev.in_path)
            out[real] = CompatLib(real, version, in_path)

    def key(c: CompatLib) -> tuple[int, ...]:
        return tuple(int(x) for x in c.version.split("."))

    return sorted(out.values(), key=key, reverse=True)


def _unique_files(paths: RootPaths, candidates: Sequence[str]) -> list[str]:
    """The regular files among `candidates`, each real file once (under its first name)."""
    seen: set[str] = set()
    out = []
    for p in candidates:
        real = paths.resolve(p)
        if real and real not in seen and paths.regular_file(p):
            seen.add(real)
            out.append(p)
    return out


def _stub_in_path(finder: LibFinder) -> str | None:
    """A link-time stub libcuda the loader would take for libcuda.so.1 (it fails at run time
    with "CUDA driver version is insufficient" instead of using the real driver)."""
    cached = finder.cached("libcuda.so.1")
    if cached and "/stubs/" in (finder.paths.resolve(cached) or cached) + "/":
        return cached
    for d in finder.ld_library_path:
        if "stubs" in d.split("/") and finder.paths.regular_file(posixpath.join(d, "libcuda.so.1")):
            return posixpath.join(d, "libcuda.so.1")
    return None


def _hwcaps_dirs(finder: LibFinder) -> list[str]:
    out = []
    for d in finder.default_dirs:
        base = posixpath.join(d, "glibc-hwcaps")
        subdirs = (posixpath.join(base, n) for n in finder.listdir(base))
        out.extend(s for s in subdirs if finder.paths.is_dir(s))
    return out


def _isa(root: str, paths: RootPaths, app_path: str, ld_library_path: str
         ) -> tuple[int | None, int | None, str | None, list[str]]:
    """(the app's own level, the max over the app and its direct libraries, the file needing
    that max, the files checked)."""
    from shim.elf.facts import elf_facts  # pyelftools: only when an app is given
    from shim.elf.loader import Loader

    host = paths.regular_file(app_path)
    try:
        facts = elf_facts(host) if host else None
    except ShimError:
        facts = None
    if facts is None:
        return None, None, None, []
    checked = [app_path]
    best, best_file = facts.isa_level, app_path if facts.isa_level else None
    loader = Loader(root, ld_library_path=ld_library_path)
    for name in facts.needed:
        try:
            lib = loader.find(name, facts, app_path)
            lib_host = loader.host_path(lib) if lib else None
            lf = elf_facts(lib_host) if lib_host else None
        except ShimError:
            continue
        if lib is None or lf is None:
            continue
        checked.append(lib)
        if lf.isa_level and (best is None or lf.isa_level > best):
            best, best_file = lf.isa_level, lib
    return facts.isa_level, best, best_file, checked


def scan_image(root: str, app: str | None = None, labels: Mapping[str, str] | None = None,
               environ_scripts: Sequence[str] | None = None, arch: str | None = None) -> ImageExpectations:
    """What the image mounted at `root` expects of the hardware.
    app: the command (a container path, or a name looked up in the image's PATH) whose ISA level
    (and its direct libraries') is checked; None checks no binary. labels: the image's labels
    (e.g. from the SIF), merged over /.singularity.d/labels.json. environ_scripts: container paths
    of the environment scripts to read, in order (default: /.singularity.d/env/*.sh). arch: the
    image's architecture (default: probed from its /bin/sh) picks the ld.so.cache entries."""
    paths = RootPaths(root)
    env = read_image_env(paths, environ_scripts)
    all_labels = read_labels(paths)
    all_labels.update({str(k): str(v) for k, v in (labels or {}).items()})
    if arch is None:
        from shim.image.arch import arch_of_rootfs

        arch = arch_of_rootfs(paths.root)
    finder = LibFinder(paths, arch, env.get("LD_LIBRARY_PATH", ""))

    verbs = finder.find("libibverbs.so.1")
    ucx = finder.find("libucp.so.0")
    libfabric = finder.find("libfabric.so.1")
    openmp: list[LibFound] = []
    for lib in map(finder.find, ("libgomp.so.1", "libomp.so.5", "libomp.so", "libiomp5.so")):
        if lib and all(lib.real_path != o.real_path for o in openmp):  # libomp.so -> libomp.so.5
            openmp.append(lib)
    reqs, sources, diags = _requirements(paths, all_labels)

    app_level = isa = isa_file = None
    checked: list[str] = []
    app_path = find_program(paths, app, env.get("PATH", "")) if app else None
    if app_path:
        app_level, isa, isa_file, checked = _isa(paths.root, paths, app_path, env.get("LD_LIBRARY_PATH", ""))

    return ImageExpectations(
        root=paths.root,
        cuda_runtime=finder.find_any(r"libcudart\.so\.\d+"),
        cuda_version=env.get("CUDA_VERSION") or None,
        cuda_version_label=all_labels.get("com.nvidia.cuda.version") or None,
        nvidia_require={k: v for k, v in env.items() if k.startswith("NVIDIA_REQUIRE_") and v.strip()},
        nvidia_disable_require=env.get("NVIDIA_DISABLE_REQUIRE", "").strip().lower() in TRUE_WORDS,
        nccl=finder.find("libnccl.so.2"),
        cuda_stubs=tuple(_unique_files(paths, finder.glob(_STUBS))),
        cuda_stub_in_path=_stub_in_path(finder),
        cuda_compat=tuple(_compat_libs(finder)),
        rocm=finder.find_any(r"libamdhip64\.so\.\d+"),
        verbs=verbs,
        verbs_providers=tuple(_verbs_providers(finder, verbs)),
        rdmacm=finder.find("librdmacm.so.1"),
        ucx=ucx,
        ucx_modules=tuple(_modules(finder, ucx, "ucx", _UCX_MODULE)),
        libfabric=libfabric,
        libfabric_providers=tuple(_modules(finder, libfabric, "libfabric", _FI_PROVIDER)),
        openmp=tuple(openmp),
        app=app_path,
        app_isa_level=app_level,
        isa_level=isa,
        isa_binary=isa_file,
        isa_checked=tuple(checked),
        hwcaps_dirs=tuple(_hwcaps_dirs(finder)),
        env=env,
        labels=all_labels,
        requires=tuple(reqs),
        requires_source=tuple(sources),
        diagnostics=tuple(diags),
    )
