"""Injection decisions built for real: a host library needing a newer glibc than the image has
(Debian 12's own MPICH into a Debian 11 image), and a host library whose dependency the image lacks
(injected together with it) or that nobody has (refused, naming it). Launched as a normal user."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import images
import pytest
from cbuild import build_c, stub_dir
from leftovers import stage_dir_entries

from shim.elf.ldcache import CacheEntry
from shim.elf.ldcache_write import write_ld_cache

HOST_MPICH = Path("/usr/lib/x86_64-linux-gnu/libmpich.so.12")  # Debian 12's libmpich12 (glibc 2.36 build)
X86_64_LIBC6 = 0x0303


def write_conf(conf: Path, profiles: dict[str, str], shim_toml: str = "[launch]\nbinds = []\n") -> Path:
    (conf / "profiles").mkdir(parents=True, exist_ok=True)
    (conf / "shim.toml").write_text(shim_toml)
    for name, text in profiles.items():
        (conf / "profiles" / f"{name}.toml").write_text(text)
    subprocess.run(["chmod", "-R", "a+rX", str(conf)], check=True)
    return conf


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
    assert strict.returncode == 67 and "MPICH Version" not in strict.stdout
    assert stage_dir_entries() == ["README"]


def test_site_policy_makes_refusals_fatal(shim, world_dir, bullseye_sif):
    if not HOST_MPICH.exists():
        pytest.skip("Debian's libmpich12 is not installed")
    conf = write_conf(world_dir / "conf-refusal-error", {"debian-mpich": (
        f'[profile]\nkind = "mpi"\nabi = "mpich"\napplies = "when-used"\nreplaces = ["libmpich.so.12"]\n'
        f'[provides]\nlibraries = ["{HOST_MPICH}"]\n')},
        shim_toml='[launch]\nbinds = []\n[policy]\nrefusal = "error"\n')
    r = shim.run(["--conf", conf, bullseye_sif, "/opt/app/hello"])
    assert r.returncode == 67, r.stderr
    assert "error: GLIBC-TOO-OLD" in r.stderr and "MPICH Version" not in r.stdout


# ----------------------------------------------------------------------------- dependencies

FOO_SRC = """
#include <stdio.h>
extern const char *dep_name(void);
const char *foo_name(void) { return FOO_NAME; }
void foo_hello(void) { printf("foo: %s\\n", FOO_NAME); USE_DEP }
"""
DEP_SRC = '#include <stdio.h>\nconst char *dep_name(void) { return "host dep"; }\n'
APP_SRC = '#include <stdio.h>\nextern void foo_hello(void);\nint main(void) { foo_hello(); return 0; }\n'


def foo_lib(out_dir: Path, name: str, dep: str | None) -> Path:
    use = 'printf("dep: %s\\n", dep_name());' if dep else ""
    flags = ["-shared", "-fPIC", "-Wl,-soname,libsitefoo.so.1", f'-DFOO_NAME="{name}"', f"-DUSE_DEP={use}"]
    if dep:
        flags += [f"-L{out_dir}", f"-l{dep}", f"-Wl,-rpath,{out_dir}"]
    return build_c("libsitefoo.so.1", FOO_SRC, flags, out_dir=out_dir)


@pytest.fixture(scope="module")
def site_libs() -> dict[str, Path]:
    """Host-side builds (a site's library dirs): libsitefoo needing libsitedep (present on the
    host), and a second libsitefoo needing libnowhere (present nowhere: its build file is removed)."""
    base = stub_dir() / "site-deps-v1"
    good, broken = base / "good", base / "broken"
    build_c("libsitedep.so.1", DEP_SRC, ["-shared", "-fPIC", "-Wl,-soname,libsitedep.so.1"], out_dir=good)
    if not (good / "libsitedep.so").exists():
        (good / "libsitedep.so").symlink_to("libsitedep.so.1")
    foo = foo_lib(good, "host", "sitedep")
    if not (broken / "libsitefoo.so.1").exists():
        build_c("libnowhere.so.1", DEP_SRC, ["-shared", "-fPIC", "-Wl,-soname,libnowhere.so.1"], out_dir=broken)
        (broken / "libnowhere.so").symlink_to("libnowhere.so.1")
        foo_lib(broken, "host broken", "nowhere")
        (broken / "libnowhere.so").unlink()
        (broken / "libnowhere.so.1").unlink()
    return {"good": foo, "broken": broken / "libsitefoo.so.1"}


@pytest.fixture(scope="module")
def foo_image(world_dir: Path) -> Path:
    """A directory image: the host's glibc, its own libsitefoo.so.1 and an app using it, and an
    ld.so.cache listing both (the way ldconfig would in a built image)."""
    root = world_dir / "foo-image"
    if (root / "etc/ld.so.cache").exists():  # built already (the fixture is shared with other modules)
        return root
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True, exist_ok=True)
    (root / "lib64").mkdir(exist_ok=True)
    shutil.copy2("/lib64/ld-linux-x86-64.so.2", root / "lib64/ld-linux-x86-64.so.2")
    shutil.copy2("/lib/x86_64-linux-gnu/libc.so.6", libdir / "libc.so.6")
    img_foo = build_c("libsitefoo.so.1", FOO_SRC, ["-shared", "-fPIC", "-Wl,-soname,libsitefoo.so.1",
                                                   '-DFOO_NAME="image"', "-DUSE_DEP="])
    shutil.copy2(img_foo, libdir / "libsitefoo.so.1")
    app = build_c("foo-app", APP_SRC, [f"-L{img_foo.parent}", "-l:libsitefoo.so.1"])
    (root / "opt/app").mkdir(parents=True, exist_ok=True)
    shutil.copy2(app, root / "opt/app/foo-app")
    for d in ("etc", "proc", "sys", "dev", "tmp", "home"):
        (root / d).mkdir(exist_ok=True)
    (root / "etc/ld.so.cache").write_bytes(write_ld_cache([
        CacheEntry(X86_64_LIBC6, "libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
        CacheEntry(X86_64_LIBC6, "libsitefoo.so.1", "/usr/lib/x86_64-linux-gnu/libsitefoo.so.1")]))
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return root


def foo_profile(lib: Path) -> str:
    return (f'[profile]\nkind = "other"\napplies = "when-used"\nreplaces = ["libsitefoo.so.1"]\n'
            f'[provides]\nlibraries = ["{lib}"]\n')


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
