"""`shimrun verify`: the golden signed SIFs (written by sylabs/sif and Singularity) verify with the
public test keys, and every tampered copy, wrong key, missing or legacy-only signature fails
naming what is wrong. Real gpg and real `cryptography`, no mocks: gpg is also the oracle for what
an OpenPGP signature says."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import struct
import time
from pathlib import Path

import pytest
from conftest import GOLDEN
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from signed_sifs import (
    ALL_KEYS,
    ED25519_ID,
    FPR,
    PEMS,
    PGP_RING,
    RSA_ID,
    SIFS,
    copy,
    one_line_error,
    shimrun,
    signature,
)

from shim.errors import ExitCode, ShimError
from shim.image import sif
from shim.image.sif_append import NewObject, append_objects
from shim.verify import TrustedKeys, VerifyOptions, key_files, trusted_keys, verify_image
from shim.verify import integrity as integrity_mod
from shim.verify.sign import PemSigner, sign_image

pytestmark = pytest.mark.usefixtures("nothing_left_behind")
LEGACY = VerifyOptions(legacy_insecure=True)
TABLE, SLOT = 4096, 585

# Signed fixture -> (verdict without --legacy-insecure, with it, kind of every signature, signers).
SIGNED = {
    "one-group-signed-pgp.sif": (True, True, "pgp", (FPR,)),
    "two-groups-signed-pgp.sif": (True, True, "pgp", (FPR,)),
    "one-group-signed-dsse.sif": (True, True, "dsse", (RSA_ID, ED25519_ID)),
    "two-groups-signed-dsse.sif": (True, True, "dsse", (RSA_ID, ED25519_ID)),
    "one-group-signed-legacy.sif": (False, True, "legacy-pgp", (FPR,)),
    "one-group-signed-legacy-all.sif": (False, True, "legacy-pgp", (FPR,)),
    "one-group-signed-legacy-group.sif": (False, True, "legacy-pgp", (FPR,)),
    "two-groups-signed-legacy.sif": (False, True, "legacy-pgp", (FPR,)),
    "two-groups-signed-legacy-all.sif": (False, True, "legacy-pgp", (FPR,)),
    "two-groups-signed-legacy-group.sif": (False, True, "legacy-pgp", (FPR,)),
}
UNSIGNED = [SIFS / "one-group.sif", SIFS / "two-groups.sif", GOLDEN / "apptainer" / "legacy-one-group.sif"]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def slot_offset(d: sif.SifDescriptor) -> int:
    return TABLE + d.slot * SLOT


def public_pem(tmp_path: Path, name: str = "other.pem") -> Path:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    out = tmp_path / name
    out.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return out


# ---- the golden fixtures --------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SIGNED))
def test_every_signed_fixture(name: str) -> None:
    modern_ok, legacy_ok, kind, signers = SIGNED[name]
    report = verify_image(str(SIFS / name), ALL_KEYS)
    assert report.ok is modern_ok, report.lines()
    assert {v.kind for v in report.signatures} == {kind}
    assert all(v.valid and v.digests_match for v in report.signatures), report.lines()
    assert all(set(v.signers) == set(signers) for v in report.signatures)
    if modern_ok:
        assert report.signers() == tuple(sorted(signers)) and report.reason() == ""
    else:
        assert report.signers() == ()  # legacy signatures do not count, so nobody vouches for it
        assert "legacy signatures count only with --legacy-insecure" in report.reason()
        assert "group 1 has no signature" in report.reason()
    with_legacy = verify_image(str(SIFS / name), ALL_KEYS, LEGACY)
    assert with_legacy.ok is legacy_ok and with_legacy.signers() == tuple(sorted(signers))


def test_what_each_signature_covers() -> None:
    two = verify_image(str(SIFS / "two-groups-signed-pgp.sif"), ALL_KEYS)
    assert [(v.id, v.target, v.covers) for v in two.signatures] == [(4, "group 1", (1, 2)), (5, "group 2", (3,))]
    assert two.checked == ("group 1", "group 2")
    legacy = verify_image(str(SIFS / "two-groups-signed-legacy-all.sif"), ALL_KEYS, LEGACY)
    assert [(v.target, v.covers) for v in legacy.signatures] == [("object 1", (1,)), ("object 2", (2,))]
    group = verify_image(str(SIFS / "one-group-signed-legacy-group.sif"), ALL_KEYS, LEGACY)
    assert [(v.target, v.covers) for v in group.signatures] == [("group 1", (1, 2))]


@pytest.mark.parametrize("name", sorted(SIGNED))
def test_cli_exit_codes_of_the_fixtures(name: str) -> None:
    modern_ok, legacy_ok, _kind, _signers = SIGNED[name]
    keys = ["--keyring", PGP_RING, *(x for p in PEMS for x in ("--key", p))]
    for ok, extra in ((modern_ok, []), (legacy_ok, ["--legacy-insecure"])):
        p = shimrun("verify", *keys, *extra, SIFS / name)
        assert p.returncode == (0 if ok else ExitCode.UNTRUSTED), p.stdout + p.stderr
        lines = p.stdout.splitlines()
        assert len(lines) == len(signature_descriptors_of(SIFS / name)) + 1 and p.stderr == ""
        assert lines[-1].startswith("verified: " if ok else "not verified: ")
        if "pgp" in name or "legacy" in name:
            assert all(FPR in line for line in lines[:-1])


def signature_descriptors_of(path: Path) -> list[sif.SifDescriptor]:
    return [d for d in sif.read_sif(path).descriptors if d.data_type == sif.DATA_SIGNATURE]


@pytest.mark.parametrize("path", UNSIGNED, ids=lambda p: p.name)
def test_unsigned_images_do_not_verify(path: Path) -> None:
    report = verify_image(str(path), ALL_KEYS)
    assert not report.ok and report.signatures == ()
    assert report.reason() == "group 1 has no signature: the image is not signed"
    assert not verify_image(str(path), ALL_KEYS, LEGACY).ok
    p = shimrun("verify", "--keyring", PGP_RING, path)
    assert p.returncode == ExitCode.UNTRUSTED and "not signed" in p.stdout


def test_busybox_is_intact_but_by_an_unknown_signer() -> None:
    """Singularity 3.8 signed it with a key nobody gave us: the digests match, the signer is unknown."""
    report = verify_image(str(GOLDEN / "apptainer" / "busybox_amd64.sif"), ALL_KEYS)
    (v,) = report.signatures
    unknown = "signed by unknown key 1137E72E6816BFC06D9CAA0D15F3F4F4F14B03B2"
    assert (v.kind, v.valid, v.digests_match, v.reason, v.covers) == ("pgp", False, True, unknown, (1, 2, 3, 4))
    assert not report.ok and report.reason() == f"group 1: {unknown}" and report.signers() == ()


def test_without_keys_every_signature_is_by_an_unknown_key(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "shim.toml").write_text("")
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_CONFIG_HOME="")
    p = shimrun("verify", "--conf", conf, SIFS / "one-group-signed-pgp.sif", env=env)
    assert p.returncode == ExitCode.UNTRUSTED
    assert f"signed by unknown key {FPR}" in p.stdout and "no trusted keys: give --key PEM" in p.stdout
    p = shimrun("verify", "--conf", conf, SIFS / "one-group-signed-dsse.sif", env=env)
    assert f"signed by unknown key {ED25519_ID}, {RSA_ID}" in p.stdout


# ---- tampered copies ------------------------------------------------------------------

def partition(path: Path) -> sif.SifDescriptor:
    return sif.primary_partition(sif.read_sif(path))


@pytest.mark.parametrize("name", ["one-group-signed-pgp.sif", "one-group-signed-dsse.sif",
                                  "two-groups-signed-pgp.sif"])
def test_a_changed_partition_byte_names_the_object(tmp_path: Path, name: str) -> None:
    img = copy(tmp_path, name)
    part = partition(img)
    flip(img, part.offset + part.size // 2)
    report = verify_image(str(img), ALL_KEYS)
    assert not report.ok and report.reason() == "group 1: object 2 changed after signing"
    (v, *_) = report.signatures
    assert not v.valid and v.digests_match is False and v.signers  # the signature itself is good
    p = shimrun("verify", "--keyring", PGP_RING, "--key", PEMS[0], img)
    assert p.returncode == ExitCode.UNTRUSTED and "not verified: group 1: object 2 changed after signing" in p.stdout


def test_a_changed_partition_byte_under_a_legacy_signature(tmp_path: Path) -> None:
    img = copy(tmp_path, "one-group-signed-legacy.sif")
    part = partition(img)
    flip(img, part.offset + 1)
    report = verify_image(str(img), ALL_KEYS, LEGACY)
    assert not report.ok and report.reason() == "object 2: object 2 changed after signing"


@pytest.mark.parametrize("name", ["one-group-signed-pgp.sif", "one-group-signed-dsse.sif"])
def test_changed_descriptor_and_header_bytes(tmp_path: Path, name: str) -> None:
    img = copy(tmp_path, name, SIFS)
    flip(img, TABLE + 0 * SLOT + 73 + 5)   # a byte of descriptor 1's name
    assert verify_image(str(img), ALL_KEYS).reason() == "group 1: descriptor 1 changed after signing"
    img = copy(tmp_path, name, SIFS)
    flip(img, 3)                            # a byte of the launch script
    assert verify_image(str(img), ALL_KEYS).reason() == "group 1: header changed after signing"


@pytest.mark.parametrize("name", ["one-group-signed-pgp.sif", "one-group-signed-dsse.sif"])
def test_bytes_no_signature_covers_may_change(tmp_path: Path, name: str) -> None:
    """DataSize, the architecture and the padding before a partition are not signed (as Go)."""
    for offset in (120, 46, partition(SIFS / name).offset - 1):
        img = copy(tmp_path, name)
        flip(img, offset)
        assert verify_image(str(img), ALL_KEYS).ok, offset


def test_legacy_signatures_do_not_protect_descriptors_or_the_header(tmp_path: Path) -> None:
    for offset in (TABLE + 73, 3):
        img = copy(tmp_path, "one-group-signed-legacy.sif")
        flip(img, offset)
        assert verify_image(str(img), ALL_KEYS, LEGACY).ok


@pytest.mark.parametrize("name", ["one-group-signed-pgp.sif", "one-group-signed-dsse.sif",
                                  "one-group-signed-legacy.sif"])
def test_a_changed_signature_body_is_a_bad_signature(tmp_path: Path, name: str) -> None:
    img = copy(tmp_path, name)
    sig = signature(img)
    data = img.read_bytes()
    if "dsse" in name:   # both of its signatures (one broken signature of two is the next test)
        first = data.index(b'"sig":"', sig.offset)
        spots = [first + 20, data.index(b'"sig":"', first + 1) + 20]
    else:
        spots = [data.index(b"-----BEGIN PGP SIGNATURE-----", sig.offset) + 40]
    for spot in spots:
        flip(img, spot)
    report = verify_image(str(img), ALL_KEYS, LEGACY if "legacy" in name else VerifyOptions())
    (v,) = report.signatures
    assert not report.ok and not v.valid and v.reason.startswith("bad signature"), v.reason
    assert report.reason().endswith(v.reason)


def test_dsse_with_one_corrupted_signature_of_two_still_verifies(tmp_path: Path) -> None:
    img = copy(tmp_path, "one-group-signed-dsse.sif")
    sig = signature(img)
    flip(img, img.read_bytes().index(b'"sig":"', sig.offset) + 20)   # the first: ed25519
    report = verify_image(str(img), ALL_KEYS)
    assert report.ok and report.signers() == (RSA_ID,)
    only_ed = verify_image(str(img), TrustedKeys(pem_keys=(PEMS[0],)))
    assert not only_ed.ok and only_ed.reason() == "group 1: bad signature"


def test_a_changed_dsse_payload_is_a_bad_signature(tmp_path: Path) -> None:
    img = copy(tmp_path, "one-group-signed-dsse.sif")
    sig = signature(img)
    flip(img, img.read_bytes().index(b'"payload":"', sig.offset) + 11 + 40)
    report = verify_image(str(img), ALL_KEYS)
    assert not report.ok and report.reason() == "group 1: bad signature"
    assert report.signatures[0].digests_match is None   # a payload nobody signed is not read


def test_a_key_nobody_trusts(tmp_path: Path) -> None:
    other = public_pem(tmp_path)
    report = verify_image(str(SIFS / "one-group-signed-dsse.sif"), TrustedKeys(pem_keys=(str(other),)))
    assert not report.ok and report.reason() == f"group 1: signed by unknown key {ED25519_ID}, {RSA_ID}"
    p = shimrun("verify", "--key", other, SIFS / "one-group-signed-pgp.sif")
    assert p.returncode == ExitCode.UNTRUSTED and f"signed by unknown key {FPR}" in p.stdout


def test_the_descriptor_must_name_the_pgp_signer(tmp_path: Path) -> None:
    img = copy(tmp_path, "one-group-signed-pgp.sif")
    sig = signature(img)
    flip(img, slot_offset(sig) + 201 + 4)   # the first byte of the Entity (not itself signed)
    report = verify_image(str(img), ALL_KEYS)
    assert not report.ok
    assert report.reason() == (f"group 1: the descriptor names signer 13{FPR[2:]} but {FPR} signed it")


def unuse(path: Path, d: sif.SifDescriptor) -> None:
    data = bytearray(path.read_bytes())
    data[slot_offset(d) + 4] = 0
    path.write_bytes(bytes(data))


def test_an_unsigned_second_group(tmp_path: Path) -> None:
    img = copy(tmp_path, "two-groups-signed-pgp.sif")
    unuse(img, signature(img, 1))   # drop group 2's signature
    report = verify_image(str(img), ALL_KEYS)
    assert not report.ok and report.reason() == "group 2 has no signature"
    assert verify_image(str(img), ALL_KEYS, VerifyOptions(group=1)).ok
    assert not verify_image(str(img), ALL_KEYS, VerifyOptions(group=2)).ok
    assert verify_image(str(img), ALL_KEYS, VerifyOptions(object_id=2)).ok
    assert verify_image(str(img), ALL_KEYS, VerifyOptions(object_id=3)).reason() == "object 3 not signed"
    p = shimrun("verify", "--keyring", PGP_RING, "--group-id", 1, img)
    assert p.returncode == 0, p.stdout
    p = shimrun("verify", "--keyring", PGP_RING, img)
    assert p.returncode == ExitCode.UNTRUSTED and p.stdout.splitlines()[-1] == "not verified: group 2 has no signature"


def test_an_object_added_after_signing(tmp_path: Path) -> None:
    img = copy(tmp_path, "one-group-signed-pgp.sif")
    (new,) = append_objects(str(img), [NewObject(sif.DATA_GENERIC_JSON, b"{}", sif.GROUP_MASK | 1, 0)])
    report = verify_image(str(img), ALL_KEYS)
    assert report.reason() == f"group 1: object {new} not signed"
    # --id asks about one object only: the signature need not cover the whole group then
    assert verify_image(str(img), ALL_KEYS, VerifyOptions(object_id=2)).ok


def test_an_object_in_no_group_cannot_be_signed(tmp_path: Path) -> None:
    img = copy(tmp_path, "one-group-signed-pgp.sif")
    (new,) = append_objects(str(img), [NewObject(sif.DATA_GENERIC_JSON, b"{}", sif.GROUP_MASK, 0)])
    report = verify_image(str(img), ALL_KEYS)
    assert report.reason() == f"object {new} (JSON.Generic) is in no object group, so no signature can cover it"


def test_legacy_selection() -> None:
    """--legacy-insecure checks the primary partition (Apptainer); --all every object; a group-linked
    legacy signature covers the primary partition too (Apptainer would want --group-id 1)."""
    legacy = str(SIFS / "one-group-signed-legacy.sif")
    assert verify_image(legacy, ALL_KEYS, LEGACY).checked == ("object 2",)
    everything = VerifyOptions(legacy_insecure=True, all_objects=True)
    assert verify_image(legacy, ALL_KEYS, everything).reason() == "object 1 not signed"
    assert verify_image(str(SIFS / "one-group-signed-legacy-all.sif"), ALL_KEYS, everything).ok
    assert not verify_image(str(SIFS / "two-groups-signed-legacy-all.sif"), ALL_KEYS, everything).ok
    assert verify_image(str(SIFS / "one-group-signed-legacy-group.sif"), ALL_KEYS, LEGACY).ok
    group = VerifyOptions(legacy_insecure=True, group=1)
    assert verify_image(str(SIFS / "two-groups-signed-legacy-group.sif"), ALL_KEYS, group).ok
    assert not verify_image(legacy, ALL_KEYS, group).ok


def test_modern_signatures_count_with_legacy_insecure_too() -> None:
    report = verify_image(str(SIFS / "two-groups-signed-pgp.sif"), ALL_KEYS,
                          VerifyOptions(legacy_insecure=True, all_objects=True))
    assert report.ok and report.checked == ("object 1", "object 2", "object 3")


# ---- bad input: one line, exit code, nothing left behind ----------------------------------

def test_bad_input(tmp_path: Path) -> None:
    good = SIFS / "one-group-signed-pgp.sif"
    text = tmp_path / "notes.txt"
    text.write_text("not a key, not an image\n" * 10)
    assert "No such file" in one_line_error(shimrun("verify", "--keyring", PGP_RING, tmp_path / "nope.sif"),
                                            ExitCode.IMAGE)
    assert "not a SIF file" in one_line_error(shimrun("verify", "--keyring", PGP_RING, text), ExitCode.IMAGE)
    assert "is a directory" in one_line_error(shimrun("verify", "--keyring", PGP_RING, tmp_path), ExitCode.IMAGE)
    assert "cannot read key" in one_line_error(shimrun("verify", "--key", tmp_path / "none.pem", good),
                                               ExitCode.USAGE)
    assert "cannot read key" in one_line_error(shimrun("verify", "--key", tmp_path, good), ExitCode.USAGE)
    assert "is not a PEM public key" in one_line_error(shimrun("verify", "--key", text, good), ExitCode.USAGE)
    assert "is not a PEM public key" in one_line_error(shimrun("verify", "--key", PGP_RING, good), ExitCode.USAGE)
    assert "gpg cannot import" in one_line_error(shimrun("verify", "--keyring", text, good), ExitCode.USAGE)
    assert "gpg cannot import" in one_line_error(shimrun("verify", "--keyring", PEMS[0], good), ExitCode.USAGE)
    assert "has no object group 7" in one_line_error(shimrun("verify", "--keyring", PGP_RING, "-g", 7, good),
                                                     ExitCode.USAGE)
    assert "has no object 9" in one_line_error(shimrun("verify", "--keyring", PGP_RING, "--id", 9, good),
                                               ExitCode.USAGE)
    assert shimrun("verify", "--group-id", 1, "--all", good).returncode == ExitCode.USAGE
    with pytest.raises(ShimError) as info:
        verify_image(str(good), TrustedKeys(pgp_keyrings=(str(text),)))
    assert info.value.code == ExitCode.USAGE


def test_a_private_key_given_to_verify(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = tmp_path / "private.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    err = one_line_error(shimrun("verify", "--key", pem, SIFS / "one-group-signed-dsse.sif"), ExitCode.USAGE)
    assert "is a private key; verifying takes the public one" in err


# ---- trusted key directories ------------------------------------------------------------

def key_dirs(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    conf = tmp_path / "conf"
    (conf / "keys").mkdir(parents=True)
    (conf / "shim.toml").write_text("")
    home = tmp_path / "home"
    (home / ".config" / "shim" / "keys").mkdir(parents=True)
    return conf, {"HOME": str(home), "PATH": os.environ["PATH"], "TMPDIR": os.environ["TMPDIR"]}


def test_trusted_keys_come_from_the_site_and_the_user(tmp_path: Path) -> None:
    conf, env = key_dirs(tmp_path)
    shutil.copy(PGP_RING, conf / "keys" / "site.asc")
    user = Path(env["HOME"]) / ".config" / "shim" / "keys"
    shutil.copy(PEMS[0], user / "mine.pem")
    (user / "README").write_text("not a key name: ignored\n")
    keys = trusted_keys(conf, env, include_user=True)
    assert keys.pgp_keyrings == (str(conf / "keys" / "site.asc"),) and keys.pem_keys == (str(user / "mine.pem"),)
    assert trusted_keys(conf, env, include_user=False).pem_keys == ()
    assert key_files(conf, env, include_user=True) == [str(conf / "keys"), str(conf / "keys" / "site.asc"),
                                                       str(user), str(user / "mine.pem")]
    xdg = tmp_path / "xdg"
    assert trusted_keys(conf, {**env, "XDG_CONFIG_HOME": str(xdg)}, include_user=True).pem_keys == ()
    assert key_files(conf, {**env, "XDG_CONFIG_HOME": str(xdg)}, include_user=True)[-1] == str(xdg / "shim" / "keys")
    assert trusted_keys(tmp_path / "nowhere", env, include_user=False) == TrustedKeys(configured=True)
    for name in ("one-group-signed-pgp.sif", "one-group-signed-dsse.sif"):
        p = shimrun("verify", "--conf", conf, SIFS / name, env=env)
        assert p.returncode == 0, p.stdout + p.stderr


def test_a_broken_file_in_a_key_directory_is_a_configuration_error(tmp_path: Path) -> None:
    conf, env = key_dirs(tmp_path)
    (conf / "keys" / "broken.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n")
    err = one_line_error(shimrun("verify", "--conf", conf, SIFS / "one-group-signed-dsse.sif", env=env),
                         ExitCode.CONFIG)
    assert "broken.pem is not a PEM public key (fix or remove it)" in err
    (conf / "keys" / "broken.pem").unlink()
    (conf / "keys" / "broken.asc").write_text("junk\n")
    err = one_line_error(shimrun("verify", "--conf", conf, SIFS / "one-group-signed-dsse.sif", env=env),
                         ExitCode.CONFIG)
    assert "gpg cannot import" in err and "broken.asc" in err


# ---- output, speed, and reading each object once ----------------------------------------

def test_json_report() -> None:
    p = shimrun("verify", "--json", "--keyring", PGP_RING, SIFS / "two-groups-signed-pgp.sif")
    assert p.returncode == 0
    doc = json.loads(p.stdout)
    assert doc["schema"] == "shim-verify/1" and doc["ok"] is True and doc["signers"] == [FPR]
    assert [(s["id"], s["kind"], s["objects"], s["valid"]) for s in doc["signatures"]] == [
        (4, "pgp", [1, 2], True), (5, "pgp", [3], True)]
    p = shimrun("verify", "-j", "--keyring", PGP_RING, SIFS / "one-group-signed-legacy.sif")
    doc = json.loads(p.stdout)
    assert p.returncode == ExitCode.UNTRUSTED and doc["ok"] is False and doc["signatures"][0]["counts"] is False


def test_verify_is_fast() -> None:
    path = str(SIFS / "two-groups-signed-pgp.sif")
    verify_image(path, ALL_KEYS)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        assert verify_image(path, ALL_KEYS).ok
        times.append(time.perf_counter() - start)
    # About 25-30 ms on an idle 2-core VM (4 gpg processes); the bound leaves room for a loaded one.
    assert statistics.median(times) < 0.25, times


def test_each_object_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four signatures over the same objects: two legacy ones (SHA-384) and, added by shim, a
    DSSE pair (SHA-256): each object's data is still read only once."""
    img = copy(tmp_path, "one-group-signed-legacy-all.sif")
    key = ed25519.Ed25519PrivateKey.generate()
    sign_image(str(img), PemSigner(key))
    sign_image(str(img), PemSigner(key))
    reads: list[int] = []
    real = integrity_mod.object_chunks

    def counting(f, image, d, *rest):
        reads.append(d.id)
        return real(f, image, d, *rest)

    monkeypatch.setattr(integrity_mod, "object_chunks", counting)
    report = verify_image(str(img), ALL_KEYS, VerifyOptions(legacy_insecure=True, all_objects=True))
    assert report.ok and [v.kind for v in report.signatures] == ["legacy-pgp", "legacy-pgp", "dsse", "dsse"]
    # objects 1 and 2 (SHA-384 for the legacy signatures, SHA-256 for the others), and the legacy
    # signature objects 3 and 4, which sit in group 1 and so are signed by the new signatures
    assert sorted(reads) == [1, 2, 3, 4]


def test_digests_against_hashlib() -> None:
    """The metadata's object digests are sha256 of the object bytes (an independent recomputation)."""
    path = SIFS / "one-group-signed-pgp.sif"
    data = path.read_bytes()
    img = sif.read_sif(path)
    with open(path, "rb") as f:
        streams = [integrity_mod.Stream("sha256", (1,)), integrity_mod.Stream("sha384", (1, 2))]
        got = integrity_mod.hash_streams(f, img, streams)
    one, two = img.descriptor(1), img.descriptor(2)
    assert got[streams[0]] == hashlib.sha256(data[one.offset:one.end]).digest()
    assert got[streams[1]] == hashlib.sha384(data[one.offset:one.end] + data[two.offset:two.end]).digest()
    # The header stream is 61 bytes: LaunchScript, Magic, Version, ID (§1)
    assert len(integrity_mod.header_stream(img)) == 61
    assert struct.calcsize(sif.DESCRIPTOR_FORMAT) - len(integrity_mod.descriptor_stream(one, 0)) == 28
