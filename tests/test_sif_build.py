"""`shimrun build`: a root filesystem (directory or tarball) becomes a SIF that reads back with
the layout of the reference writer and whose squashfs squashfs-tools can list."""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from shim.cli import build_cmd
from shim.errors import ExitCode, ShimError, UsageError
from shim.image import arch as archmod
from shim.image import build as buildmod
from shim.image.build import build_sif
from shim.image.sif import DATA_DEFFILE, primary_partition, read_sif
from shim.image.sif_write import SifObject, write_sif
from shim.image.squashfs import read_superblock

needs_squashfs_tools = pytest.mark.skipif(
    not (shutil.which("mksquashfs") and shutil.which("unsquashfs")),
    reason="squashfs-tools not installed (apt-get install squashfs-tools)")

HOST_TRUE = Path("/bin/true").resolve()
FILES = ("etc/hello.txt", "usr/bin/true", "srv/data/deep/file.bin")
EM = {a.go: a for a in archmod.ARCHES}


def elf_header(a: archmod.Arch) -> bytes:
    order = "<" if a.endian == "little" else ">"
    ident = b"\x7fELF" + bytes([a.elf_class, 1 if a.endian == "little" else 2, 1]) + bytes(9)
    return ident + struct.pack(order + "HHI", 2, a.e_machine, 1) + bytes(40)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A merged-/usr tree: bin -> usr/bin, and /bin/sh an absolute link to /usr/bin/true."""
    root = tmp_path / "rootfs"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "srv" / "data" / "deep").mkdir(parents=True)
    (root / "etc" / "hello.txt").write_text("hello from the image\n")
    (root / "srv" / "data" / "deep" / "file.bin").write_bytes(bytes(range(256)) * 64)
    shutil.copy2(HOST_TRUE, root / "usr" / "bin" / "true")
    (root / "bin").symlink_to("usr/bin")
    (root / "usr" / "bin" / "sh").symlink_to("/usr/bin/true")
    root.chmod(0o755)
    return root


def listing(sif: Path) -> set[str]:
    part = primary_partition(read_sif(sif))
    out = subprocess.run(["unsquashfs", "-o", str(part.offset), "-l", str(sif)],
                         capture_output=True, text=True, check=True).stdout
    return {line.removeprefix("squashfs-root/") for line in out.splitlines()
            if line.startswith("squashfs-root/")}


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".build." in p.name or p.name.endswith(".tmp"))


# --- architecture table and detection (no squashfs-tools needed) ---------------------------

def test_arch_table_round_trips() -> None:
    codes = [f"{i:02d}" for i in range(1, 14)]
    assert [a.sif_code for a in archmod.ARCHES] == codes
    for a in archmod.ARCHES:
        assert archmod.sif_code_to_arch(a.sif_code) == a.go
        assert archmod.arch_to_sif_code(a.go) == a.sif_code
        assert archmod.arch_to_sif_code(a.uname[0]) == a.sif_code
        assert archmod.arch_from_elf_header(elf_header(a)) == a.go
    assert archmod.sif_code_to_arch("00") == archmod.sif_code_to_arch("14") == "unknown"
    assert (archmod.arch_to_sif_code("x86_64"), archmod.arch_to_sif_code("aarch64")) == ("02", "04")
    assert archmod.arch_to_sif_code("unknown") == "00"
    with pytest.raises(UsageError, match="unknown architecture 'sparc64'"):
        archmod.arch_to_sif_code("sparc64")


def test_elf_header_edge_cases() -> None:
    assert archmod.arch_from_elf_header(b"#!/bin/sh\n" + bytes(20)) is None
    assert archmod.arch_from_elf_header(elf_header(EM["amd64"])[:19]) is None
    ppc_be = elf_header(EM["ppc64"])
    assert archmod.arch_from_elf_header(ppc_be) == "ppc64"
    assert archmod.arch_from_elf_header(ppc_be[:5] + b"\x01" + ppc_be[6:]) is None  # wrong order
    assert archmod.arch_from_elf_header(HOST_TRUE.read_bytes()[:64]) == archmod.host_arch()


# Independent oracles for host_arch(), each with its own table to shim's Go-style names: Debian's
# architecture names (dpkg --print-architecture) and readelf's words for /bin/true's ELF header
# (Machine, Class, Data).
DEBIAN_ARCH = {"amd64": "amd64", "i386": "386", "armhf": "arm", "armel": "arm", "arm64": "arm64",
               "ppc64el": "ppc64le", "ppc64": "ppc64", "mips": "mips", "mipsel": "mipsle",
               "mips64": "mips64", "mips64el": "mips64le", "s390x": "s390x", "riscv64": "riscv64",
               "loong64": "loong64"}
READELF_ARCH = {
    ("Advanced Micro Devices X86-64", "ELF64", "little"): "amd64",
    ("Intel 80386", "ELF32", "little"): "386",
    ("ARM", "ELF32", "little"): "arm",
    ("AArch64", "ELF64", "little"): "arm64",
    ("PowerPC64", "ELF64", "big"): "ppc64",
    ("PowerPC64", "ELF64", "little"): "ppc64le",
    ("MIPS R3000", "ELF32", "big"): "mips",
    ("MIPS R3000", "ELF32", "little"): "mipsle",
    ("MIPS R3000", "ELF64", "big"): "mips64",
    ("MIPS R3000", "ELF64", "little"): "mips64le",
    ("IBM S/390", "ELF64", "big"): "s390x",
    ("RISC-V", "ELF64", "little"): "riscv64",
    ("LoongArch", "ELF64", "little"): "loong64",
}


def readelf_arch(path: Path) -> str:
    out = subprocess.run(["readelf", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    fields = dict(line.strip().split(":", 1) for line in out.splitlines() if ":" in line)
    data = fields["Data"].strip()
    endian = "little" if "little endian" in data else "big" if "big endian" in data else data
    key = (fields["Machine"].strip(), fields["Class"].strip(), endian)
    return READELF_ARCH.get(key, f"not in READELF_ARCH: {key}")


def test_host_arch() -> None:
    oracles = {}
    if shutil.which("dpkg"):
        deb = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                             check=True).stdout.strip()
        oracles["dpkg --print-architecture"] = DEBIAN_ARCH.get(deb, f"not in DEBIAN_ARCH: {deb}")
    if shutil.which("readelf"):
        oracles[f"readelf -h {HOST_TRUE}"] = readelf_arch(HOST_TRUE)
    if not oracles:
        pytest.skip("neither dpkg nor readelf (binutils) is installed to tell this machine's architecture")
    assert {name: archmod.host_arch() for name in oracles} == oracles


def test_arch_of_rootfs_follows_links_inside_root(rootfs: Path) -> None:
    assert archmod.arch_of_rootfs(str(rootfs)) == archmod.host_arch()
    # An image whose /bin/sh is an ELF for another machine.
    (rootfs / "usr" / "bin" / "sh").unlink()
    (rootfs / "usr" / "bin" / "dash").write_bytes(elf_header(EM["arm64"]))
    (rootfs / "usr" / "bin" / "sh").symlink_to("dash")
    assert archmod.arch_of_rootfs(str(rootfs)) == "arm64"


def test_arch_of_rootfs_never_leaves_root(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "sh").symlink_to("../../../../../../../bin/true")  # host's /bin/true
    (root / "bin" / "busybox").symlink_to(str(HOST_TRUE))  # absolute: means root/bin/true
    (root / "usr").symlink_to("usr")  # a loop
    assert archmod.arch_of_rootfs(str(root)) is None
    assert archmod.resolve_links("a/../../b", lambda _rel: None) == "b"
    os.mkfifo(root / "bin" / "true")  # a FIFO must not hang detection
    assert archmod.arch_of_rootfs(str(root)) is None


# --- writer -----------------------------------------------------------------------------

@needs_squashfs_tools
def test_build_directory_layout(rootfs: Path, tmp_path: Path) -> None:
    out = tmp_path / "img.sif"
    before = int(time.time())
    assert build_sif(out, rootfs) == archmod.host_arch()
    img = read_sif(out)
    h = img.header
    assert h.launch_script == "#!/usr/bin/env run-singularity\n"
    assert (h.version, h.arch, h.arch_code) == ("01", archmod.host_arch(),
                                                archmod.arch_to_sif_code(archmod.host_arch()))
    assert h.id is not None and uuid.UUID(h.id).version == 4
    assert before <= h.created_at == h.modified_at <= int(time.time())
    assert (h.descriptors_total, h.descriptors_free) == (48, 47)
    assert (h.descriptors_offset, h.descriptors_size, h.data_offset) == (4096, 28080, 32176)
    [part] = img.descriptors
    assert part is primary_partition(img)
    assert (part.id, part.group, part.link, part.type_name) == (1, 1, None, "FS")
    assert (part.fstype, part.parttype, part.arch) == ("Squashfs", "PrimSys", h.arch)
    assert part.offset % 4096 == 0 and part.offset == 32768
    assert part.size_with_padding == part.size + 32768 - 32176
    assert part.created_at == h.created_at and (part.uid, part.gid) == (0, 0)
    assert h.data_offset + h.data_size == part.end == img.file_size == out.stat().st_size
    sb = read_superblock(out, part.offset, part.size)
    assert (sb.compression, sb.version) == ("zstd", (4, 0))
    assert out.stat().st_mode & stat.S_IXUSR  # runnable through its launch script
    names = listing(out)
    assert set(FILES) <= names and {"bin", "usr/bin/sh"} <= names
    assert leftovers(tmp_path) == []


@needs_squashfs_tools
def test_image_root_is_0755_and_arch_override_warns(rootfs: Path, tmp_path: Path) -> None:
    rootfs.chmod(0o700)  # e.g. a mkdtemp build directory
    out = tmp_path / "m.sif"
    steps: list[str] = []
    other = "arm64" if archmod.host_arch() != "arm64" else "amd64"
    assert build_sif(out, rootfs, arch=other, progress=steps.append) == other
    expected = f"warning: labelling the image {other} as asked, but its binaries are {archmod.host_arch()}"
    assert expected in steps
    part = primary_partition(read_sif(out))
    out_dir = tmp_path / "x"
    subprocess.run(["unsquashfs", "-q", "-n", "-o", str(part.offset), "-d", str(out_dir),
                    str(out)], check=True, capture_output=True)
    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o755


@needs_squashfs_tools
def test_deterministic_builds_are_identical(rootfs: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.sif", tmp_path / "b.sif"
    build_sif(a, rootfs, deterministic=True)
    os.utime(rootfs / "etc" / "hello.txt", (1, 1))  # file times must not matter
    time.sleep(1.1)  # nor the clock
    build_sif(b, rootfs, deterministic=True)
    assert a.read_bytes() == b.read_bytes()
    img = read_sif(a)
    assert img.header.id is None and img.header.launch_script == ""
    assert img.header.created_at is None and img.header.modified_at is None
    assert img.descriptors[0].created_at is None and img.descriptors[0].modified_at is None
    raw = a.read_bytes()
    assert raw[48:64] == bytes(16)
    assert struct.unpack_from("<qq", raw, 64) == (-62135596800, -62135596800)
    part = img.descriptors[0]
    assert read_superblock(a, part.offset, part.size).mkfs_time == 0


@needs_squashfs_tools
@pytest.mark.parametrize("compression", ["gzip", "xz", "lz4"])
def test_compressions(rootfs: Path, tmp_path: Path, compression: str) -> None:
    out = tmp_path / "c.sif"
    build_sif(out, rootfs, compression=compression)
    part = primary_partition(read_sif(out))
    assert read_superblock(out, part.offset, part.size).compression == compression
    assert set(FILES) <= listing(out)


@needs_squashfs_tools
def test_write_sif_with_deffile(rootfs: Path, tmp_path: Path) -> None:
    sqfs = tmp_path / "r.sqfs"
    subprocess.run(["mksquashfs", str(rootfs), str(sqfs), "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    deffile = b"Bootstrap: localimage\nFrom: rootfs\n"
    out = tmp_path / "d.sif"
    write_sif(out, sqfs, "arm64", objects=(SifObject(DATA_DEFFILE, "", deffile),), deterministic=True)
    img = read_sif(out)
    d, part = img.descriptors
    assert (d.id, d.type_name, d.offset, d.size, d.size_with_padding) == (
        1, "Def.FILE", 32176, len(deffile), len(deffile))
    assert out.read_bytes()[32176:32176 + len(deffile)] == deffile
    assert part.id == 2 and part.offset == 32768 and part.arch == "arm64"
    assert part.size_with_padding == 32768 - (32176 + len(deffile)) + part.size
    assert out.read_bytes()[part.offset:] == sqfs.read_bytes()
    assert (img.header.arch, img.header.descriptors_free) == ("arm64", 46)


@needs_squashfs_tools
def test_write_failure_keeps_old_image(rootfs: Path, tmp_path: Path) -> None:
    out = tmp_path / "keep.sif"
    out.write_bytes(b"old")
    bogus = tmp_path / "bogus.sqfs"
    bogus.write_bytes(b"not squashfs" * 100)
    with pytest.raises(ShimError, match="is not squashfs"):
        write_sif(out, bogus, "amd64")
    with pytest.raises(UsageError, match="architecture of the root filesystem is unknown"):
        write_sif(out, bogus, "unknown")
    assert out.read_bytes() == b"old" and leftovers(tmp_path) == []


# --- tarball sources -----------------------------------------------------------------------

@needs_squashfs_tools
@pytest.mark.parametrize("suffix", ["tar", "tar.gz", "tar.xz", "tar.zst"])
@pytest.mark.parametrize("via_tar", [True, False], ids=["mksquashfs-tar", "extract"])
def test_build_from_tarball(rootfs: Path, tmp_path: Path, suffix: str, via_tar: bool,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    tool = {"tar.gz": "gzip", "tar.xz": "xz", "tar.zst": "zstd"}.get(suffix)
    if tool and not shutil.which(tool):
        pytest.skip(f"{tool} not installed")
    tarball = tmp_path / f"rootfs.{suffix}"
    subprocess.run(["tar", "-C", str(rootfs), "-a", "-cf", str(tarball), "."], check=True)
    if not via_tar:  # squashfs-tools without -tar: extract to a temp dir first
        monkeypatch.setattr(buildmod, "mksquashfs_has_tar", lambda _exe: False)
    elif not buildmod.mksquashfs_has_tar(shutil.which("mksquashfs")):
        pytest.skip("this mksquashfs has no -tar")
    out = tmp_path / "t.sif"
    steps: list[str] = []
    assert build_sif(out, tarball, progress=steps.append) == archmod.host_arch()
    assert any("tarball" in s or "extracting" in s for s in steps)
    assert set(FILES) <= listing(out)
    part = primary_partition(read_sif(out))
    out_dir = tmp_path / "x"
    subprocess.run(["unsquashfs", "-q", "-n", "-o", str(part.offset), "-d", str(out_dir),
                    str(out)], check=True, capture_output=True)
    assert (out_dir / "etc" / "hello.txt").read_text() == "hello from the image\n"
    assert os.readlink(out_dir / "bin") == "usr/bin"
    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o755  # not -tar's default 0777 root
    assert leftovers(tmp_path) == []


@needs_squashfs_tools
def test_not_a_tarball(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive\n" * 100)
    with pytest.raises(UsageError, match="cannot read it as a tar archive"):
        build_sif(tmp_path / "o.sif", junk)
    assert not (tmp_path / "o.sif").exists() and leftovers(tmp_path) == []


@needs_squashfs_tools
def test_corrupt_compressed_tarball(rootfs: Path, tmp_path: Path) -> None:
    tarball = tmp_path / "r.tar.gz"
    subprocess.run(["tar", "-C", str(rootfs), "-czf", str(tarball), "."], check=True)
    tarball.write_bytes(tarball.read_bytes()[:200])
    with pytest.raises(ShimError, match=r"gzip failed on .*r\.tar\.gz") as info:
        build_sif(tmp_path / "o.sif", tarball)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "o.sif").exists() and leftovers(tmp_path) == []


# --- errors and the CLI --------------------------------------------------------------------

def test_build_usage_errors(tmp_path: Path, rootfs: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        build_sif(tmp_path / "o.sif", tmp_path / "missing")
    with pytest.raises(UsageError, match="unknown compression 'brotli'"):
        build_sif(tmp_path / "o.sif", rootfs, compression="brotli")
    with pytest.raises(UsageError, match="unknown architecture 'vax'"):
        build_sif(tmp_path / "o.sif", rootfs, arch="vax")
    with pytest.raises(UsageError, match="directory .* does not exist"):
        build_sif(tmp_path / "nodir" / "o.sif", rootfs)


@needs_squashfs_tools
def test_rootfs_without_binaries_needs_arch(tmp_path: Path) -> None:
    root = tmp_path / "data-only"
    root.mkdir()
    (root / "README").write_text("no executables here\n")
    with pytest.raises(UsageError, match="cannot tell the architecture") as info:
        build_sif(tmp_path / "o.sif", root)
    assert "--arch" in info.value.hint and leftovers(tmp_path) == []
    build_sif(tmp_path / "o.sif", root, arch="aarch64")
    assert read_sif(tmp_path / "o.sif").header.arch == "arm64"


def test_missing_mksquashfs(tmp_path: Path, rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    with pytest.raises(ShimError, match="mksquashfs is not installed") as info:
        build_sif(tmp_path / "o.sif", rootfs)
    assert info.value.code == ExitCode.HOST and "apt-get install squashfs-tools" in info.value.hint


@needs_squashfs_tools
def test_cli_build(rootfs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="shimrun")
    build_cmd.register(parser.add_subparsers(dest="subcommand", required=True))
    out = tmp_path / "cli.sif"
    args = parser.parse_args(["build", str(out), str(rootfs), "--compression", "gzip",
                              "--deterministic"])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert f"wrote {out} ({archmod.host_arch()}, {out.stat().st_size} bytes)" in err
    img = read_sif(out)
    assert img.header.id is None
    part = primary_partition(img)
    assert read_superblock(out, part.offset, part.size).compression == "gzip"


@needs_squashfs_tools
def test_source_date_epoch_pins_a_deterministic_build(rootfs: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """SOURCE_DATE_EPOCH (the reproducible-builds convention the help names) with --deterministic:
    the squashfs times are that epoch (mksquashfs refuses the variable beside its own time
    flags, so it must not see both), and two builds are identical."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a, b = tmp_path / "a.sif", tmp_path / "b.sif"
    build_sif(a, rootfs, deterministic=True)
    build_sif(b, rootfs, deterministic=True)
    assert a.read_bytes() == b.read_bytes()
    part = primary_partition(read_sif(a))
    assert read_superblock(a, part.offset, part.size).mkfs_time == 1700000000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000001")
    build_sif(b, rootfs, deterministic=True)
    assert read_superblock(b, part.offset, part.size).mkfs_time == 1700000001
