"""The explicit hardware declaration an image may carry: the label `shim.requires` or the file
/.shim/requires (or /etc/shim/requires), e.g. `gpu.cuda>=12.2, net.rdma, cpu.x86-64-v3`.

Terms are separated by commas or white space; `#` starts a comment (in the file); spaces around
an operator are allowed. Terms:
    gpu.cuda[OP VERSION]   the image needs an NVIDIA GPU (a driver for CUDA VERSION)
    gpu.rocm[OP VERSION]   the image needs an AMD GPU (ROCm)
    net.rdma               the image needs an RDMA device (InfiniBand, RoCE, EFA, ...)
    cpu.x86-64-vN          the binaries need an x86-64 level N CPU (1-4)
    cpu.cores>=N           the app needs at least N CPUs
OP is one of >= > = == <= <. An unknown or malformed term gives IMAGE-REQUIRES-INVALID.
"""

from __future__ import annotations

import re

from shim.expect.model import Requirement
from shim.model import WARNING, Diagnostic

LABEL = "shim.requires"
FILES = ("/.shim/requires", "/etc/shim/requires")

_OPS = r"(>=|<=|==|=|>|<)"
_GPU = re.compile(rf"^(gpu\.cuda|gpu\.rocm)(?:{_OPS}(\d+(?:\.\d+){{0,2}}))?$")
_ISA = re.compile(r"^cpu\.x86-64-v([1-4])$")
_CORES = re.compile(r"^cpu\.cores(>=)([1-9]\d{0,5})$")
_OP_SPACES = re.compile(rf"\s*{_OPS}\s*")


def _term(term: str) -> Requirement | None:
    t = term.lower()
    m = _GPU.match(t)
    if m:
        op = "=" if m.group(2) == "==" else m.group(2)
        return Requirement(m.group(1), op, m.group(3), term)
    if t == "net.rdma":
        return Requirement("net.rdma", None, None, term)
    m = _ISA.match(t)
    if m:
        return Requirement("cpu.x86-64", ">=", m.group(1), term)
    m = _CORES.match(t)
    if m:
        return Requirement("cpu.cores", ">=", m.group(2), term)
    return None


def parse_requires(text: str, source: str) -> tuple[list[Requirement], list[Diagnostic]]:
    """The terms of one declaration; a diagnostic for each term that is not understood."""
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    body = _OP_SPACES.sub(r"\1", body)
    reqs: list[Requirement] = []
    diags: list[Diagnostic] = []
    for term in re.split(r"[,\s]+", body):
        if not term:
            continue
        req = _term(term)
        if req is None:
            diags.append(Diagnostic(
                "IMAGE-REQUIRES-INVALID", WARNING,
                f"the image's hardware declaration ({source}) has a term shim does not understand: {term!r}",
                "terms: gpu.cuda[>=X.Y], gpu.rocm[>=X.Y], net.rdma, cpu.x86-64-vN (N 1-4), cpu.cores>=N; "
                "the term is ignored",
                ""))
        elif req not in reqs:
            reqs.append(req)
    return reqs, diags
