"""Damaged and unsupported SIFs: each must give one ImageError line naming the file, the defect
and a fix, never a traceback or a misleading success."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from conftest import GOLDEN
from signed_sifs import SIFS

from shim.errors import ExitCode, ImageError
from shim.image.sif import primary_partition, read_sif
from shim.image.squashfs import read_superblock

ONE_GROUP = SIFS / "one-group.sif"  # 1: FS Raw/System, 2: FS Squashfs/PrimSys
TWO_GROUPS = SIFS / "two-groups.sif"  # ... 3: FS Ext3/System, group 2
INT64_MAX = 2**63 - 1
TABLE = 4096
SLOT = 585
# Field offsets inside a descriptor (spec §1.4) and the header (§1.2).
D_USED, D_OFFSET, D_SIZE, D_EXTRA = 4, 17, 25, 201
H_VERSION, H_TOTAL, H_DOFF, H_DSIZE = 42, 88, 96, 104


def image(tmp_path: Path, src: Path = ONE_GROUP, *, truncate: int | None = None,
          patches: tuple[tuple[int, str, object], ...] = ()) -> Path:
    """A copy of a golden image, cut at `truncate` bytes, with struct fields overwritten."""
    data = bytearray(src.read_bytes())
    for offset, fmt, value in patches:
        struct.pack_into(fmt, data, offset, value)
    if truncate is not None:
        del data[truncate:]
    out = tmp_path / "bad.sif"
    out.write_bytes(bytes(data))
    return out


def slot(i: int, field: int) -> int:
    return TABLE + i * SLOT + field


def read_error(path: Path) -> str:
    with pytest.raises(ImageError) as info:
        read_sif(path)
    err = info.value
    assert err.code == ExitCode.IMAGE
    text = str(err)
    assert "\n" not in text and str(path) in text and err.hint, text
    return text


def test_not_a_sif(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("just some text, long enough to have an offset 32 and more bytes\n" * 4)
    assert f"{p}: not a SIF file (no SIF_MAGIC at offset 32)" in read_error(p)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.sif"
    p.write_bytes(b"")
    assert "not a SIF file (no SIF_MAGIC at offset 32)" in read_error(p)


def test_truncated_header(tmp_path: Path) -> None:
    assert "truncated SIF: header needs 128 bytes but file is 100 bytes" in read_error(
        image(tmp_path, truncate=100))


def test_truncated_descriptor_table(tmp_path: Path) -> None:
    assert "truncated SIF: descriptor table ends at 32176 but file is 10000 bytes" in read_error(
        image(tmp_path, truncate=10000))


def test_object_past_eof(tmp_path: Path) -> None:
    msg = read_error(image(tmp_path, truncate=40000))
    assert "truncated SIF: object 2 (FS, slot 1) ends at 40960 but file is 40000 bytes" in msg


def test_int64_overflow_object_offset(tmp_path: Path) -> None:
    msg = read_error(image(tmp_path, patches=((slot(1, D_OFFSET), "<q", INT64_MAX - 10),)))
    assert f"object 2 (FS, slot 1) offset {INT64_MAX - 10} + size 4096 overflows int64" in msg


def test_negative_object_size(tmp_path: Path) -> None:
    msg = read_error(image(tmp_path, patches=((slot(0, D_SIZE), "<q", -1),)))
    assert "object 1 (FS, slot 0) has offset 32768 and size -1" in msg


def test_int64_overflow_table_offset(tmp_path: Path) -> None:
    msg = read_error(image(tmp_path, patches=((H_DOFF, "<q", INT64_MAX - 100),)))
    assert "descriptor table offset" in msg and "overflows int64" in msg


def test_bad_version(tmp_path: Path) -> None:
    msg = read_error(image(tmp_path, patches=((H_VERSION, "3s", b"02\0"),)))
    assert "unsupported SIF version '02' (only '01' exists)" in msg


def test_table_size_mismatch(tmp_path: Path) -> None:
    msg = read_error(image(tmp_path, patches=((H_DSIZE, "<q", 28081),)))
    assert "descriptor table size 28081 is not 48 x 585 = 28080" in msg


def test_table_overlaps_header(tmp_path: Path) -> None:
    msg = read_error(image(tmp_path, patches=((H_DOFF, "<q", 64),)))
    assert "descriptor table offset 64 overlaps the 128-byte header" in msg


@pytest.mark.parametrize("total", [-1, 65537, 2**40])
def test_descriptor_count_out_of_range(tmp_path: Path, total: int) -> None:
    msg = read_error(image(tmp_path, patches=((H_TOTAL, "<q", total),)))
    assert f"descriptor count {total} is outside 0..65536" in msg


def test_unused_slots_are_not_checked(tmp_path: Path) -> None:
    """Garbage in a slot whose Used flag is 0 is ignored, as DescriptorsFree is not trusted."""
    p = image(tmp_path, patches=((slot(7, D_OFFSET), "<q", INT64_MAX), (slot(7, D_SIZE), "<q", -5)))
    assert [d.id for d in read_sif(p).descriptors] == [1, 2]
    p = image(tmp_path, patches=((slot(0, D_USED), "B", 0),))  # a deleted object
    assert [d.id for d in read_sif(p).descriptors] == [2]


def test_data_offset_past_eof_is_fine(tmp_path: Path) -> None:
    img = read_sif(GOLDEN / "apptainer" / "legacy-empty.sif")
    assert img.header.data_offset > img.file_size and img.descriptors == ()


def test_huge_sparse_file_reads_only_header_and_table(tmp_path: Path) -> None:
    """A 64 GiB (sparse) image opens instantly: the reader never reads object data."""
    p = image(tmp_path, patches=((slot(1, D_OFFSET), "<q", 60 << 30),))
    os.truncate(p, 64 << 30)
    part = primary_partition(read_sif(p))
    assert (part.offset, part.size) == (60 << 30, 4096)


def primary_error(path: Path) -> str:
    img = read_sif(path)
    with pytest.raises(ImageError) as info:
        primary_partition(img)
    text = str(info.value)
    assert "\n" not in text and str(path) in text and info.value.hint
    return text


def test_no_primary_partition(tmp_path: Path) -> None:
    p = image(tmp_path, patches=((slot(1, D_EXTRA + 4), "<i", 1),))  # PrimSys -> System
    assert "no primary system partition" in primary_error(p)


def test_two_primary_partitions(tmp_path: Path) -> None:
    p = image(tmp_path, patches=((slot(0, D_EXTRA + 4), "<i", 2),))  # System -> PrimSys
    assert "2 primary partitions (objects 1, 2)" in primary_error(p)


def test_ext3_primary(tmp_path: Path) -> None:
    p = image(tmp_path, TWO_GROUPS, patches=((slot(1, D_EXTRA + 4), "<i", 1),
                                              (slot(2, D_EXTRA + 4), "<i", 2)))
    msg = primary_error(p)
    assert "primary partition (object 3) is Ext3 (fstype 2), which shimrun cannot mount" in msg
    assert "apptainer build" in msg


@pytest.mark.parametrize(("fstype", "name"), [(3, "Archive"), (4, "Raw"),
                                              (5, "Encrypted squashfs"),
                                              (6, "Gocryptfs squashfs"), (99, "Unknown")])
def test_unsupported_primary_fstypes(tmp_path: Path, fstype: int, name: str) -> None:
    p = image(tmp_path, patches=((slot(1, D_EXTRA), "<i", fstype),))
    assert f"is {name} (fstype {fstype}), which shimrun cannot mount" in primary_error(p)


def test_squashfs_wrong_offset() -> None:
    with pytest.raises(ImageError, match=r"partition at offset 4096 is not squashfs"):
        read_superblock(GOLDEN / "apptainer" / "busybox_amd64.sif", 4096, 745472)


def test_squashfs_bytes_used_beyond_partition() -> None:
    with pytest.raises(ImageError, match="squashfs claims 744412 bytes but the partition holds 1096"):
        read_superblock(GOLDEN / "apptainer" / "busybox_amd64.sif", 45056, 1000 + 96)


def test_squashfs_bad_version_and_compression(tmp_path: Path) -> None:
    sb = bytearray((SIFS / "input" / "root.squashfs").read_bytes())
    p = tmp_path / "v3.sqfs"
    struct.pack_into("<HH", sb, 28, 3, 1)
    p.write_bytes(sb)
    with pytest.raises(ImageError, match=r"is squashfs 3\.1, but only 4\.0 can be mounted"):
        read_superblock(p, 0, len(sb))
    struct.pack_into("<HH", sb, 28, 4, 0)
    struct.pack_into("<H", sb, 20, 9)
    p.write_bytes(sb)
    with pytest.raises(ImageError, match="unknown compression id 9"):
        read_superblock(p, 0, len(sb))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read image .*No such file"):
        read_sif(tmp_path / "nope.sif")
