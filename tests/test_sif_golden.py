"""Every SIF in shared/sif-golden read two ways (the library, and `shimrun inspect --json`) and
checked against the facts of the fixtures' README (tests/data/sif_golden_expected.json)."""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import signed_sifs
from conftest import GOLDEN

from shim.cli import inspect_cmd
from shim.errors import ImageError
from shim.image.sif import SifImage, primary_partition, read_sif, sif_to_dict
from shim.image.squashfs import read_superblock

EXPECTED = json.loads((Path(__file__).parent / "data" / "sif_golden_expected.json").read_text())
SIFS = sorted(p.relative_to(GOLDEN).as_posix() for p in GOLDEN.rglob("*.sif"))
Z_TIME = -62135596800


def utc(text: str | None) -> int | None:
    return None if text is None else calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


def object_bytes(rel: str, offset: int, size: int) -> bytes:
    with open(GOLDEN / rel, "rb") as f:
        f.seek(offset)
        return f.read(size)


def view_of(img: SifImage) -> dict[str, Any]:
    """The library's dataclasses as a plain dict, built here (not with sif_to_dict) so that the
    CLI's JSON and the dataclasses are checked independently against the same facts."""
    h = img.header
    prims = [d.id for d in img.descriptors if d.is_primary]
    return {
        "header": {**{k: getattr(h, k) for k in (
            "launch_script", "version", "arch", "arch_code", "created_at", "modified_at",
            "descriptors_free", "descriptors_total", "descriptors_offset", "descriptors_size",
            "data_offset", "data_size")}, "id": str(h.id) if h.id else None},
        "primary_partition": prims[0] if len(prims) == 1 else None,
        "descriptors": [{
            **{k: getattr(d, k) for k in (
                "id", "group", "offset", "size", "size_with_padding", "created_at", "modified_at",
                "uid", "gid", "name", "fstype", "parttype", "arch", "hash_type", "entity",
                "digest", "sbom_format", "crypto_format", "crypto_message", "group_id_raw",
                "linked_id_raw")},
            "type": d.type_name, "link": list(d.link) if d.link else None,
        } for d in img.descriptors],
    }


def inspect_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="shimrun")
    inspect_cmd.register(parser.add_subparsers(dest="subcommand", required=True))
    args = parser.parse_args(["inspect", "--json", str(path)])
    capsys.readouterr()
    assert args.func(args) == 0
    return json.loads(capsys.readouterr().out)


def check_against_readme(rel: str, view: dict[str, Any]) -> None:
    exp = EXPECTED["images"][rel]
    h = view["header"]
    assert h["version"] == "01"
    for key, want in exp["header"].items():
        if key == "siftool_data_size":
            assert inspect_cmd.format_size(h["data_size"]) == want, rel
        elif key == "id_prefix":
            assert h["id"] is not None and h["id"].startswith(want), rel
        elif key in ("created_at", "modified_at"):
            assert h[key] == utc(want), (rel, key)
        else:
            assert h[key] == want, (rel, key)

    by_id = {d["id"]: d for d in view["descriptors"]}
    assert len(by_id) == len(view["descriptors"]), f"{rel}: duplicate object IDs"
    want_ids = {e["id"] for e in exp["descriptors"]}
    layers = exp.get("layers")
    if layers:
        want_ids |= set(range(layers["first_id"], layers["last_id"] + 1))
    assert set(by_id) == want_ids, rel
    # Used slots and the header's free count agree in every fixture.
    assert h["descriptors_free"] == h["descriptors_total"] - len(by_id), rel
    for e in exp["descriptors"]:
        d = by_id[e["id"]]
        for key, want in e.items():
            if key == "start":
                assert d["offset"] == want, (rel, e["id"])
            elif key == "end":
                assert d["offset"] + d["size"] == want, (rel, e["id"])
            elif key in ("created_at", "modified_at"):
                assert d[key] == utc(want), (rel, e["id"], key)
            elif key == "digest_prefix":
                assert d["digest"].startswith(want), (rel, e["id"])
            elif key in ("data_hex", "data_file", "data_contains", "squashfs"):
                continue  # object contents: test_object_contents, test_squashfs_partitions
            else:
                assert d[key] == want, (rel, e["id"], key)
    if layers:
        pos = layers["start"]
        for i in range(layers["first_id"], layers["last_id"] + 1):
            d = by_id[i]
            assert d["type"] == layers["type"] and d["offset"] == pos, (rel, i)
            assert layers["size_min"] <= d["size"] <= layers["size_max"], (rel, i)
            pos += d["size"]
        assert pos == layers["end"]
    assert view["primary_partition"] == exp["primary"], rel
    if exp.get("oci"):  # OCI-SIF: group 1, no links, deterministic
        assert all(d["group"] == 1 and d["link"] is None for d in by_id.values())
        assert all(d["created_at"] is None for d in by_id.values())
    if exp.get("legacy"):  # v1 library: names "." / "part-signature", creator's uid/gid
        for d in by_id.values():
            assert d["name"] == ("part-signature" if d["type"] == "Signature" else "."), rel
            assert (d["uid"], d["gid"]) == (1000, 1000), rel
    if by_id:  # DataSize runs from DataOffset to the end of the furthest object
        assert h["data_offset"] + h["data_size"] == max(d["offset"] + d["size"]
                                                         for d in by_id.values()), rel


def test_fixture_set_is_complete() -> None:
    assert GOLDEN.is_dir(), f"{GOLDEN} missing (set SHIM_SHARED to the shared/ folder)"
    assert len(SIFS) == EXPECTED["sif_count"] == 29
    assert set(SIFS) == set(EXPECTED["images"])
    on_disk = sorted(p.relative_to(GOLDEN).as_posix() for p in GOLDEN.rglob("*")
                     if p.is_file() and p.name != "README.md")
    assert on_disk == sorted(EXPECTED["files"])
    assert len(on_disk) == 37  # the README's file list: 29 images, 4 object payloads, 4 public keys
    for rel, (size, sha) in EXPECTED["files"].items():
        data = (GOLDEN / rel).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha), rel


@pytest.mark.parametrize("rel", SIFS)
def test_read_sif_matches_readme(rel: str) -> None:
    img = read_sif(GOLDEN / rel)
    assert img.file_size == EXPECTED["files"][rel][0]
    check_against_readme(rel, view_of(img))


@pytest.mark.parametrize("rel", SIFS)
def test_inspect_json_matches_readme(rel: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = inspect_json(GOLDEN / rel, capsys)
    # Singularity stored the Docker config's execution part as oci-config.json: inspect reads it.
    origin = doc.pop("oci", None)
    if rel.startswith("apptainer/busybox"):
        assert origin is not None and (origin["entrypoint"], origin["cmd"]) == ([], ["sh"])
    else:
        assert origin is None
    check_against_readme(rel, doc)
    assert doc == json.loads(json.dumps(sif_to_dict(read_sif(GOLDEN / rel))))


@pytest.mark.parametrize("rel", SIFS)
def test_primary_partition(rel: str) -> None:
    img = read_sif(GOLDEN / rel)
    want = EXPECTED["images"][rel]["primary"]
    if want is None:
        with pytest.raises(ImageError, match="no primary system partition"):
            primary_partition(img)
    else:
        part = primary_partition(img)
        assert (part.id, part.fstype, part.parttype) == (want, "Squashfs", "PrimSys")
        assert part.arch == img.header.arch  # header Arch follows the primary partition


@pytest.mark.parametrize("rel", SIFS)
def test_raw_descriptor_encoding(rel: str) -> None:
    img = read_sif(GOLDEN / rel)
    for d in img.descriptors:
        # Groups: 0xf0000000 | g, exactly 0xf0000000 for "no group".
        assert d.group_id_raw == 0xF0000000 | (d.group or 0)
        if d.link is None:
            assert d.linked_id_raw == 0
        elif d.link[0] == "group":
            assert d.linked_id_raw == 0xF0000000 | d.link[1]
        else:
            assert d.linked_id_raw == d.link[1] < 0xF0000000
    deterministic = img.header.id is None and img.header.created_at is None
    if deterministic:  # Z-time, not 0, stored in the header and every descriptor
        raw = (GOLDEN / rel).read_bytes()
        assert struct.unpack_from("<qq", raw, 64) == (Z_TIME, Z_TIME)
        for d in img.descriptors:
            off = img.header.descriptors_offset + d.slot * 585
            assert struct.unpack_from("<qq", raw, off + 41) == (Z_TIME, Z_TIME)


@pytest.mark.parametrize("rel", SIFS)
def test_object_contents(rel: str) -> None:
    """OCI digests are sha256 of the blob, and payloads match the README's inputs."""
    img = read_sif(GOLDEN / rel)
    for d in img.descriptors:
        data = object_bytes(rel, d.offset, d.size)
        assert len(data) == d.size
        if d.type_name in ("OCI.Blob", "OCI.RootIndex"):
            assert d.digest == "sha256:" + hashlib.sha256(data).hexdigest(), (rel, d.id)
    for e in EXPECTED["images"][rel]["descriptors"]:
        d = img.descriptor(e["id"])
        assert d is not None
        data = object_bytes(rel, d.offset, d.size)
        if "data_hex" in e:
            assert data.hex() == e["data_hex"]
        if "data_file" in e:
            assert data == (GOLDEN / e["data_file"]).read_bytes()
        if "data_contains" in e:
            assert e["data_contains"].encode() in data
    if EXPECTED["images"][rel].get("busybox"):
        oci_config = json.loads(object_bytes(rel, img.descriptor(3).offset, img.descriptor(3).size))
        assert oci_config["Cmd"] == ["sh"] and oci_config["Env"][0].startswith("PATH=")
        assert b"BootStrap: docker" in object_bytes(rel, img.descriptor(1).offset, 39)


@pytest.mark.parametrize("rel", [r for r in SIFS if any(
    "squashfs" in e for e in EXPECTED["images"][r]["descriptors"])])
def test_squashfs_partitions(rel: str) -> None:
    img = read_sif(GOLDEN / rel)
    for e in EXPECTED["images"][rel]["descriptors"]:
        if "squashfs" not in e:
            continue
        d = img.descriptor(e["id"])
        if e["squashfs"] is None:  # the legacy images' 4-byte dummy "squashfs"
            with pytest.raises(ImageError, match=f"partition at offset {d.offset} is not squashfs"):
                read_superblock(GOLDEN / rel, d.offset, d.size)
            continue
        sb = read_superblock(GOLDEN / rel, d.offset, d.size)
        assert sb.version == tuple(e["squashfs"]["version"])
        assert sb.compression == e["squashfs"]["compression"]
        assert sb.block_size == e["squashfs"].get("block_size", sb.block_size)
        assert 0 < sb.bytes_used <= d.size and sb.inode_count > 0
        with open(GOLDEN / rel, "rb") as f:  # file objects work too
            assert read_superblock(f, d.offset, d.size) == sb
        if "entries" in e["squashfs"] and shutil.which("unsquashfs"):
            out = subprocess.run(["unsquashfs", "-o", str(d.offset), "-l", str(GOLDEN / rel)],
                                 capture_output=True, text=True, check=True).stdout
            names = [ln for ln in out.splitlines() if ln.startswith("squashfs-root")]
            assert len(names) == e["squashfs"]["entries"], rel
            assert "squashfs-root/.singularity.d/env/10-docker2singularity.sh" in names


@pytest.mark.parametrize("rel", [r for r in SIFS if EXPECTED["images"][r].get("header_digest")])
def test_signed_header_digest(rel: str) -> None:
    """Signatures cover LaunchScript | Magic | Version | ID: the README gives its digest."""
    raw = (GOLDEN / rel).read_bytes()
    digest = hashlib.sha256(raw[0:45] + raw[48:64]).hexdigest()
    head, tail = EXPECTED["images"][rel]["header_digest"]
    assert digest.startswith(head) and digest.endswith(tail)


def test_inspect_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="shimrun")
    inspect_cmd.register(parser.add_subparsers(dest="subcommand", required=True))
    args = parser.parse_args(["inspect", str(signed_sifs.SIFS / "two-groups-signed-pgp.sif")])
    assert args.func(args) == 0
    rule = "-" * 78
    assert capsys.readouterr().out == f"""\
Version:              01
Primary Architecture: 386
Descriptors Free:     43
Descriptors Total:    48
Descriptors Offset:   4096
Descriptors Size:     27 KiB
Data Offset:          32176
Data Size:            266 KiB

{rule}
ID   |GROUP   |LINK    |SIF POSITION (start-end)  |TYPE
{rule}
1    |1       |NONE    |32768-32772               |FS (Raw/System/386)
2    |1       |NONE    |36864-40960               |FS (Squashfs/*System/386)
3    |2       |NONE    |40960-303104              |FS (Ext3/System/amd64)
4    |NONE    |1 (G)   |303104-304152             |Signature (SHA-256)
5    |NONE    |2 (G)   |304152-305001             |Signature (SHA-256)
"""


def test_inspect_human_output_legacy(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="shimrun")
    inspect_cmd.register(parser.add_subparsers(dest="subcommand", required=True))
    args = parser.parse_args(["inspect", str(GOLDEN / "apptainer/busybox_amd64.sif")])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:6] == [
        "Launch Script:        #!/usr/bin/env run-singularity",
        "Version:              01",
        "Primary Architecture: amd64",
        "ID:                   4f307b4c-58a8-4753-9c0f-21dceefed4a6",
        "Created At:           2021-08-02 19:09:36 +0000 UTC",
        "Modified At:          2021-08-02 19:09:36 +0000 UTC",
    ]
    assert "4    |1       |NONE    |45056-790528              |FS (Squashfs/*System/amd64)" in out
    assert "5    |NONE    |1 (G)   |790528-792293             |Signature (SHA-256)" in out
