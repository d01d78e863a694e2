"""Injection decisions built for real: a host library needing a newer glibc than the image has
(Debian 12's own MPICH into a Debian 11 image), and a host library whose dependency the image lacks
(injected together with it) or that nobody has (refused, naming it). Launched as a normal user."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import images
import pytest
from leftovers import stage_dir_entries
from library_images import foo_profile
from siteconf import write_conf

from shim.errors import ExitCode

HOST_MPICH = Path("/usr/lib/x86_64-linux-gnu/libmpich.so.12")  # Debian 12's libmpich12 (glibc 2.36 build)


# ----------------------------------------------------------------------------- GLIBC too old

@pytest.fixture(scope="module")
def bullseye_sif() -> Path:
    return images.build_sif(images.DEBIAN_BULLSEYE)


@pytest.fixture(scope="module")
def host_mpich_conf(world_dir: Path) -> Path:
    if not HOST_MPICH.exists():
        pytest.skip("Debian's libmpich12 is not installed on this host (requirements-apt.txt lists it)")
    return write_conf(world_dir / "conf-host-mpich", {"debian-mpich": f"""\
[profile]
kind = "mpi"
abi = "mpich"
applies = "when-used"
replaces = ["libmpich.so.12"]

[provides]
libraries = ["{HOST_MPICH}"]
"""})


def glibc_needs(library: Path) -> set[str]:
    """The GLIBC_2.N versions `library` requires, by binutils' readelf (the independent oracle)."""
    out = subprocess.run(["readelf", "-V", "-W", str(library)], check=True, capture_output=True, text=True).stdout
    needs = out.split(".gnu.version_r", 1)[1] if ".gnu.version_r" in out else ""
    return set(re.findall(r"Name: (GLIBC_2\.\d+)", needs))


def newer_than_2_30(versions: set[str]) -> list[str]:
    return sorted((v for v in versions if int(v.split(".")[1]) > 30), key=lambda v: int(v.split(".")[1]))


def test_newer_glibc_host_library_is_refused_before_launch(shim, host_mpich_conf, bullseye_sif):
    r = shim.run(["--conf", host_mpich_conf, bullseye_sif, "/opt/app/hello"])
    assert r.returncode == 0, r.stderr
    refusals = [ln for ln in r.stderr.splitlines() if "GLIBC-TOO-OLD" in ln]
    assert len(refusals) == 1, r.stderr
    # The newest version the library needs is named (a user told 2.32 would pick an image that
    # still fails), with every version the container (glibc 2.31: up to GLIBC_2.30) lacks.
    missing = newer_than_2_30(glibc_needs(HOST_MPICH))
    assert len(missing) >= 2, missing
    line = refusals[0]
    assert f"GLIBC-TOO-OLD: version `{missing[-1]}' not found (required by libmpich.so.12; " in line, line
    listed = re.search(r"(\d+) versions missing: ([A-Z0-9_., ]+?);", line)
    assert listed and set(missing) <= set(listed.group(2).split(", ")) and int(listed.group(1)) >= len(missing), line
    assert "the container has glibc 2.31 (defines GLIBC_2.2.5 … GLIBC_2.30)" in line
    assert f"hint: use an image with glibc >= {missing[-1].removeprefix('GLIBC_')}" in line
    # The app ran on the image's own MPICH 3.4, not half-injected.
    assert "MPICH Version:\t3.4" in r.stdout or "MPICH Version: 3.4" in r.stdout, r.stdout
    assert "sum=1 expected=1 ok" in r.stdout


def test_newer_glibc_refusal_in_check_json_and_strict(shim, host_mpich_conf, bullseye_sif):
    r = shim.run(["check", "--json", "--conf", host_mpich_conf, bullseye_sif, "/opt/app/hello"])
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    (d,) = [d for d in plan["decisions"] if d["library"] == "libmpich.so.12"]
    assert d["decision"] == "refuse" and d["host_path"] == str(HOST_MPICH)
    (diag,) = [d for d in plan["diagnostics"] if d["severity"] != "info"]
    assert diag["code"] == "GLIBC-TOO-OLD" and "glibc 2.31" in diag["message"] and diag["hint"]
    # The symbol version it names is one the host library really needs.
    needed = re.search(r"`(GLIBC_[\d.]+)'", diag["message"]).group(1)
    dynsyms = subprocess.run(["objdump", "-T", str(HOST_MPICH)], capture_output=True, text=True, check=False)
    assert needed in dynsyms.stdout
    strict = shim.run(["--strict", "--conf", host_mpich_conf, bullseye_sif, "/opt/app/hello"])
    assert strict.returncode == ExitCode.REFUSED and "MPICH Version" not in strict.stdout
    assert stage_dir_entries() == ["README"]


def test_site_policy_makes_refusals_fatal(shim, world_dir, bullseye_sif):
    if not HOST_MPICH.exists():
        pytest.skip("Debian's libmpich12 is not installed")
    conf = write_conf(world_dir / "conf-refusal-error", {"debian-mpich": (
        f'[profile]\nkind = "mpi"\nabi = "mpich"\napplies = "when-used"\nreplaces = ["libmpich.so.12"]\n'
        f'[provides]\nlibraries = ["{HOST_MPICH}"]\n')},
        shim_toml='[launch]\nbinds = []\n[policy]\nrefusal = "error"\n')
    r = shim.run(["--conf", conf, bullseye_sif, "/opt/app/hello"])
    assert r.returncode == ExitCode.REFUSED, r.stderr
    assert "error: GLIBC-TOO-OLD" in r.stderr and "MPICH Version" not in r.stdout


# ----------------------------------------------------------------------------- dependencies
# (foo_image, site_libs, foo_profile: tests/library_images.py)

def test_image_runs_its_own_library_without_profiles(shim, foo_image):
    r = shim.run(["--no-profiles", foo_image, "/opt/app/foo-app"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "foo: image\n"


def test_dependency_missing_in_image_is_injected_together(shim, world_dir, site_libs, foo_image):
    conf = write_conf(world_dir / "conf-foo-good", {"site-foo": foo_profile(site_libs["good"])})
    r = shim.run(["check", "--json", "--conf", conf, foo_image, "/opt/app/foo-app"])
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    by_lib = {d["library"]: d for d in plan["decisions"]}
    assert by_lib["libsitefoo.so.1"]["decision"] == "inject"
    dep = by_lib["libsitedep.so.1"]
    assert dep["decision"] == "inject" and "needed by libsitefoo.so.1" in dep["reason"]
    assert dep["host_path"] == str(site_libs["good"].parent / "libsitedep.so.1")
    assert [d for d in plan["diagnostics"] if d["severity"] != "info"] == []  # hardware notes aside
    r = shim.run(["--conf", conf, foo_image, "/opt/app/foo-app"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "foo: host\ndep: host dep\n"


def test_dependency_missing_everywhere_is_refused_naming_it(shim, world_dir, site_libs, foo_image):
    conf = write_conf(world_dir / "conf-foo-broken", {"site-foo": foo_profile(site_libs["broken"])})
    r = shim.run(["--conf", conf, foo_image, "/opt/app/foo-app"])
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if "DEPENDENCY-MISSING" in ln]
    assert "libnowhere.so.1 (needed by libsitefoo.so.1) is found neither in the container nor on the host" in line
    assert "hint:" in line
    assert r.stdout == "foo: image\n"  # the image's own copy stays
    r = shim.run(["check", "--json", "--conf", conf, foo_image, "/opt/app/foo-app"])
    plan = json.loads(r.stdout)
    assert [d["code"] for d in plan["diagnostics"] if d["severity"] != "info"] == ["DEPENDENCY-MISSING"]
    assert [d["decision"] for d in plan["decisions"] if d["library"] == "libsitefoo.so.1"] == ["refuse"]
