"""What an image expects of the hardware, as plain data (frozen dataclasses, to_dict for --json).

Filled by shim.expect.scan.scan_image; tests and callers may also construct it directly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from shim.model import Diagnostic


@dataclass(frozen=True)
class LibFound:
    """A library the image's loader would find by `soname`."""

    soname: str                # the name asked for: libcudart.so.12
    path: str                  # container path it was found under (cache entry or directory)
    real_path: str = ""        # container path with every symlink followed
    version: str | None = None  # from the real file name: libcudart.so.12.2.140 -> "12.2.140"


@dataclass(frozen=True)
class CompatLib:
    """A CUDA forward-compatibility libcuda in the image (/usr/local/cuda*/compat)."""

    path: str                  # container path of the real file
    version: str               # the driver version it is: "535.104.05"
    in_path: bool = False      # the loader finds it by default (ld.so.cache or LD_LIBRARY_PATH)


@dataclass(frozen=True)
class VerbsProvider:
    """An rdma-core user-space provider: <libdir>/libibverbs/lib<name>-rdmav<abi>.so."""

    name: str                  # mlx5, rxe, efa, ...
    abi: int                   # the provider ABI it was built for (rdmav34 -> 34)
    path: str


@dataclass(frozen=True)
class Requirement:
    """One term of an explicit declaration (label shim.requires, /.shim/requires)."""

    name: str                  # gpu.cuda | gpu.rocm | net.rdma | cpu.x86-64 | cpu.cores
    op: str | None = None      # >=, >, =, <=, < (None: just "needed")
    value: str | None = None   # "12.2" for gpu.cuda, "3" for cpu.x86-64-v3, "8" for cpu.cores>=8
    text: str = ""             # the term as written


@dataclass(frozen=True)
class ImageExpectations:
    root: str = ""
    # CUDA / NVIDIA
    cuda_runtime: LibFound | None = None              # libcudart.so.N
    cuda_version: str | None = None                   # CUDA_VERSION from the image's environment
    cuda_version_label: str | None = None             # label com.nvidia.cuda.version
    nvidia_require: dict[str, str] = field(default_factory=dict)  # NVIDIA_REQUIRE_* from the environment
    nvidia_disable_require: bool = False              # NVIDIA_DISABLE_REQUIRE set true in the image
    nccl: LibFound | None = None                      # libnccl.so.2
    cuda_stubs: tuple[str, ...] = ()                  # .../stubs/libcuda.so (link-time stubs)
    cuda_stub_in_path: str | None = None              # a stub the loader would pick for libcuda.so.1
    cuda_compat: tuple[CompatLib, ...] = ()           # forward-compat libcuda, newest first
    # AMD
    rocm: LibFound | None = None                      # libamdhip64.so.N
    # RDMA and fabrics
    verbs: LibFound | None = None                     # libibverbs.so.1
    verbs_providers: tuple[VerbsProvider, ...] = ()
    rdmacm: LibFound | None = None                    # librdmacm.so.1
    ucx: LibFound | None = None                       # libucp.so.0
    ucx_modules: tuple[str, ...] = ()                 # uct_ib, uct_rdmacm, uct_cma, ucm_cuda, ...
    libfabric: LibFound | None = None                 # libfabric.so.1
    libfabric_providers: tuple[str, ...] = ()         # DL providers in <libdir>/libfabric: efa, psm3, ...
    # CPU
    openmp: tuple[LibFound, ...] = ()                 # libgomp.so.1, libomp.so(.5), libiomp5.so
    app: str | None = None                            # container path of the app checked, None if not
    app_isa_level: int | None = None                  # x86-64 level the app itself needs
    isa_level: int | None = None                      # max over the app and its direct libraries
    isa_binary: str | None = None                     # the file that needs isa_level
    isa_checked: tuple[str, ...] = ()                 # container paths whose ISA note was read
    hwcaps_dirs: tuple[str, ...] = ()                 # .../glibc-hwcaps/<subdir> present (optional variants)
    # The image's environment (selected variables) and labels
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    # Explicit declaration
    requires: tuple[Requirement, ...] = ()
    requires_source: tuple[str, ...] = ()             # "label shim.requires", "/.shim/requires"
    diagnostics: tuple[Diagnostic, ...] = ()          # IMAGE-REQUIRES-INVALID, ...

    # ---- derived ----

    def required(self, name: str) -> Requirement | None:
        return next((r for r in self.requires if r.name == name), None)

    @property
    def cuda_evidence(self) -> str | None:
        """Why the image counts as built for CUDA (None: it does not)."""
        declared = self.required("gpu.cuda")
        if declared:
            return f"it declares {declared.text!r}"
        if self.cuda_runtime:
            return f"it has the CUDA runtime {self.cuda_runtime.real_path or self.cuda_runtime.path}"
        if self.cuda_version:
            return f"its environment sets CUDA_VERSION={self.cuda_version}"
        if "NVIDIA_REQUIRE_CUDA" in self.nvidia_require:
            return "its environment sets NVIDIA_REQUIRE_CUDA"
        if self.cuda_version_label:
            return f"its label com.nvidia.cuda.version is {self.cuda_version_label}"
        if self.nccl:
            return f"it has NCCL {self.nccl.real_path or self.nccl.path}"
        return None

    @property
    def ucx_rdma(self) -> bool:
        # uct_ib (uct_ib_mlx5, uct_ib_efa since UCX 1.17) and uct_rdmacm drive RDMA devices.
        return any(m.startswith("uct_ib") or m == "uct_rdmacm" for m in self.ucx_modules)

    @property
    def rdma_evidence(self) -> str | None:
        """Why the image counts as RDMA-capable (None: it does not)."""
        r = self.required("net.rdma")
        if r:
            return f"it declares {r.text!r}"
        parts = []
        if self.verbs:
            provs = ", ".join(p.name for p in self.verbs_providers) or "no providers"
            parts.append(f"libibverbs ({provs})")
        if self.ucx and self.ucx_rdma:
            parts.append("UCX with InfiniBand transports")
        if self.libfabric:
            parts.append("libfabric")
        return "it has " + " and ".join(parts) if parts else None

    def to_dict(self) -> dict:
        return asdict(self)
