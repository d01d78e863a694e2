"""Profile format additions for the GPU and RDMA profiles: provides.optional_libraries (entries a
node may lack without making the profile unavailable) and profile.cuda_forward_compat. Real files
under a fake host root, as in test_profiles.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from library_images import X86_64_LIBC6

from shim.elf.ldcache import CacheEntry
from shim.elf.ldcache_write import write_ld_cache
from shim.plan.profiles import lint_files, load_profiles
from shim.site.profile_model import Problem


def elf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))
    return path


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """libcuda.so.1 and libnvidia-ml.so.1 in the host's cache; of the optional ones, only the PTX
    JIT compiler is installed; /opt/rdma/lib holds libibverbs, libmlx5 and a non-ELF file."""
    root = tmp_path / "host"
    cache = {"libcuda.so.1": "/usr/lib64/libcuda.so.535.104.05",
             "libnvidia-ml.so.1": "/usr/lib64/libnvidia-ml.so.535.104.05",
             "libnvidia-ptxjitcompiler.so.1": "/usr/lib64/libnvidia-ptxjitcompiler.so.535.104.05"}
    for path in cache.values():
        elf(root / path.lstrip("/"))
    (root / "etc").mkdir(parents=True)
    (root / "etc/ld.so.cache").write_bytes(write_ld_cache([CacheEntry(X86_64_LIBC6, k, v) for k, v in cache.items()]))
    elf(root / "opt/rdma/lib/libibverbs.so.1")
    elf(root / "opt/rdma/lib/libmlx5.so.1.24.0")
    (root / "opt/rdma/lib/libefa.so.1").write_text("INPUT ( libefa.so.1.3 )\n")   # not ELF
    return root


def write(tmp_path: Path, text: str, name: str = "p") -> Path:
    d = tmp_path / "conf" / "profiles"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.toml"
    path.write_text(text)
    return path


GPU = """\
[profile]
kind = "gpu"
applies = "on-request"
{extra}
[provides]
libraries = ["soname:libcuda.so.1", "soname:libnvidia-ml.so.1"]
optional_libraries = [{optional}]
"""


def keys(problems: list[Problem]) -> list[str]:
    return [p.key for p in problems]


def test_missing_optional_libraries_leave_the_profile_usable(tmp_path: Path, host: Path) -> None:
    optional = '"soname:libnvidia-ptxjitcompiler.so.1", "soname:libnvidia-nvvm.so.4", "/opt/nvidia/libnvcuvid.so.1*"'
    path = write(tmp_path, GPU.format(extra="", optional=optional))
    assert lint_files([path], host_root=str(host)) == []
    (p,) = load_profiles(tmp_path / "conf", host_root=str(host)).profiles
    assert p.available and p.cuda_forward_compat == "auto"
    libs = {s.entry: s for s in p.provides.libraries}
    assert [s.optional for s in p.provides.libraries] == [False, False, True, True, True]
    ptx = libs["soname:libnvidia-ptxjitcompiler.so.1"]
    assert ptx.matches == ("/usr/lib64/libnvidia-ptxjitcompiler.so.535.104.05",) and ptx.key == \
        "provides.optional_libraries[0]"
    assert libs["soname:libnvidia-nvvm.so.4"].matches == () and libs["/opt/nvidia/libnvcuvid.so.1*"].matches == ()
    assert p.to_dict()["provides"]["libraries"][3]["optional"] is True


def test_a_missing_required_library_still_makes_it_unavailable(tmp_path: Path, host: Path) -> None:
    path = write(tmp_path, GPU.format(extra="", optional="").replace("soname:libnvidia-ml.so.1",
                                                                      "soname:libnvidia-cfg.so.1"))
    assert keys(lint_files([path], host_root=str(host))) == ["provides.libraries[1]"]
    (p,) = load_profiles(tmp_path / "conf", host_root=str(host)).profiles
    assert not p.available


def test_optional_entries_keep_their_text_checks(tmp_path: Path, host: Path) -> None:
    path = write(tmp_path, GPU.format(extra="", optional='"soname:libm.so.6", "lib/libx.so.1", "${X}/libx.so.1", '
                                                         '"soname:nonsense"'))
    problems = lint_files([path], host_root=str(host))
    assert keys(problems) == [f"provides.optional_libraries[{i}]" for i in range(4)]
    assert not any(p.host for p in problems)
    assert "part of glibc" in problems[0].message and "no provides.prefix" in problems[1].message


def test_optional_paths_take_only_elf_files(tmp_path: Path, host: Path) -> None:
    path = write(tmp_path, """\
[profile]
kind = "rdma"
applies = "when-used"
replaces = ["libibverbs.so.1", "libmlx5.so.1", "libefa.so.1"]

[provides]
prefix = "/opt/rdma/lib"
libraries = ["libibverbs.so.1"]
optional_libraries = ["libmlx5.so.1*", "libefa.so.1*", "libbnxt_re.so.1*"]
""")
    # libefa.so.1 is a linker script here and libbnxt_re absent: both only optional, and a
    # replaced SONAME an optional entry names counts as provided.
    assert lint_files([path], host_root=str(host)) == []
    (p,) = load_profiles(tmp_path / "conf", host_root=str(host)).profiles
    assert [s.matches for s in p.provides.libraries] == [("/opt/rdma/lib/libibverbs.so.1",),
                                                         ("/opt/rdma/lib/libmlx5.so.1.24.0",), (), ()]
    path.write_text(path.read_text().replace('"libefa.so.1"]', '"libefa.so.1", "libhns.so.1"]'))
    assert keys(lint_files([path], host_root=str(host))) == ["profile.replaces[3]"]


def test_misspelt_optional_key_is_suggested(tmp_path: Path, host: Path) -> None:
    path = write(tmp_path, GPU.format(extra="", optional="").replace("optional_libraries", "optional_library"))
    (p,) = lint_files([path], host_root=str(host))
    assert p.key == "provides.optional_library" and p.fix == "did you mean provides.optional_libraries?"


@pytest.mark.parametrize(("extra", "kind", "key", "message"), [
    ('cuda_forward_compat = "sometimes"', "gpu", "profile.cuda_forward_compat", "'sometimes' is not a known value"),
    ('cuda_forward_compat = true', "gpu", "profile.cuda_forward_compat", "must be a string"),
    ('cuda_forward_compat = "always"', "other", "profile.cuda_forward_compat", "only GPU profiles"),
])
def test_cuda_forward_compat_is_checked(tmp_path: Path, host: Path, extra: str, kind: str, key: str,
                                        message: str) -> None:
    path = write(tmp_path, GPU.format(extra=extra, optional="").replace('kind = "gpu"', f'kind = "{kind}"'))
    (p,) = lint_files([path], host_root=str(host))
    assert p.key == key and message in p.message, p


@pytest.mark.parametrize("value", ["auto", "always", "never"])
def test_cuda_forward_compat_values(tmp_path: Path, host: Path, value: str) -> None:
    write(tmp_path, GPU.format(extra=f'cuda_forward_compat = "{value}"', optional=""))
    (p,) = load_profiles(tmp_path / "conf", host_root=str(host)).profiles
    assert p.cuda_forward_compat == value and p.to_dict()["cuda_forward_compat"] == value
