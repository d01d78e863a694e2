"""Host facts as data. Gathered by shim.host.gather; compared with what an image expects by
shim.diagnose. Every field is plain data so the facts can be cached and shown with --json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from shim.elf.hwcaps import CpuFeatures


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str                      # e.g. "NVIDIA H100 80GB HBM3"
    uuid: str = ""
    mig_enabled: bool = False      # MIG mode on: the job sees slices, not the whole GPU
    virtualization: str = "none"   # none | passthrough | vgpu | host-vgpu | unknown


@dataclass(frozen=True)
class GpuFacts:
    """NVIDIA GPUs. `driver_version` is the user-space driver NVML reports; `kernel_module_version`
    comes from /proc/driver/nvidia/version; `cuda_driver_version` is the highest CUDA version the
    driver supports, as NVML encodes it (12040 = 12.4)."""

    kernel_module_version: str | None = None
    driver_version: str | None = None
    cuda_driver_version: int | None = None
    nvml_library: str | None = None      # host path of libnvidia-ml.so.1, None when absent
    nvml_error: str | None = None        # why NVML could not be asked, None when it answered
    devices: tuple[GpuDevice, ...] = ()
    dev_nodes: tuple[str, ...] = ()      # /dev/nvidia0, /dev/nvidiactl, /dev/nvidia-uvm, ...
    visible_devices: str | None = None   # CUDA_VISIBLE_DEVICES as the job has it (None: unset)


@dataclass(frozen=True)
class RdmaPort:
    number: int
    state: str          # e.g. ACTIVE, DOWN (the text after "N: " in ports/N/state)
    link_layer: str     # InfiniBand | Ethernet (RoCE)


@dataclass(frozen=True)
class RdmaDevice:
    name: str           # mlx5_0, rxe0, siw0
    driver: str         # mlx5_core, rdma_rxe, siw, ... (kernel driver, best effort)
    software: bool      # rxe/siw: RDMA emulated in software over an Ethernet NIC
    ports: tuple[RdmaPort, ...] = ()


@dataclass(frozen=True)
class RdmaFacts:
    devices: tuple[RdmaDevice, ...] = ()
    dev_nodes: tuple[str, ...] = ()      # /dev/infiniband/uverbs0, rdma_cm, ...


@dataclass(frozen=True)
class CpuFacts:
    arch: str                  # image-arch words: amd64, arm64, ppc64le, ... (shim.image.arch)
    isa_level: int | None      # x86-64 level 1-4; None on other architectures
    model: str = ""


@dataclass(frozen=True)
class Emulator:
    """A binfmt_misc entry whose interpreter is an emulator (qemu-*)."""

    name: str                  # qemu-aarch64
    arch: str                  # the architecture it runs, in image-arch words (arm64)
    interpreter: str
    enabled: bool
    flags: str = ""            # F: the interpreter is opened at registration, so it works in containers


@dataclass(frozen=True)
class CpuAllowance:
    """The CPUs this process (the job) may use against the node's."""

    node_cpus: int
    allowed_cpus: int          # sched affinity
    cgroup_quota: float | None = None   # cpu.max quota/period in CPUs, None when unlimited


@dataclass(frozen=True)
class HostFacts:
    root: str = "/"
    cpu: CpuFacts = field(default_factory=lambda: CpuFacts("unknown", None))
    gpu: GpuFacts = field(default_factory=GpuFacts)
    rdma: RdmaFacts = field(default_factory=RdmaFacts)
    emulators: tuple[Emulator, ...] = ()
    hypervisor: str | None = None        # kvm, vmware, xen, microsoft, ... None on bare metal
    cpus: CpuAllowance = field(default_factory=lambda: CpuAllowance(1, 1))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HostView:
    """The few host facts the injection planner needs, cheap to gather (file reads, no NVML):
    the CPU ld.so searches for, the loaded NVIDIA kernel module and the GPU models it lists."""

    root: str = "/"
    cpu: CpuFeatures | None = None
    nvidia_module: str | None = None         # /proc/driver/nvidia/version
    gpu_models: tuple[str, ...] = ()         # /proc/driver/nvidia/gpus/*/information "Model:"

    def key(self) -> list:
        """What of it a cached plan depends on."""
        return [self.root, asdict(self.cpu) if self.cpu else None, self.nvidia_module, list(self.gpu_models)]
