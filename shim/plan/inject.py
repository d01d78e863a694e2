"""The injection plan: a decision for every host library a profile offers, from ELF facts.

Pure over data: the container is a directory tree (the mounted image), the host is "/" (or a
host root for tests). Nothing here mounts or launches.

Rules (README, "Injection"):
- refuse when the ELF class/machine/byte order differs from the container's libc; when a
  required symbol version is not defined by what would provide it in the container; when
  GLIBC_PRIVATE is required; when a dependency is found neither in the container nor on the host;
  when the MPI family (or major) differs; when the app imports MPI_* symbols the host library
  does not export. A refusal refuses the whole profile: never a half-injected stack.
- skip glibc (unless the site opted in), identical files, and libraries nothing in the image uses
  (except what is loaded with dlopen: a GPU profile's driver libraries in a CUDA image).
- GPU profiles (kind "gpu"): refuse driver libraries of another release than the loaded kernel
  module (CUDA-DRIVER-MISMATCH); leave libcuda to the image's newer forward-compatibility copy
  where the GPUs support it (profile.cuda_forward_compat).
- RDMA profiles (kind "rdma"): refuse verbs providers needing an IBVERBS_PRIVATE_<N> that the
  libibverbs the container will use does not define (RDMA-PROVIDER-ABI).
- inject otherwise: the host file is bound over the file the container's loader finds for every
  name container binaries ask for; dependencies the container lacks (or has too old) go beside
  it; $ORIGIN-relative RUNPATH directories are bound beside it so the host build finds its own
  pieces (e.g. MPICH's bundled libfabric/UCX).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shim.plan.knowledge import is_glibc, mpi_abi
from shim.plan.model import INJECT, REFUSE, SKIP, WARNING, BindSpec, Decision, Diagnostic, Plan

INJECT_DIR = "/.shim/inject"  # injected host libraries: one directory per profile
LD_CACHE = "/etc/ld.so.cache"
MPI_SYMBOL = re.compile(r"^P?MPIX?_[A-Z]")
# The MPI library names a container may carry, probed to tell its MPI family.
MPI_PROBES = ("libmpi.so.12", "libmpich.so.12", "libmpi.so.40", "libmpi.so.20", "libmpi_abi.so.1", "libmpi_abi.so")
# A file of the NVIDIA driver's user space, named after the driver release (libcuda.so.535.104.05,
# libnvidia-ml.so.535.104.05, libEGL_nvidia.so.535.104.05); SONAMEs like libnvidia-nvvm.so.4 carry none.
DRIVER_FILE = re.compile(r"^(libcuda|libcudadebugger|libnvcuvid|libnvoptix|libnvidia-[A-Za-z0-9_-]+|"
                         r"lib[A-Za-z0-9]+_nvidia)\.so\.(\d+\.\d+(?:\.\d+)*)$")
GPU_INFO = "proc/driver/nvidia/gpus"  # <bus id>/information, "Model: NVIDIA A100-SXM4-80GB"
# CUDA forward compatibility works on datacenter GPUs only (Tesla, A/H/L/B series, Grace
# Hopper/Blackwell), not on GeForce, TITAN, RTX/Quadro boards or vGPU profiles (A100-40C).
DATACENTER_GPU = re.compile(r"^(?:NVIDIA )?(?:Tesla\b|(?:GH|GB|[ABHL])\d{1,3}[A-Z]?\b)(?!.*-\d+[ABCQ]$)")
VERBS = "libibverbs.so.1"
VERBS_PROVIDER = re.compile(r"^lib(.+)-rdmav(\d+)\.so$")  # rdma-core's provider file names
IBVERBS_PRIVATE = re.compile(r"^IBVERBS_PRIVATE_(\d+)$")  # the provider ABI, a version node of libibverbs


@dataclass
class _Work:
    """What one profile would inject, collected before it is accepted or refused as a whole."""

    decisions: list[Decision] = field(default_factory=list)
    binds: list[BindSpec] = field(default_factory=list)
    refusals: list[Diagnostic] = field(default_factory=list)
    cache: dict[str, str] = field(default_factory=dict)  # SONAME -> container path, for ld.so.cache


@dataclass
class _Gpu:
    """What a GPU profile's plan needs to know about the driver and the image's CUDA."""

    evidence: str | None = None          # why the image counts as built for CUDA (None: it does not)
    compat: dict[str, str] = field(default_factory=dict)  # SONAME -> the image's forward-compat copy
    compat_reason: str = ""              # why those are used instead of the host's
    host_note: str = ""                  # why the image's forward-compat libcuda is not used


class Planner:
    def __init__(self, root: str, host_root: str = "/", app: str | None = None, path: str = "",
                 facts: Callable | None = None, symbols: Callable | None = None) -> None:
        from shim.elf.facts import dynamic_symbols, elf_facts
        from shim.elf.loader import Loader

        self.root = root
        self.host_root = host_root
        self._facts_fn = facts or elf_facts
        self._symbols_fn = symbols or dynamic_symbols
        self._facts: dict[str, object] = {}
        self.container = Loader(root, facts=self._cached)
        self.host = Loader(host_root, facts=self._cached)
        self.app = self._find_app(app, path) if app else None
        self.app_facts = self._container_facts(self.app) if self.app else None
        anchor = self.app if self.app_facts and self.app_facts.is_dynamic else self._first_existing(
            ("/bin/sh", "/usr/bin/env", "/bin/busybox"))
        self.anchor = anchor
        self.anchor_facts = self._container_facts(anchor) if anchor else None
        self.libc_path = self._find_in_container("libc.so.6")
        self.libc = self._container_facts(self.libc_path) if self.libc_path else None
        self._expectations = None

    def expectations(self):
        """What the image expects of the hardware (shim.expect.scan: CUDA runtime, forward-compat
        libraries), read once and only for profiles that need it."""
        if self._expectations is None:
            from shim.expect.scan import scan_image

            self._expectations = scan_image(self.root)
        return self._expectations

    # --- facts -----------------------------------------------------------------------------
    def _cached(self, host_path: str):
        if host_path not in self._facts:
            self._facts[host_path] = self._facts_fn(host_path) if os.path.isfile(host_path) else None
        return self._facts[host_path]

    def _container_facts(self, path: str | None):
        return self._cached(self._in_root(path)) if path else None

    def _host_facts(self, path: str | None):
        return self._cached(self._on_host(path)) if path else None

    def _on_host(self, path: str) -> str:
        """This machine's path of a host path: profile paths are in host terms, dependencies
        found by the closure walk are already this machine's."""
        root = os.path.abspath(self.host_root)
        if root != "/" and (path == root or path.startswith(root + "/")):
            return path
        return os.path.join(self.host_root, path.lstrip("/"))

    def _in_root(self, path: str) -> str:
        from shim.elf.rootpath import RootPaths

        resolved = RootPaths(self.root).resolve(path) or path
        return os.path.join(self.root, resolved.lstrip("/"))

    def _first_existing(self, paths: Iterable[str]) -> str | None:
        return next((p for p in paths if os.path.isfile(self._in_root(p))), None)

    def _find_app(self, name: str, path: str) -> str | None:
        if "/" in name:
            return name if os.path.isfile(self._in_root(name)) else None
        return self._first_existing(os.path.join(d or ".", name) for d in path.split(":"))

    def _find_in_container(self, name: str) -> str | None:
        if not self.anchor_facts:
            return None
        return self.container.find(name, self.anchor_facts, self.anchor)

    # --- the container's side --------------------------------------------------------------
    def container_sonames(self, names: Iterable[str]) -> set[str]:
        return {n for n in names if self._find_in_container(n)}

    def glibc_description(self) -> str:
        if not self.libc:
            return "no glibc found"
        versions = [v for v in self.libc.version_defs if v.startswith("GLIBC_2.")]
        newest = max(versions, key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)), default="?")
        # A release that adds no symbols has no version node of its own (2.31 defines up to
        # GLIBC_2.30): the release is in libc's banner string.
        release = _glibc_release(self._in_root(self.libc_path)) or newest.removeprefix("GLIBC_")
        return f"glibc {release} (defines GLIBC_2.2.5 … {newest})"

    # --- one profile -------------------------------------------------------------------------
    def plan_profile(self, profile, requested: bool = False) -> _Work:
        """requested: the profile was asked for by name (--profile): a GPU profile's driver
        libraries are then injected even into an image that shows no sign of CUDA."""
        work = _Work()
        libs = [(spec, m) for spec in profile.provides.libraries for m in spec.matches]
        gpu = self._gpu_check(work, profile, libs) if profile.kind == "gpu" else None
        if work.refusals:
            return work  # the driver's libraries do not match its kernel module: nothing is usable
        container_mpi = {n: self._find_in_container(n) for n in MPI_PROBES} if profile.kind == "mpi" else {}
        container_mpi = {n: p for n, p in container_mpi.items() if p}
        used_any = False
        for spec, host_path in libs:
            facts = self._host_facts(host_path)
            soname = (facts.soname if facts else None) or os.path.basename(host_path)
            key = f"{profile.file}: provides.libraries ({spec.entry})"
            if facts is None:
                self._refuse(work, profile, soname, host_path, "", "NOT-ELF", f"{host_path} is not an ELF file",
                             "fix the profile", key)
                continue
            if is_glibc(soname) and not profile.glibc_replacement:
                work.decisions.append(Decision(soname, host_path, "", SKIP, "part of glibc: the container's own "
                                               "C library is used", profile.name))
                continue
            if self.libc and (facts.elf_class, facts.machine, facts.byte_order) != (
                    self.libc.elf_class, self.libc.machine, self.libc.byte_order):
                self._refuse(work, profile, soname, host_path, "", "LIB-ARCH-MISMATCH",
                             f"{soname} is {facts.elf_class}-bit {facts.machine} {facts.byte_order}-endian, the "
                             f"container's libc is {self.libc.elf_class}-bit {self.libc.machine} "
                             f"{self.libc.byte_order}-endian", "use an image of the host's architecture", key)
                continue
            if gpu and soname in gpu.compat:
                # The image's own newer copy, made findable by SONAME through the re-pointed cache.
                work.cache[soname] = gpu.compat[soname]
                work.decisions.append(Decision(soname, host_path, gpu.compat[soname], SKIP,
                                               gpu.compat_reason.replace("{name}", soname), profile.name))
                continue
            names = self._names_for(soname, profile)
            targets = {n: self._find_in_container(n) for n in names}
            targets = {n: p for n, p in targets.items() if p}
            host_abi = mpi_abi(soname)
            if profile.kind == "mpi" and host_abi and not targets and container_mpi:
                other, where = next(iter(container_mpi.items()))
                theirs = mpi_abi(other)
                self._refuse(work, profile, soname, host_path, where, "MPI-ABI-MISMATCH",
                             f"host MPI is {host_abi.describe(soname)}, the image's MPI is "
                             f"{theirs.describe(other) if theirs else other} at {where}: the ABIs differ",
                             f"rebuild the app against an {host_abi.label} MPI, or run with --no-profiles "
                             "to use the image's own MPI", key)
                continue
            note = gpu.host_note if gpu and soname == "libcuda.so.1" else ""
            if not targets:
                dlopen = self._dlopen_reason(profile, gpu, requested)
                if dlopen:
                    # Loaded with dlopen by SONAME, so in no DT_NEEDED: the re-pointed ld.so.cache
                    # is how the container's loader finds it, even where the image has no copy.
                    used_any = True
                    self._inject_at(work, profile, key, soname, host_path, facts, soname, None, dlopen + note)
                    continue
                why = f"nothing in the image uses {' or '.join(names)}"
                if gpu:
                    why += (" and it shows no sign of CUDA (no libcudart.so.*, CUDA_VERSION, NCCL...): "
                            f"request it with --profile {profile.name}")
                work.decisions.append(Decision(soname, host_path, "", SKIP, why, profile.name))
                continue
            used_any = True
            for name, target in targets.items():
                self._inject_at(work, profile, key, soname, host_path, facts, name, target, note=note)
        if profile.kind == "mpi" and used_any and not work.refusals:
            self._check_mpi_symbols(work, profile, libs)
        if profile.kind == "rdma" and not work.refusals:
            self._check_verbs_providers(work, profile)
        self._profile_extras(work, profile)
        return work

    def _dlopen_reason(self, profile, gpu: _Gpu | None, requested: bool) -> str:
        """Why a library nothing in the image links is injected anyway ("" when it is not):
        the CUDA driver's libraries are dlopened (libcudart -> libcuda.so.1 -> the JIT, NVVM
        and debugger libraries; NVML by its users), never named in DT_NEEDED."""
        if gpu is None:
            return ""
        if gpu.evidence:
            return f"loaded with dlopen by the image's CUDA stack ({gpu.evidence})"
        if requested:
            return f"loaded with dlopen by CUDA programs; requested with --profile {profile.name}"
        return ""

    # --- GPU profiles ------------------------------------------------------------------------
    def _gpu_check(self, work: _Work, profile, libs) -> _Gpu | None:
        """Driver libraries against the loaded kernel module (refused when another release),
        then the image's forward-compat libcuda against the driver. None: refused."""
        from shim.elf.rootpath import RootPaths
        from shim.host.gpu import kernel_module_version

        module = kernel_module_version(self.host_root)
        host_paths = RootPaths(self.host_root)
        releases = []  # (file name, release, spec, host path)
        for spec, host_path in libs:
            real = os.path.basename(host_paths.resolve(host_path) or host_path)
            m = DRIVER_FILE.match(real)
            if m:
                releases.append((real, m.group(2), spec, host_path))
        # Without a loaded module (or a /proc that hides it) the libraries are compared among themselves.
        reference, against = module, f"the loaded kernel module {module}"
        if module is None:
            cuda = next((r for r in releases if r[0].startswith("libcuda.so.")), releases[0] if releases else None)
            if cuda:
                reference, against = cuda[1], f"{cuda[0]} (no loaded kernel module to compare with)"
        for name, release, spec, host_path in releases:
            if reference and release != reference:
                facts = self._host_facts(host_path)
                others = sum(1 for r in releases if r[1] != reference) - 1
                self._refuse(work, profile, (facts.soname if facts else None) or name, host_path, "",
                             "CUDA-DRIVER-MISMATCH", f"{name} does not match {against}"
                             + (f" (and {others} more)" if others > 0 else ""),
                             "the node's NVIDIA driver was updated without reloading its kernel module: CUDA and "
                             "NVML fail (\"driver/library version mismatch\"); run on another node, and have it "
                             "rebooted", f"{profile.file}: provides.libraries ({spec.entry})")
                return None
        gpu = _Gpu(evidence=self.expectations().cuda_evidence)
        driver = reference or None
        self._forward_compat(gpu, profile, driver)
        return gpu

    def _forward_compat(self, gpu: _Gpu, profile, driver: str | None) -> None:
        """Use the image's CUDA forward-compatibility libraries (/usr/local/cuda*/compat) instead
        of the host's when they are newer than the driver and the GPUs support them."""
        compat = next(iter(self.expectations().cuda_compat), None)
        if compat is None or driver is None or _release(compat.version) <= _release(driver):
            return  # none, or not newer: the host driver is what works (older compat fails with 803)
        what = f"the image's forward-compat libcuda {compat.version} ({compat.path})"
        setting = profile.cuda_forward_compat
        if setting == "never":
            gpu.host_note = f"; {what} is not used: the profile sets cuda_forward_compat = \"never\""
            return
        if setting == "always":
            why = "the profile sets cuda_forward_compat = \"always\""
        else:
            models = _gpu_models(self.host_root)
            unsupported = sorted({m for m in models if not DATACENTER_GPU.match(m)})
            if not models:
                gpu.host_note = (f"; {what} is newer than this node's driver {driver}, but whether the GPUs support "
                                 f"forward compatibility cannot be told (no /{GPU_INFO}/*/information): the host "
                                 "driver is used (cuda_forward_compat = \"always\" if they do)")
                return
            if unsupported:
                gpu.host_note = (f"; {what} is newer than this node's driver {driver}, but {', '.join(unsupported)} "
                                 "cannot use forward compatibility (datacenter GPUs only): the host driver is used")
                return
            why = f"the GPUs ({', '.join(sorted(set(models)))}) support forward compatibility"
        from shim.elf.rootpath import RootPaths

        paths = RootPaths(self.root)
        directory = os.path.dirname(compat.path)
        for spec in profile.provides.libraries:
            for host_path in spec.matches:
                facts = self._host_facts(host_path)
                soname = (facts.soname if facts else None) or os.path.basename(host_path)
                stem = soname.split(".so", 1)[0] + ".so."
                inside = next((p for p in (f"{directory}/{soname}", f"{directory}/{stem}{compat.version}")
                               if paths.regular_file(p)), None)
                if inside:
                    gpu.compat[soname] = inside
        # {name}: filled in per library
        gpu.compat_reason = (f"the image's forward-compat libcuda {compat.version} is used ({{name}} from "
                             f"{directory}): newer than this node's driver {driver}, and {why}")

    # --- RDMA profiles -----------------------------------------------------------------------
    def _check_verbs_providers(self, work: _Work, profile) -> None:
        """Each host verbs provider needs IBVERBS_PRIVATE_<N> of the libibverbs that loads it:
        the host's when this profile injects it, else the image's."""
        providers = self._host_providers(profile)
        if not providers:
            return
        self._provider_targets(work, providers)
        verbs = self._verbs_in_use(work)
        if verbs is None:
            return  # no libibverbs in the container: nothing loads the providers
        verbs_facts, whose = verbs
        defined = sorted(int(m.group(1)) for v in verbs_facts.version_defs if (m := IBVERBS_PRIVATE.match(v)))
        have = ", ".join(f"IBVERBS_PRIVATE_{n}" for n in defined) or "no IBVERBS_PRIVATE_ version"
        for host_path, abi, entry in providers:
            name = os.path.basename(host_path)
            facts = self._host_facts(host_path)
            # The version node the provider requires is the truth; the file name is a fallback
            # for a provider linked without symbol versions.
            needs = sorted({int(m.group(1)) for need in (facts.version_needs if facts else ())
                            if need.file.startswith("libibverbs.so") for v, _weak in need.versions
                            if (m := IBVERBS_PRIVATE.match(v))}) or [abi]
            missing = [n for n in needs if n not in defined]
            key = f"{profile.file}: provides.plugin_dirs ({entry})"
            if missing:
                fix = ("the host's libibverbs and its providers come from different rdma-core builds: reinstall "
                       "rdma-core" if whose.startswith("the host's") else
                       f"use an image whose rdma-core has provider ABI {missing[0]}, or have the site inject the "
                       "host's libibverbs.so.1 with its providers")
                self._refuse(work, profile, name, host_path, "", "RDMA-PROVIDER-ABI",
                             f"{name} needs IBVERBS_PRIVATE_{missing[0]} (provider ABI {missing[0]}), but {whose} "
                             f"defines {have}: libibverbs would not load it and the device would be unusable",
                             fix, key)
                return
            work.decisions.append(Decision(name, host_path, host_path, INJECT,
                                           f"verbs provider (ABI {needs[0]}) for {whose}", profile.name))

    def _host_providers(self, profile) -> list[tuple[str, int, str]]:
        """(host path, ABI from the file name, profile entry) of the verbs providers the
        profile injects: lib<driver>-rdmav<N>.so in its plugin directories or libraries."""
        out = []
        for spec in profile.provides.plugin_dirs:
            for d in spec.matches:
                try:
                    names = sorted(os.listdir(self._on_host(d)))
                except OSError:
                    continue
                out += [(f"{d}/{n}", int(m.group(2)), spec.entry) for n in names if (m := VERBS_PROVIDER.match(n))]
        for spec in profile.provides.libraries:
            out += [(p, int(m.group(2)), spec.entry) for p in spec.matches
                    if (m := VERBS_PROVIDER.match(os.path.basename(p)))]
        return out

    def _provider_targets(self, work: _Work, providers: list[tuple[str, int, str]]) -> None:
        """rdma-core installs providers with a public library (mlx5, efa, ...) as links to it
        (libibverbs/libmlx5-rdmav34.so -> ../libmlx5.so.1.24.0): inside the container the link
        resolves among the image's files, so the host's file goes where the link leads."""
        from shim.elf.rootpath import RootPaths

        paths = RootPaths(self.host_root)
        for host_path, _abi, _entry in providers:
            real = paths.resolve(host_path)
            if real and real != host_path and os.path.dirname(real) != os.path.dirname(host_path) \
                    and os.path.isfile(self._on_host(real)):
                spec = BindSpec(real, real)
                if spec not in work.binds:
                    work.binds.append(spec)

    def _verbs_in_use(self, work: _Work):
        """(facts, description) of the libibverbs.so.1 the container will load, None if none."""
        injected = next((d for d in work.decisions if d.library == VERBS and d.decision == INJECT), None)
        if injected:
            facts = self._host_facts(injected.host_path)
            return (facts, f"the host's {VERBS} ({injected.host_path}), which this profile injects") if facts else None
        inside = self._find_in_container(VERBS)
        if inside is None:
            return None
        from shim.elf.rootpath import RootPaths

        real = RootPaths(self.root).resolve(inside) or inside
        facts = self._container_facts(real)
        return (facts, f"the image's {VERBS} ({real})") if facts else None

    def _found_through_cache(self, name: str) -> bool:
        """Does the app (or /bin/sh) get `name` from ld.so.cache, as most distribution builds do?"""
        if not self.anchor_facts:
            return True
        found = self._find_in_container(name)
        cached = self.container.ld_cache.lookup(name)
        return found is not None and found == cached

    def cache_file(self, repoint: dict[str, str]) -> bytes:
        """The image's ld.so.cache with `repoint` (SONAME -> container path) applied."""
        from shim.elf.ldcache import CacheEntry
        from shim.elf.ldcache_write import write_ld_cache

        entries = list(self.container.ld_cache.entries)
        flags = next((e.flags for e in entries if e.key == "libc.so.6"), 0x303)
        kept = [e for e in entries if e.key not in repoint]
        for soname, path in repoint.items():
            same = [e for e in entries if e.key == soname]
            kept.append(CacheEntry(same[0].flags if same else flags, soname, path))
        return write_ld_cache(kept)

    def _names_for(self, soname: str, profile) -> list[str]:
        """Every name container binaries may ask for that this library stands in for
        (Debian's MPICH apps ask for libmpich.so.12, the host ships libmpi.so.12)."""
        names = [soname]
        mine = mpi_abi(soname)
        for r in profile.replaces:
            theirs = mpi_abi(r)
            if r != soname and mine and theirs and (theirs.family, theirs.major) == (mine.family, mine.major) \
                    and r.split(".so")[0] in ("libmpi", "libmpich"):
                names.append(r)
        return names

    def _inject_at(self, work: _Work, profile, key: str, soname: str, host_path: str, facts, name: str,
                   target: str | None, dlopen: str = "", note: str = "") -> None:
        """Inject host_path for `name`, over the image's `target`, or (target None) where the
        image has none: then `dlopen` says why, and only the re-pointed cache leads to it."""
        from shim.elf.rootpath import RootPaths

        real = (RootPaths(self.root).resolve(target) or target) if target else ""
        container_facts = self._container_facts(real) if real else None
        if container_facts and container_facts.elf_class and mpi_abi(soname) and container_facts.soname:
            mine, theirs = mpi_abi(soname), mpi_abi(container_facts.soname)
            if theirs and mine and (theirs.family != mine.family or theirs.major != mine.major):
                self._refuse(work, profile, soname, host_path, real, "MPI-ABI-MISMATCH",
                             f"host MPI is {mine.describe(soname)}, the image's {name} is "
                             f"{theirs.describe(container_facts.soname)}", "use the image's own MPI "
                             "(--no-profiles)", key)
                return
        if real and _same_file(self._on_host(host_path), self._in_root(real)):
            work.decisions.append(Decision(name, host_path, real, SKIP, "the image already has an identical file",
                                           profile.name))
            return
        # Placed in a directory of its own, so that its $ORIGIN holds only what came with it;
        # the container's loader finds it there through the re-pointed ld.so.cache.
        placed_dir = f"{INJECT_DIR}/{profile.name}"
        placed = f"{placed_dir}/{os.path.basename(host_path)}"
        if not any(b.dst == placed for b in work.binds):
            origin_binds = self._origin_dirs(facts, host_path, placed_dir)
            provided = {os.path.basename(p) for p in _listdirs([b.src for b in origin_binds])}
            extra = self._closure(work, profile, key, host_path, facts, placed_dir, provided)
            if extra is None:
                return
            work.binds.append(BindSpec(host_path, placed))
            work.binds.extend(b for b in origin_binds if b not in work.binds)
        work.cache[name] = placed
        if not real:
            work.decisions.append(Decision(name, host_path, placed, INJECT, f"{dlopen}; the image has no {name}",
                                           profile.name))
            return
        via_cache = self._found_through_cache(name)
        if not via_cache:
            # The app finds it through RPATH/RUNPATH/LD_LIBRARY_PATH, not the cache: the only
            # way in is over the file it finds (the host library's $ORIGIN is then that directory).
            work.binds.append(BindSpec(host_path, real))
        work.decisions.append(Decision(name, host_path, placed if via_cache else real, INJECT,
                                       f"stands in for the image's {name} ({real}){note}", profile.name))

    def _origin_dirs(self, facts, host_path: str, placed_dir: str) -> list[BindSpec]:
        """RUNPATH/RPATH entries relative to $ORIGIN: the same directories beside the new place."""
        out = []
        for entry in (facts.runpath or facts.rpath):
            m = re.match(r"^\$(?:ORIGIN|\{ORIGIN\})(/.*)?$", entry)
            if not m:
                continue
            rel = (m.group(1) or "").strip("/")
            src = os.path.normpath(os.path.join(os.path.dirname(host_path), rel))
            if rel and os.path.isdir(src):
                out.append(BindSpec(src, os.path.normpath(os.path.join(placed_dir, rel))))
        return out

    def _closure(self, work: _Work, profile, key: str, host_path: str, facts, placed_dir: str,
                 provided: set[str]) -> list[str] | None:
        """Check every dependency of the library (transitively on the host side) against the
        container; put what the container lacks (or has too old) beside it. None: refused."""
        todo, seen, extra = [(host_path, facts)], {host_path}, []
        while todo:
            path, f = todo.pop()
            if not self._versions_ok(work, profile, key, path, f, provided):
                return None
            for dep in f.needed:
                if is_glibc(dep) or dep in provided:
                    continue
                inside = self._find_in_container(dep)
                host_dep = self.host.find(dep, f, path)
                if inside and (host_dep is None or self._provider_ok(f, dep, inside)):
                    continue  # the container's copy serves
                if host_dep is None:
                    self._refuse(work, profile, os.path.basename(host_path), host_path, "", "DEPENDENCY-MISSING",
                                 f"{dep} (needed by {os.path.basename(path)}) is found neither in the container "
                                 "nor on the host", "install it on the host or in the image", key)
                    return None
                real_dep = os.path.realpath(os.path.join(self.host_root, host_dep.lstrip("/")))
                if real_dep in seen:
                    continue
                seen.add(real_dep)
                dst = os.path.join(placed_dir, dep)
                work.cache[dep] = dst
                why = (f"the image's {dep} lacks a version {os.path.basename(path)} needs" if inside
                       else "the image has none")
                work.decisions.append(Decision(dep, real_dep, dst, INJECT, f"needed by {os.path.basename(path)}; "
                                               f"{why}", profile.name))
                work.binds.append(BindSpec(real_dep, dst))
                extra.append(dep)
                provided.add(dep)
                dep_facts = self._host_facts(host_dep)
                if dep_facts:
                    todo.append((real_dep, dep_facts))
        return extra

    def _provider_ok(self, requester, dep: str, inside: str) -> bool:
        need = next((n for n in requester.version_needs if n.file == dep), None)
        if need is None:
            return True
        have = self._container_facts(inside)
        defined = set(have.version_defs) if have else set()
        return all(weak or v in defined for v, weak in need.versions)

    def _versions_ok(self, work: _Work, profile, key: str, path: str, f, provided: set[str]) -> bool:
        for need in f.version_needs:
            if need.file in provided:
                continue
            inside = self._find_in_container(need.file)
            if inside is None:
                if is_glibc(need.file):
                    self._refuse(work, profile, os.path.basename(path), path, "", "DEPENDENCY-MISSING",
                                 f"{need.file} (needed by {os.path.basename(path)}) is not in the container",
                                 "use an image with a complete glibc", key)
                    return False
                continue  # a non-glibc dependency: the closure walk injects the host's copy
            have = self._container_facts(inside)
            defined = set(have.version_defs) if have else set()
            for version, weak in need.versions:
                if weak or version in defined:
                    continue
                if not is_glibc(need.file):
                    continue  # the closure walk injects the host's newer copy instead
                if version == "GLIBC_PRIVATE":
                    self._refuse(work, profile, os.path.basename(path), path, "", "GLIBC-PRIVATE",
                                 f"{os.path.basename(path)} requires GLIBC_PRIVATE from {need.file}: it is tied to "
                                 "the host's exact glibc build", "only whole-glibc replacement could work", key)
                    return False
                self._refuse(work, profile, os.path.basename(path), path, "", "GLIBC-TOO-OLD",
                             f"version `{version}' not found (required by {os.path.basename(path)}): the "
                             f"container has {self.glibc_description()}",
                             "use an image with a newer glibc, or a host build for an older glibc", key)
                return False
        return True

    def _check_mpi_symbols(self, work: _Work, profile, libs) -> None:
        if not self.app_facts or not self.app_facts.is_dynamic:
            return
        app_syms = self._symbols_fn(self._in_root(self.app))
        wanted = {s for s in (app_syms.undefined if app_syms else ()) if MPI_SYMBOL.match(s)}
        if not wanted:
            return
        exported: set[str] = set()
        for _spec, host_path in libs:
            syms = self._symbols_fn(host_path)
            if syms:
                exported |= syms.defined
        missing = sorted(wanted - exported)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            self._refuse(work, profile, "MPI symbols", ", ".join(h for _s, h in libs[:1]), self.app,
                         "MPI-SYMBOLS-MISSING", f"{self.app} imports {shown}, which the host MPI does not export",
                         "use the image's own MPI (--no-profiles) or a host MPI exporting them",
                         f"{profile.file}: provides.libraries")

    def _profile_extras(self, work: _Work, profile) -> None:
        p = profile.provides
        for spec in (*p.plugin_dirs, *p.binaries, *p.config_files):
            for m in spec.matches:
                work.binds.append(BindSpec(m, m))
        for spec in p.devices:
            for m in spec.matches:
                work.binds.append(BindSpec(m, m, read_only=False, device=True))
        for b in p.binds:
            work.binds.append(BindSpec(b.src, b.dst, b.read_only))

    def _refuse(self, work: _Work, profile, library: str, host_path: str, container_path: str, code: str,
                message: str, hint: str, admin_key: str) -> None:
        work.decisions.append(Decision(library, host_path, container_path, REFUSE, f"{code}: {message}",
                                       profile.name))
        work.refusals.append(Diagnostic(code, WARNING, message, f"{hint}; the image's own libraries are used",
                                        admin_key))


def _release(text: str) -> tuple[int, ...]:
    """A driver release for comparison: "535.104.05" -> (535, 104, 5)."""
    return tuple(int(x) for x in re.findall(r"\d+", text))


def _gpu_models(host_root: str) -> list[str]:
    """The model of each GPU the kernel module lists (/proc/driver/nvidia/gpus/*/information):
    a file read, where NVML would load the driver."""
    base = os.path.join(host_root, GPU_INFO)
    try:
        buses = sorted(os.listdir(base))
    except OSError:
        return []
    models = []
    for bus in buses:
        try:
            with open(os.path.join(base, bus, "information"), errors="replace") as f:
                m = re.search(r"^Model:\s*(.+?)\s*$", f.read(8192), re.MULTILINE)
        except OSError:
            continue
        if m:
            models.append(m.group(1))
    return models


def _glibc_release(libc: str) -> str | None:
    """The release in libc's banner ("... stable release version 2.31."), None if not found."""
    import mmap

    try:
        with open(libc, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            at = m.find(b"release version ")
            if at < 0:
                return None
            found = re.match(rb"release version (\d+\.\d+)", m[at:at + 32])
    except (OSError, ValueError):
        return None
    return found.group(1).decode() if found else None


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if sa.st_size != sb.st_size:
        return False
    return _digest(a) == _digest(b)


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _listdirs(dirs: list[str]) -> list[str]:
    out = []
    for d in dirs:
        try:
            out += [os.path.join(d, n) for n in os.listdir(d)]
        except OSError:
            continue
    return out


def plan_for_image(root: str, image_label: str, profiles, requested: list[str], no_profiles: bool,
                   command: list[str], path: str, host_root: str = "/", scratch: str | None = None,
                   refusal_severity: str = WARNING, use_cache: bool = True, stats: dict | None = None) -> Plan:
    """The whole plan for one launch (or `check`), from the plan cache when nothing it depends
    on changed. The re-pointed ld.so.cache is written into `scratch` (the launch's private tmpfs)."""
    from shim.plan.cache import load_plan, plan_key, store_plan

    key = plan_key(image_label, profiles, requested, no_profiles, command, path, refusal_severity,
                   host_root) if use_cache and profiles is not None else None
    hit = load_plan(key) if key else None
    if hit:
        plan, ld_cache = hit
    else:
        plan, ld_cache = compute_plan(root, image_label, profiles, requested, no_profiles, command, path,
                                      host_root, refusal_severity)
        if key:
            store_plan(key, plan, ld_cache)
    if stats is not None:
        stats["plan_cache"] = "hit" if hit else ("miss" if key else "off")
    if ld_cache and scratch:
        cache_path = os.path.join(scratch, "ld.so.cache")
        with open(cache_path, "wb") as f:
            f.write(ld_cache)
        plan.binds.append(BindSpec(cache_path, LD_CACHE))
    return plan


def compute_plan(root: str, image_label: str, profiles, requested: list[str], no_profiles: bool,
                 command: list[str], path: str, host_root: str = "/",
                 refusal_severity: str = WARNING) -> tuple[Plan, bytes | None]:
    """Select profiles, then plan each: the plan and the re-pointed ld.so.cache (None: unchanged)."""
    from shim.elf.cache import FactsCache
    from shim.elf.facts import elf_facts

    plan = Plan(image=image_label)
    if profiles is None:
        return plan, None
    # Host files keep their identity between runs: their facts are cached per user. The image's
    # files get a new st_dev with every mount, so caching them would only churn the cache.
    host_facts = FactsCache()
    inside = os.path.join(os.path.realpath(root), "")

    def facts(p: str):
        return elf_facts(p) if os.path.realpath(p).startswith(inside) else host_facts.get(p)

    planner = Planner(root, host_root=host_root, app=command[0] if command else None, path=path, facts=facts)
    image_sonames = planner.container_sonames({r for p in profiles.profiles for r in p.replaces})
    repoint: dict[str, str] = {}
    for sel in profiles.select(requested, no_profiles, image_sonames):
        if not sel.applies:
            continue
        plan.profiles.append(sel.profile.name)
        work = planner.plan_profile(sel.profile, requested=sel.profile.name in requested)
        if work.refusals:
            # Never a half-injected stack: one refusal refuses the whole profile.
            first = work.refusals[0]
            for d in work.decisions:
                if d.decision == INJECT:
                    plan.decisions.append(Decision(d.library, d.host_path, d.container_path, REFUSE,
                                                   f"profile {sel.profile.name} refused: {first.code}", d.profile))
                else:
                    plan.decisions.append(d)
            plan.diagnostics.extend(dataclasses.replace(d, severity=refusal_severity) for d in work.refusals)
            continue
        plan.decisions.extend(work.decisions)
        plan.binds.extend(work.binds)
        repoint.update(work.cache)
        env = sel.profile.env
        plan.env_set.update(dict(env.set))
        plan.env_prepend.update(dict(env.prepend))
        plan.env_append.update(dict(env.append))
        plan.env_unset.extend(env.unset)
    host_facts.save()
    return plan, planner.cache_file(repoint) if repoint else None
