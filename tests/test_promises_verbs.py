"""README promises of the verbs, tried as a user (issue 22): `check`'s options after IMAGE and
COMMAND, global options before any verb, what `check` says of a command the image lacks, what
`inspect` says of a directory, a squashfs file and an Apptainer-built SIF, `sign` of an image
the user cannot write, a missing --provenance directory, and `check --against` naming the site
configuration it replayed with."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from dirimage import BUSYBOX, busybox_dir
from error_line import one_error_line
from siteconf import conf_with

from shim.errors import ExitCode

pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static is not installed")


@pytest.fixture
def site(user_dir: Path) -> Path:
    """A site whose one profile (applied always) sets PROF=site."""
    return conf_with(user_dir / "conf", {"a-site": 'set = { PROF = "site" }\n'})


def profiles_of(r: subprocess.CompletedProcess) -> list[str]:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["profiles"]


def test_checks_options_after_image_and_command_mean_what_they_mean_before(shim, busybox_sif, site) -> None:
    assert profiles_of(shim.run(["check", "--conf", site, "--json", busybox_sif])) == ["a-site"]
    assert profiles_of(shim.run(["check", busybox_sif, "--conf", site, "--json"])) == ["a-site"]
    assert profiles_of(shim.run(["check", busybox_sif, "--json", f"--conf={site}", "--no-profiles"])) == []
    assert profiles_of(shim.run(["check", busybox_sif, "/bin/busybox", "--conf", site, "--json"])) == ["a-site"]
    one_error_line(shim.run(["check", busybox_sif, "--conf", site, "--profile", "nope"]), ExitCode.CONFIG, "'nope'")
    # After --, every word is COMMAND's: here a command the image does not have.
    one_error_line(shim.run(["check", busybox_sif, "--", "--json"]), ExitCode.NOT_FOUND,
                   "--json: executable file not found")


def test_global_options_before_any_verb(shim, busybox_sif, site, user_dir: Path) -> None:
    r = shim.run(["--conf", site, "profiles"])
    assert r.returncode == 0 and "a-site" in r.stdout, r.stdout + r.stderr
    assert profiles_of(shim.run([f"--conf={site}", "check", busybox_sif, "--json"])) == ["a-site"]
    r = shim.run(["-q", "--conf", site, "exec", busybox_sif, "sh", "-c", "echo $PROF"], cwd=user_dir)
    assert (r.returncode, r.stdout, r.stderr) == (0, "site\n", "")
    r = shim.run(["--conf", site, "run", busybox_sif, "sh", "-c", "echo $PROF"], cwd=user_dir)
    assert r.stdout == "site\n", r.stderr
    # the verb's own option wins; a verb that reads no site configuration ignores it
    other = conf_with(user_dir / "other", {"b-site": 'set = { PROF = "other" }\n'})
    assert profiles_of(shim.run(["--conf", site, "check", "--conf", other, busybox_sif, "--json"])) == ["b-site"]
    for verb in (["version"], ["inspect", busybox_sif], ["cache", "list"]):
        r = shim.run(["--conf", site, *verb])
        assert r.returncode == 0 and r.stderr == "", (verb, r.stderr)


def test_check_says_when_the_launch_could_not_start_the_command(shim, busybox_sif, golden_copy) -> None:
    r = shim.run(["check", busybox_sif, "/no/such/cmd"])
    one_error_line(r, ExitCode.NOT_FOUND, "/no/such/cmd: executable file not found in the image (PATH=")
    assert r.stdout.startswith("image: "), r.stdout  # the plan is still shown, before the line
    one_error_line(shim.run(["check", busybox_sif, "/etc/passwd"]), ExitCode.NOT_EXECUTABLE,
             "/etc/passwd: found in the image but cannot be executed")
    assert shim.run(["check", busybox_sif, "sh"]).returncode == 0
    json_r = shim.run(["check", busybox_sif, "nosuchcmd", "--json"])
    assert json_r.returncode == ExitCode.NOT_FOUND and json.loads(json_r.stdout)["image"], json_r.stderr


def test_inspect_says_what_an_image_without_sif_objects_is(shim, user_dir: Path) -> None:
    image = busybox_dir(user_dir / "sandbox")
    r = shim.run(["inspect", image])
    assert r.returncode == 0 and "Kind:                 directory (a sandbox): no SIF header or objects" in r.stdout
    assert "Architecture:         amd64" in r.stdout and "shimrun inspect --labels" in r.stdout, r.stdout
    squash = user_dir / "busybox.sqfs"
    subprocess.run(["mksquashfs", image, squash, "-comp", "gzip", "-quiet", "-no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    squash.chmod(0o644)
    r = shim.run(["inspect", squash])
    assert r.returncode == 0 and "Kind:                 squashfs file: no SIF header or objects" in r.stdout
    assert "Squashfs:             gzip, " in r.stdout, r.stdout
    doc = json.loads(shim.run(["inspect", "--json", squash]).stdout)
    assert (doc["kind"], doc["squashfs"]["compression"]) == ("squashfs", "gzip")
    assert json.loads(shim.run(["inspect", "--json", image]).stdout)["kind"] == "dir"
    one_error_line(shim.run(["inspect", "--sbom", image]), ExitCode.IMAGE, "only a SIF carries SBOM objects")


def test_inspect_of_an_apptainer_built_sif_does_not_invent_a_source(shim, busybox_sif) -> None:
    r = shim.run(["inspect", busybox_sif])
    assert r.returncode == 0, r.stderr
    assert "OCI source:           not recorded (an image shim did not pull)" in r.stdout, r.stdout
    assert "Manifest digest:      not recorded" in r.stdout and "docker save" not in r.stdout


def test_sign_an_image_the_user_cannot_write_is_exit_69(shim, busybox_sif, user_dir: Path) -> None:
    key = user_dir / "signer.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key], check=True, capture_output=True)
    shutil.chown(key, shim.user.uid, shim.user.gid)
    key.chmod(0o600)
    image = user_dir / "ro.sif"
    shutil.copyfile(busybox_sif, image)
    shutil.chown(image, shim.user.uid, shim.user.gid)
    image.chmod(0o444)
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    one_error_line(shim.run(["sign", "--key", key, image]), ExitCode.HOST, f"cannot open {image} for writing")
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before
    image.chmod(0o644)
    assert shim.run(["sign", "--key", key, image]).returncode == 0


def test_provenance_into_a_missing_directory_names_it(shim, busybox_sif, user_dir: Path) -> None:
    missing = user_dir / "records"
    one_error_line(shim.run(["--provenance", f"{missing}/", busybox_sif, "true"]), ExitCode.USAGE,
             f"cannot write the provenance record in {missing}: No such file or directory")
    missing.mkdir()
    shutil.chown(missing, shim.user.uid, shim.user.gid)
    r = shim.run(["--provenance", f"{missing}/", busybox_sif, "true"])
    assert r.returncode == 0 and len(list(missing.glob("*.json"))) == 1, r.stderr


def test_check_against_names_the_configuration_it_replayed_with(shim, busybox_sif, site, user_dir: Path) -> None:
    record = user_dir / "run.json"
    r = shim.run(["--provenance", record, busybox_sif, "true"], env={"SHIMRUN_CONF": str(site)}, cwd=user_dir)
    assert r.returncode == 0, r.stderr
    now = shim.run(["check", busybox_sif, "--against", record], cwd=user_dir)
    first = now.stdout.splitlines()[0]
    assert first.startswith("configuration: ") and not first.startswith(f"configuration: {site}"), now.stdout
    assert f"(the record was planned with {site}/shim.toml: --conf {site} replays with it)" in first, first
    assert now.returncode == 1 and "differs: profiles applied" in now.stdout, now.stdout
    for line in (["check", "--conf", site, busybox_sif, "--against", record],
                 ["--conf", site, "check", busybox_sif, "--against", record]):
        same = shim.run(line, cwd=user_dir)
        assert same.returncode == 0, same.stdout + same.stderr
        assert same.stdout.splitlines()[0] == f"configuration: {site}/shim.toml", same.stdout
    doc = json.loads(shim.run(["check", busybox_sif, "--against", record, "--json"], cwd=user_dir).stdout)
    assert doc["configuration"]["recorded"] == f"{site}/shim.toml" != doc["configuration"]["used"]
