"""The site's image policy ([images] in shim.toml) on real launches as an ordinary user: the golden
signed and unsigned SIFs with the shared test keys, tampered copies, an image signed here with
`shimrun sign`, and each rule refusing with one line (exit 79) before anything is mounted."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import GOLDEN
from oci import sif_rootfs
from policy import flip_byte, make_conf, make_signing_key, readable_copy, refused
from signed_sifs import FPR, KEYS, SIFS

from shim.errors import ExitCode
from shim.image.sif import read_sif


@pytest.fixture(scope="module")
def signing_key(world_dir: Path) -> tuple[Path, Path]:
    """An ed25519 key pair made here (PEM): the site's own signing key."""
    return make_signing_key(world_dir)


@pytest.fixture
def signed_busybox(shim, user_dir: Path, busybox_sif: Path, signing_key) -> Path:
    """The Apptainer busybox image with a signature of the site's key added by `shimrun sign`."""
    sif = readable_copy(busybox_sif, user_dir / "busybox-signed.sif")
    r = subprocess.run([shim.shimrun, "sign", "--key", signing_key[0], sif], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    return sif


def test_a_signed_image_runs_and_a_tampered_copy_is_refused(shim, user_dir: Path, signed_busybox: Path,
                                                            signing_key):
    conf = make_conf(user_dir / "conf", "allow_unsigned = false", (signing_key[1],))
    for _ in range(2):  # planned, then from the launch record
        r = shim.run(["--conf", conf, signed_busybox, "echo", "ran"])
        assert r.returncode == 0 and r.stdout == "ran\n", r.stderr
    part = next(d for d in read_sif(signed_busybox).descriptors if d.is_primary)
    flip_byte(signed_busybox, part.offset + 100, keep_mtime=True)  # mtime put back: the change time tells
    r = shim.run(["--conf", conf, "--debug", signed_busybox, "echo", "ran"])
    assert r.returncode == ExitCode.UNTRUSTED and "ran" not in r.stdout, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if "images.allow_unsigned" in ln)
    assert f"object {part.id}" in line and "mounted" not in r.stderr and "namespace entered" not in r.stderr


def test_the_golden_images_under_a_policy(shim, user_dir: Path):
    conf = make_conf(user_dir / "conf", "allow_unsigned = false", (KEYS / "pgp-public.asc",
                                                                   KEYS / "ed25519-public.pem"))
    unsigned = readable_copy(SIFS / "one-group.sif", user_dir / "unsigned.sif")
    assert refused(shim.run(["--conf", conf, unsigned, "true"]), "allow_unsigned")
    tampered = readable_copy(SIFS / "one-group-signed-pgp.sif", user_dir / "tampered.sif")
    part = next(d for d in read_sif(tampered).descriptors if d.is_primary)
    flip_byte(tampered, part.offset + 10)
    r = shim.run(["--conf", conf, tampered, "true"])
    assert refused(r, "allow_unsigned") and f"object {part.id}" in r.stderr, r.stderr
    for good in ("one-group-signed-pgp.sif", "one-group-signed-dsse.sif", "two-groups-signed-pgp.sif"):
        # past the policy: what stops these test images is that they hold no program (and are 386)
        r = shim.run(["check", "--conf", conf, readable_copy(SIFS / good, user_dir / good)])
        assert r.returncode != ExitCode.UNTRUSTED, (good, r.stderr)
    # legacy signatures count only when the site says so: then the launch goes past the policy, to
    # the image's file system (this test image's partition is four bytes, not a squashfs: exit 65)
    legacy = readable_copy(SIFS / "one-group-signed-legacy-group.sif", user_dir / "legacy.sif")
    assert refused(shim.run(["--conf", conf, legacy, "true"]), "allow_unsigned")
    conf2 = make_conf(user_dir / "conf2", "allow_unsigned = false\nallow_legacy_signatures = true",
                      (KEYS / "pgp-public.asc",))
    r = shim.run(["--conf", conf2, legacy, "true"])
    assert r.returncode == ExitCode.IMAGE and "is not squashfs" in r.stderr, r.stderr


def test_signers_restricts_the_trusted_keys(shim, user_dir: Path, signed_busybox: Path, signing_key):
    conf = make_conf(user_dir / "conf", f'signers = ["{FPR}"]', (signing_key[1], KEYS / "pgp-public.asc"))
    r = shim.run(["--conf", conf, signed_busybox, "true"])
    assert refused(r, "signers") and FPR in r.stderr, r.stderr


def test_a_users_own_key_is_not_trusted_by_the_site(shim, user_dir: Path, signed_busybox: Path, signing_key):
    conf = make_conf(user_dir / "conf", "allow_unsigned = false")
    own = Path(shim.user.home) / ".config" / "shim" / "keys"
    own.mkdir(parents=True, exist_ok=True)
    shutil.copy(signing_key[1], own / "mine.pem")
    try:
        assert refused(shim.run(["--conf", conf, signed_busybox, "true"]), "allow_unsigned")
        # ... though `shimrun verify` trusts it for the user
        assert shim.run(["verify", signed_busybox]).returncode == 0
    finally:
        shutil.rmtree(Path(shim.user.home) / ".config" / "shim")


def test_paths_directories_and_architectures(shim, user_dir: Path, busybox_sif: Path, world_dir: Path):
    conf = make_conf(user_dir / "conf", f'paths = ["{world_dir}/allowed"]')
    r = shim.run(["--conf", conf, busybox_sif, "true"])
    assert refused(r, "paths") and f"not under {world_dir}/allowed" in r.stderr
    allowed = world_dir / "allowed"
    allowed.mkdir(exist_ok=True)
    allowed.chmod(0o755)
    inside = readable_copy(busybox_sif, allowed / "busybox.sif")
    assert shim.run(["--conf", conf, inside, "true"]).returncode == 0
    # a symlink into the allowed place from outside is judged by where it leads
    link = user_dir / "link.sif"
    link.symlink_to(inside)
    assert shim.run(["--conf", conf, link, "true"]).returncode == 0

    rootfs = sif_rootfs(busybox_sif, user_dir / "rootfs")
    conf = make_conf(user_dir / "conf-dirs", "allow_directories = false")
    assert refused(shim.run(["--conf", conf, rootfs, "true"]), "allow_directories")
    assert shim.run(["--conf", conf, busybox_sif, "true"]).returncode == 0

    conf = make_conf(user_dir / "conf-arch", "allow_foreign_arch = false")
    arm = readable_copy(GOLDEN / "apptainer" / "busybox_arm64.sif", user_dir / "arm.sif")
    r = shim.run(["--conf", conf, arm, "true"])
    assert refused(r, "allow_foreign_arch") and "arm64" in r.stderr, r.stderr


def test_check_refuses_as_a_launch_does(shim, user_dir: Path):
    conf = make_conf(user_dir / "conf", "allow_unsigned = false", (KEYS / "pgp-public.asc",))
    unsigned = readable_copy(SIFS / "one-group.sif", user_dir / "unsigned.sif")
    assert refused(shim.run(["check", "--conf", conf, unsigned]), "allow_unsigned")


@pytest.mark.parametrize(("images", "says"), [
    ('paths = ["relative/dir"]', "is not an absolute path"),
    ("allow_unsigned = 0", "images.allow_unsigned must be a bool"),
    ('signers = [""]', "images.signers must be a list of non-empty strings"),
    ("trust = true", "unknown key images.trust"),
])
def test_a_bad_policy_is_a_configuration_error(shim, user_dir: Path, busybox_sif: Path, images: str, says: str):
    conf = make_conf(user_dir / "conf", images)
    r = shim.run(["--conf", conf, busybox_sif, "true"])
    assert r.returncode == ExitCode.CONFIG and says in r.stderr and r.stderr.count("\n") == 1, r.stderr
