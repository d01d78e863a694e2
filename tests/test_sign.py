"""`shimrun sign`: shim's signatures verify with the same rules as the golden ones, and are laid
out as sylabs/sif lays out its own (what Apptainer verifies). Real gpg keys made in a throwaway
GNUPGHOME, real PEM keys made with `cryptography`; failures leave the image as it was."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import GOLDEN, shimrun_path
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from signed_sifs import ALL_KEYS, ED25519_ID, KEYS, SIFS, copy, one_line_error, shimrun, signature

from shim.errors import ExitCode
from shim.image import sif
from shim.verify import TrustedKeys, VerifyOptions, verify_image
from shim.verify.keys import keyid_of

needs_squashfs_tools = pytest.mark.skipif(not shutil.which("mksquashfs"), reason="squashfs-tools not installed")
pytestmark = pytest.mark.usefixtures("nothing_left_behind")  # no gpg home or agent left behind
UID = "Shim Signer <signer@example.org>"


def gpg(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["gpg", "--batch", "--homedir", str(home), *args], capture_output=True, text=True,
                          check=check)


@pytest.fixture(scope="module")
def gnupghome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    gpg(home, "--passphrase", "", "--quick-gen-key", UID, "rsa3072", "sign", "never")
    yield home
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)


def fingerprint(home: Path, uid: str = UID) -> str:
    out = gpg(home, "--with-colons", "--list-secret-keys", uid).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def export(home: Path, out: Path, uid: str = UID) -> Path:
    out.write_text(gpg(home, "--armor", "--export", uid).stdout)
    return out


def env_for(home: Path) -> dict[str, str]:
    return dict(os.environ, GNUPGHOME=str(home))


def pem_pair(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    key = {"ed25519": ed25519.Ed25519PrivateKey.generate,
           "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
           "ecdsa": lambda: ec.generate_private_key(ec.SECP256R1())}[kind]()
    private, public = tmp_path / f"{kind}.pem", tmp_path / f"{kind}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def payload(path: Path, d: sif.SifDescriptor) -> bytes:
    return path.read_bytes()[d.offset:d.end]


# ---- DSSE with PEM keys -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_pem_sign_round_trip(tmp_path: Path, kind: str) -> None:
    private, public = pem_pair(tmp_path, kind)
    img = copy(tmp_path, "one-group.sif")
    p = shimrun("sign", "--key", private, img)
    assert p.returncode == 0, p.stderr
    keyid = keyid_of(serialization.load_pem_public_key(public.read_bytes()))
    assert p.stdout == f"signed group 1 of {img}: signature object 3, by {keyid}\n"
    report = verify_image(str(img), TrustedKeys(pem_keys=(str(public),)))
    assert report.ok and report.signers() == (keyid,)
    assert shimrun("verify", "--key", public, img).returncode == 0
    (tmp_path / "other").mkdir()
    _, other = pem_pair(tmp_path / "other", kind)   # another key of the same kind
    wrong = verify_image(str(img), TrustedKeys(pem_keys=(str(other),)))
    assert not wrong.ok and wrong.reason() == f"group 1: signed by unknown key {keyid}"
    assert shimrun("verify", "--key", other, img).returncode == ExitCode.UNTRUSTED


def test_dsse_layout_is_sylabs_own(tmp_path: Path) -> None:
    """Descriptor fields and envelope as in one-group-signed-dsse.sif; the signed payload is
    byte for byte the golden one (same image, same metadata)."""
    private, _ = pem_pair(tmp_path, "ed25519")
    img = copy(tmp_path, "one-group.sif")
    before = sif.read_sif(img)
    assert shimrun("sign", "--key", private, img).returncode == 0
    after = sif.read_sif(img)
    mine, gold = signature(img), signature(SIFS / "one-group-signed-dsse.sif")
    same = ("data_type", "id", "group_id_raw", "linked_id_raw", "offset", "created_at", "modified_at", "uid", "gid",
            "name", "hash_type", "entity", "slot")
    assert {f: getattr(mine, f) for f in same} == {f: getattr(gold, f) for f in same}
    assert (mine.group_id_raw, mine.linked_id_raw, mine.entity) == (0xF0000000, 0xF0000001, None)
    assert mine.extra[:4] == struct.pack("<i", 1) and not any(mine.extra[4:])
    assert mine.size_with_padding == mine.size and mine.end == after.file_size == before.file_size + mine.size
    env, golden = json.loads(payload(img, mine)), json.loads(payload(SIFS / "one-group-signed-dsse.sif", gold))
    assert list(env) == ["payloadType", "payload", "signatures"] and env["payload"] == golden["payload"]
    assert [list(s) for s in env["signatures"]] == [["keyid", "sig"]]
    h, b = after.header, before.header
    assert (h.descriptors_free, h.data_size, h.modified_at) == (b.descriptors_free - 1, mine.end - h.data_offset, None)
    assert payload(img, mine).startswith(b'{"payloadType":"application/vnd.sylabs.sif-metadata+json","payload":"')


def test_a_second_signature_and_one_group_only(tmp_path: Path) -> None:
    private, public = pem_pair(tmp_path, "ed25519")
    keys = TrustedKeys(pem_keys=(str(public),))
    img = copy(tmp_path, "two-groups.sif")
    p = shimrun("sign", "--key", private, "--group-id", 2, img)
    assert p.returncode == 0 and p.stdout.startswith(f"signed group 2 of {img}: signature object 4")
    assert verify_image(str(img), keys).reason() == "group 1 has no signature"
    assert verify_image(str(img), keys, VerifyOptions(group=2)).ok
    assert shimrun("sign", "--key", private, img).returncode == 0      # every group: 1 and 2 again
    report = verify_image(str(img), keys)
    assert report.ok and [(v.id, v.target) for v in report.signatures] == [
        (4, "group 2"), (5, "group 1"), (6, "group 2")]


# ---- OpenPGP with gpg -------------------------------------------------------------------

def test_pgp_sign_round_trip(tmp_path: Path, gnupghome: Path) -> None:
    fpr = fingerprint(gnupghome)
    ring = export(gnupghome, tmp_path / "signer.asc")
    img = copy(tmp_path, "two-groups.sif")
    p = shimrun("sign", img, env=env_for(gnupghome))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"signed group 1 of {img}: signature object 4, by {fpr}",
                                     f"signed group 2 of {img}: signature object 5, by {fpr}"]
    report = verify_image(str(img), TrustedKeys(pgp_keyrings=(str(ring),)))
    assert report.ok and report.signers() == (fpr,)
    assert [(v.kind, v.covers) for v in report.signatures] == [("pgp", (1, 2)), ("pgp", (3,))]
    assert shimrun("verify", "--keyring", ring, img).returncode == 0
    # the golden key does not vouch for it
    wrong = verify_image(str(img), ALL_KEYS)
    assert not wrong.ok and wrong.reason() == f"group 1: signed by unknown key {fpr}"
    # layout as two-groups-signed-pgp.sif, and the same signed JSON as its golden signature
    for n in (0, 1):
        mine, gold = signature(img, n), signature(SIFS / "two-groups-signed-pgp.sif", n)
        assert (mine.id, mine.group_id_raw, mine.linked_id_raw, mine.hash_type, mine.name) == (
            gold.id, gold.group_id_raw, gold.linked_id_raw, gold.hash_type, gold.name)
        assert mine.entity == fpr and mine.extra[24:] == bytes(360)
        json_line = payload(SIFS / "two-groups-signed-pgp.sif", gold).split(b"\n")[3]
        assert json_line.startswith(b'{"version":1,') and json_line in payload(img, mine)


def test_pgp_key_choice(tmp_path: Path, gnupghome: Path) -> None:
    img = copy(tmp_path, "one-group.sif")
    fpr = fingerprint(gnupghome)
    p = shimrun("sign", "--pgp-key", "signer@example.org", img, env=env_for(gnupghome))
    assert p.returncode == 0 and p.stdout.endswith(f"by {fpr}\n")
    p = shimrun("sign", "--keyidx", 0, img, env=env_for(gnupghome))
    assert p.returncode == 0 and "signature object 4" in p.stdout
    before = digest(img)
    err = one_line_error(shimrun("sign", "--pgp-key", "nobody@example.org", img, env=env_for(gnupghome)),
                         ExitCode.USAGE)
    assert "no OpenPGP secret key matching 'nobody@example.org'" in err
    assert "--keyidx 3" in one_line_error(shimrun("sign", "-k", 3, img, env=env_for(gnupghome)), ExitCode.USAGE)
    empty = tmp_path / "empty-gnupg"
    empty.mkdir(mode=0o700)
    assert "no OpenPGP secret key that can sign" in one_line_error(shimrun("sign", img, env=env_for(empty)),
                                                                   ExitCode.USAGE)
    subprocess.run(["gpgconf", "--homedir", str(empty), "--kill", "all"], capture_output=True, check=False)
    assert digest(img) == before


def test_an_expired_key(tmp_path: Path) -> None:
    """Signed while the key was valid, then the key's expiry set to one second from then and two
    seconds waited: the real clock, no faked time. gpg reports EXPKEYSIG."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    try:
        gpg(home, "--passphrase", "", "--quick-gen-key", UID, "rsa3072", "sign", "never")
        img = copy(tmp_path, "one-group.sif")
        assert shimrun("sign", img, env=env_for(home)).returncode == 0
        fpr = fingerprint(home)
        gpg(home, "--passphrase", "", "--pinentry-mode", "loopback", "--quick-set-expire", fpr, "seconds=1")
        time.sleep(2.5)
        ring = export(home, tmp_path / "expired.asc")
        report = verify_image(str(img), TrustedKeys(pgp_keyrings=(str(ring),)))
        assert not report.ok and report.reason() == "group 1: key expired"
        assert report.signatures[0].digests_match is True
        assert shimrun("verify", "--keyring", ring, img).returncode == ExitCode.UNTRUSTED
        # and gpg will not sign with it any more
        before = digest(img)
        p = shimrun("sign", img, env=env_for(home))
        assert p.returncode == ExitCode.USAGE and digest(img) == before
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)


# ---- a SIF shim built -------------------------------------------------------------------

@needs_squashfs_tools
def test_sign_and_verify_a_sif_shim_built(tmp_path: Path, gnupghome: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "etc" / "hello.txt").write_text("hello\n")
    shutil.copy2(Path("/bin/true").resolve(), root / "bin" / "true")   # for shimrun build to tell the arch
    for deterministic in (False, True):
        out = tmp_path / f"built-{deterministic}.sif"
        built = shimrun("build", out, root, *(["--deterministic"] if deterministic else []))
        assert built.returncode == 0, built.stderr
        private, public = pem_pair(tmp_path, "ecdsa")
        assert shimrun("sign", "--key", private, out).returncode == 0
        assert shimrun("sign", out, env=env_for(gnupghome)).returncode == 0
        ring = export(gnupghome, tmp_path / "signer.asc")
        p = shimrun("verify", "--key", public, "--keyring", ring, out)
        assert p.returncode == 0, p.stdout
        h = sif.read_sif(out).header
        # a deterministic image stays deterministic; another gets the time of signing
        assert (h.modified_at is None) is deterministic
        assert shimrun("verify", "--key", public, "--keyring", ring, "--legacy-insecure", out).returncode == 0
        part = sif.primary_partition(sif.read_sif(out))
        data = bytearray(out.read_bytes())
        data[part.offset + 100] ^= 0xFF
        out.write_bytes(bytes(data))
        p = shimrun("verify", "--key", public, "--keyring", ring, out)
        assert p.returncode == ExitCode.UNTRUSTED and f"object {part.id} changed after signing" in p.stdout


# ---- failures leave the image as it was -------------------------------------------------

def test_no_free_descriptor(tmp_path: Path) -> None:
    """docker-manifest.oci.sif has as many descriptor slots as objects."""
    private, _ = pem_pair(tmp_path, "ed25519")
    img = copy(tmp_path, "docker-manifest.oci.sif", GOLDEN / "oci-sif")
    before = digest(img)
    err = one_line_error(shimrun("sign", "--key", private, img), ExitCode.IMAGE)
    assert "no free descriptor slot for 1 new object(s): 0 of 4 are free" in err
    assert digest(img) == before


def test_a_write_that_fails_is_undone(tmp_path: Path) -> None:
    """A real failing write (the file-size limit, with SIGXFSZ ignored so the write gets EFBIG):
    the data already written is cut off again and the table and header are as they were."""
    private, _ = pem_pair(tmp_path, "rsa")
    img = copy(tmp_path, "two-groups.sif")
    size, before = img.stat().st_size, digest(img)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 700, size + 700))   # room for one signature

    p = subprocess.run([shimrun_path(), "sign", "--key", str(private), str(img)], capture_output=True, text=True,
                       preexec_fn=limit, check=False)
    assert p.returncode == ExitCode.HOST and "it is unchanged" in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and img.stat().st_size == size and digest(img) == before


def test_bad_input(tmp_path: Path) -> None:
    private, public = pem_pair(tmp_path, "ed25519")
    text = tmp_path / "notes.txt"
    text.write_text("not a SIF\n" * 20)
    assert "No such file" in one_line_error(shimrun("sign", "--key", private, tmp_path / "none.sif"), ExitCode.IMAGE)
    assert "is a directory" in one_line_error(shimrun("sign", "--key", private, tmp_path), ExitCode.IMAGE)
    assert "not a SIF file" in one_line_error(shimrun("sign", "--key", private, text), ExitCode.IMAGE)
    img = copy(tmp_path, "one-group.sif")
    before = digest(img)
    assert "is a public key" in one_line_error(shimrun("sign", "--key", public, img), ExitCode.USAGE)
    assert "not a PEM private key" in one_line_error(shimrun("sign", "--key", text, img), ExitCode.USAGE)
    assert "has no object group 5" in one_line_error(shimrun("sign", "--key", private, "-g", 5, img), ExitCode.USAGE)
    encrypted = tmp_path / "encrypted.pem"
    key = ed25519.Ed25519PrivateKey.generate()
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    p = subprocess.run([shimrun_path(), "sign", "--key", str(encrypted), str(img)], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, check=False)
    assert "protected by a passphrase and there is no terminal" in one_line_error(p, ExitCode.USAGE)
    empty = copy(tmp_path, "empty.sif")
    assert "no object groups" in one_line_error(shimrun("sign", "--key", private, empty), ExitCode.USAGE)
    assert digest(img) == before


def test_one_valid_signature_covers_the_group(tmp_path: Path) -> None:
    """A second signature by a key nobody gave us is reported, and does not spoil the first."""
    private, public = pem_pair(tmp_path, "ed25519")
    img = copy(tmp_path, "one-group-signed-pgp.sif")
    assert shimrun("sign", "--key", private, img).returncode == 0
    report = verify_image(str(img), ALL_KEYS)
    assert report.ok and [(v.kind, v.valid) for v in report.signatures] == [("pgp", True), ("dsse", False)]
    assert report.signatures[1].reason.startswith("signed by unknown key SHA256:")
    both = verify_image(str(img), TrustedKeys(pgp_keyrings=ALL_KEYS.pgp_keyrings, pem_keys=(str(public),)))
    assert both.ok and len(both.signers()) == 2


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_dsse_signatures_check_with_openssl(tmp_path: Path, kind: str) -> None:
    """An independent oracle: openssl verifies shim's RSA (PKCS#1 v1.5) and ECDSA (DER) signatures
    over the DSSE pre-authentication encoding with SHA-256."""
    private, public = pem_pair(tmp_path, kind)
    img = copy(tmp_path, "one-group.sif")
    assert shimrun("sign", "--key", private, img).returncode == 0
    env = json.loads(payload(img, signature(img)))
    body, ptype = base64.b64decode(env["payload"]), env["payloadType"].encode()
    (tmp_path / "pae").write_bytes(b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(body), body))
    (tmp_path / "sig").write_bytes(base64.b64decode(env["signatures"][0]["sig"]))
    p = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(public), "-signature", str(tmp_path / "sig"),
                        str(tmp_path / "pae")], capture_output=True, text=True, check=False)
    assert p.returncode == 0 and "Verified OK" in p.stdout, p.stdout + p.stderr


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="ssh-keygen not installed")
def test_keyids_are_ssh_fingerprints(tmp_path: Path) -> None:
    """The DSSE keyid is the key's SHA256 fingerprint as ssh-keygen -l prints it (ed25519: the one
    the golden envelope uses, as ssh-keygen cannot import a PEM ed25519 key)."""
    for name in ("rsa", "ecdsa"):
        pem = KEYS / f"{name}-public.pem"
        ssh = subprocess.run(["ssh-keygen", "-i", "-m", "PKCS8", "-f", str(pem)], capture_output=True, text=True,
                             check=True).stdout
        (tmp_path / f"{name}.pub").write_text(ssh)
        line = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / f"{name}.pub")], capture_output=True,
                              text=True, check=True).stdout
        assert keyid_of(serialization.load_pem_public_key(pem.read_bytes())) == line.split()[1]
    ed = serialization.load_pem_public_key((KEYS / "ed25519-public.pem").read_bytes())
    assert keyid_of(ed) == ED25519_ID
