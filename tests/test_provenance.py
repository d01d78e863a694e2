"""The provenance record of a run (--provenance, the site's [provenance] dir), `check --against`,
and SBOM objects: real launches as an ordinary user, the records read back as JSON and their
digests computed here independently."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from oci import sif_rootfs
from signed_sifs import SIFS

from shim.errors import ExitCode
from shim.image.sif import read_sif
from shim.record.format import NO_RECORD_CACHE

SBOM = SIFS / "input" / "sbom.cdx.json"


def sha256_of(path: Path, offset: int = 0, size: int | None = None) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return hashlib.sha256(f.read() if size is None else f.read(size)).hexdigest()


def one_record(directory: Path) -> dict:
    (found,) = [p for p in directory.iterdir() if p.suffix == ".json"]
    return json.loads(found.read_text())


@pytest.fixture
def sbom_sif(shim, user_dir: Path, busybox_sif: Path) -> Path:
    """A SIF `shimrun build --sbom` made of the busybox image's tree, with the sylabs test SBOM."""
    rootfs = sif_rootfs(busybox_sif, user_dir / "rootfs")
    out = user_dir / "app.sif"
    r = subprocess.run([shim.shimrun, "build", "--sbom", SBOM, out, rootfs], capture_output=True, text=True,
                       env=shim.env(), check=False)
    assert r.returncode == 0, r.stderr
    out.chmod(0o644)
    return out


def test_a_run_leaves_a_record_with_its_exit_status(shim, user_dir: Path, busybox_sif: Path):
    record = user_dir / "run.json"
    for expect_record in ("planned", "cached"):
        r = shim.run(["--provenance", record, busybox_sif, "sh", "-c", "echo out; exit 3"], cwd=user_dir)
        assert r.returncode == 3 and r.stdout == "out\n", r.stderr
        doc = json.loads(record.read_text())
        if not os.environ.get(NO_RECORD_CACHE):
            assert doc["run"]["record"] == expect_record
    assert doc["schema"] == "shim-provenance/1"
    run = doc["run"]
    assert run["exit"] == {"status": 3}
    assert run["argv"][1:] == ["--provenance", str(record), str(busybox_sif), "sh", "-c", "echo out; exit 3"]
    assert run["cwd"] == str(user_dir) and run["uid"] == shim.user.uid and run["slurm"] is None
    assert run["start"] <= run["end"] and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", run["end"])
    assert doc["command"] == ["sh", "-c", "echo out; exit 3"]
    image = doc["image"]
    assert image["kind"] == "sif" and image["path"] == str(busybox_sif)
    img = read_sif(busybox_sif)
    assert {o["id"]: o["sha256"] for o in image["sif"]["objects"]} == {
        d.id: sha256_of(busybox_sif, d.offset, d.size) for d in img.descriptors}
    # the image carries a real Apptainer signature by a key this test does not trust
    assert image["signatures"]["ok"] is False
    assert doc["host"]["kernel"] == os.uname().release
    assert doc["host"]["cpu"]["arch"] == "amd64" or doc["host"]["machine"] != "x86_64"
    assert not [p for p in user_dir.iterdir() if ".tmp." in p.name]


def test_a_killed_app_is_recorded_with_its_signal(shim, user_dir: Path, busybox_sif: Path):
    record = user_dir / "killed.json"
    r = shim.run(["--provenance", record, busybox_sif, "sh", "-c", "kill -TERM $$"])
    assert r.returncode == -15 or r.returncode == 143, (r.returncode, r.stderr)
    assert json.loads(record.read_text())["run"]["exit"] == {"status": 143, "signal": "SIGTERM"}


def test_a_signal_to_shimrun_reaches_the_app_and_is_recorded(shim, user_dir: Path, busybox_sif: Path):
    import signal
    import time

    record = user_dir / "term.json"
    p = shim.popen(["--provenance", record, busybox_sif, "sh", "-c", "echo up; sleep 30"])
    assert p.stdout.readline() == "up\n"
    time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=10)
    assert p.returncode == -signal.SIGTERM
    assert json.loads(record.read_text())["run"]["exit"]["signal"] == "SIGTERM"


def test_a_directory_gets_one_record_per_run(shim, user_dir: Path, busybox_sif: Path):
    for _ in range(2):
        assert shim.run(["--provenance", user_dir, busybox_sif, "true"]).returncode == 0
    names = sorted(p.name for p in user_dir.iterdir())
    assert len(names) == 2 and all(re.fullmatch(r"\d{8}T\d{6}Z\.[^.]+\.\d+\.json", n) for n in names), names


def test_an_unwritable_place_is_refused_before_the_app_starts(shim, user_dir: Path, busybox_sif: Path):
    marker = user_dir / "ran"
    r = shim.run(["--provenance", "/nonexistent/run.json", "--bind", user_dir, busybox_sif, "touch", marker])
    assert r.returncode == ExitCode.USAGE and not marker.exists()
    assert r.stderr.count("\n") == 1 and "cannot write the provenance record in /nonexistent" in r.stderr


def test_the_site_directory_gets_every_run(shim, user_dir: Path, busybox_sif: Path):
    conf = user_dir / "conf"
    conf.mkdir()
    records = user_dir / "records"
    (conf / "shim.toml").write_text(f'[provenance]\ndir = "{records}"\n')
    r = shim.run(["--conf", conf, busybox_sif, "true"])
    assert r.returncode == ExitCode.CONFIG and "[provenance] dir must exist" in r.stderr, r.stderr
    records.mkdir()
    records.chmod(0o1777)  # as a site makes it: every user writes there
    assert shim.run(["--conf", conf, busybox_sif, "true"]).returncode == 0
    assert one_record(records)["site"]["config"] == str(conf / "shim.toml")


def test_a_relative_site_directory_is_a_configuration_error(shim, user_dir: Path, busybox_sif: Path):
    conf = user_dir / "conf"
    conf.mkdir()
    (conf / "shim.toml").write_text('[provenance]\ndir = "records"\n')
    r = shim.run(["--conf", conf, busybox_sif, "true"])
    assert r.returncode == ExitCode.CONFIG and "provenance.dir = 'records' is not an absolute path" in r.stderr


def test_check_against_the_same_image_finds_no_difference(shim, user_dir: Path, busybox_sif: Path):
    record = user_dir / "r.json"
    assert shim.run(["--provenance", record, busybox_sif, "true"]).returncode == 0
    r = shim.run(["check", busybox_sif, "--against", record])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the same computation would run" in r.stdout


def test_check_against_a_rebuilt_image_names_the_object(shim, user_dir: Path, sbom_sif: Path):
    record = user_dir / "r.json"
    assert shim.run(["--provenance", record, sbom_sif, "true"]).returncode == 0
    changed = user_dir / "changed.sif"
    shutil.copy(sbom_sif, changed)
    part = next(d for d in read_sif(changed).descriptors if d.is_primary)
    with open(changed, "r+b") as f:  # a byte of the squashfs's padding at its end: it still mounts
        f.seek(part.offset + part.size - 1)
        last = f.read(1)
        f.seek(part.offset + part.size - 1)
        f.write(bytes([last[0] ^ 0xFF]))
    changed.chmod(0o644)
    r = shim.run(["check", changed, "--against", record])
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"differs: image object {part.id} (FS" in r.stdout
    assert "note: image path" in r.stdout


def test_check_against_what_is_not_a_record(shim, user_dir: Path, busybox_sif: Path):
    bad = user_dir / "bad.json"
    bad.write_text("{}")
    for target, says in ((bad, "is not a shim provenance record"), (user_dir / "none.json", "cannot read")):
        r = shim.run(["check", busybox_sif, "--against", target])
        assert r.returncode == ExitCode.USAGE and says in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_inspect_lists_and_prints_the_sbom(shim):
    sif = SIFS / "one-object-sbom.sif"
    r = shim.run(["inspect", sif])
    assert "SBOM: object 1, cyclonedx-json, 454 B" in r.stdout
    r = subprocess_bytes(shim, ["inspect", "--sbom", sif])
    assert r == SBOM.read_bytes()
    r = shim.run(["inspect", "--sbom", SIFS / "one-group.sif"])
    assert r.returncode == ExitCode.USAGE and "has no SBOM object" in r.stderr


def subprocess_bytes(shim, args) -> bytes:
    return subprocess.run([shim.shimrun, *map(str, args)], check=True, capture_output=True,
                          env=shim.env()).stdout


def test_build_stores_the_sbom_and_the_record_names_it(shim, user_dir: Path, sbom_sif: Path):
    (sbom,) = [d for d in read_sif(sbom_sif).descriptors if d.sbom_format]
    assert sbom.sbom_format == "cyclonedx-json" and struct.unpack("<i", sbom.extra[:4]) == (1,)
    assert subprocess_bytes(shim, ["inspect", "--sbom", sbom_sif]) == SBOM.read_bytes()
    record = user_dir / "r.json"
    assert shim.run(["--provenance", record, sbom_sif, "true"]).returncode == 0
    (named,) = json.loads(record.read_text())["image"]["sif"]["sboms"]
    assert named == {"id": sbom.id, "format": "cyclonedx-json", "size": SBOM.stat().st_size, "name": "sbom.cdx.json",
                     "sha256": hashlib.sha256(SBOM.read_bytes()).hexdigest()}


def test_build_refuses_an_sbom_of_unknown_format(shim, user_dir: Path, busybox_sif: Path):
    junk = user_dir / "notes.txt"
    junk.write_text("not an SBOM\n")
    r = shim.run(["build", "--sbom", junk, user_dir / "o.sif", user_dir])
    assert r.returncode == ExitCode.USAGE and "cannot tell the format" in r.stderr and not (user_dir / "o.sif").exists()
