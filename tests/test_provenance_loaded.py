"""`check --against` and what a record's run loaded (its "loaded" list, docs/provenance.md): for
each injected object, whether this node's plan still offers the same host file (path, sha256);
for each object of the image, whether the image has the same digest.

Records made by hand: the comparison itself on JSON documents written here (the rules, without a
launch); tests/data/provenance/loaded-record.json read by `shimrun check --against` (a record's
shape checked before anything compares it); and a real --provenance record of a launch that
injects the site's libsitefoo, given the "loaded" list the executor writes (its shape:
shim/record/format.py LOADED_KEYS), replayed after the site swapped that library for another build.
And a real audited run (the MPICH app, the site's MPICH injected) compared once the site's profile
points at another prefix; under srun: tests/test_audit_slurm.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import hostmpi
import images
import pytest
from auditing import audit_missing
from library_images import foo_lib, foo_profile
from siteconf import write_conf

from shim.errors import ExitCode
from shim.provenance.loaded import loaded_differences
from shim.record.format import LOADED_KEYS

DATA = Path(__file__).resolve().parent / "data" / "provenance"
MPI = "/usr/lib/x86_64-linux-gnu/libmpich.so.12"
HOST = "/opt/site-mpich/lib/libmpi.so.12"
A, B = "a" * 64, "b" * 64


def loaded(path: str, host: str | None = None, sha256: str | None = None, exe: str = "hello") -> dict:
    entry = {"path": path, "host": host, "sha256": sha256, "pid": 42, "exe": exe}
    assert tuple(entry) == LOADED_KEYS  # the executor's shape, member for member
    return entry


def inject(host: str = HOST, sha256: str = A, place: str = MPI) -> dict:
    return {"library": "libmpich.so.12", "profile": "site-mpich", "decision": "inject", "reason": "ABI match",
            "host_path": host, "container_path": place, "sha256": sha256, "real_path": host}


def record(*entries: dict, decisions: tuple[dict, ...] = (), image: dict | None = None, binds: tuple = ()) -> dict:
    return {"image": image or {"kind": "sif", "sha256": None, "path": "/img.sif",
                               "sif": {"objects": [{"id": 1, "type": "FS", "name": "", "primary": True,
                                                    "sha256": A}]}},
            "plan": {"decisions": list(decisions), "binds": list(binds)}, "loaded": list(entries)}


def lines(old: dict, new: dict, sha256_now=None) -> list[str]:
    return [d.line() for d in loaded_differences(old, new, sha256_now)]


def test_the_same_host_file_and_image_is_no_difference():
    old = record(loaded(MPI, HOST, A), loaded("/usr/bin/python3.11"), decisions=(inject(),))
    assert loaded_differences(old, record(decisions=(inject(),))) == []


def test_a_run_that_was_not_audited_compares_nothing():
    old = record(decisions=(inject(),))
    del old["loaded"]
    assert loaded_differences(old, record(decisions=(inject(sha256=B),))) == []


def test_another_build_at_the_same_host_path_is_material():
    (found,) = loaded_differences(record(loaded(MPI, HOST, A), decisions=(inject(),)),
                                  record(decisions=(inject(sha256=B),)))
    assert found.material
    assert found.line() == (f"differs: loaded {MPI} (host {HOST}, by hello): offered now as another build: "
                            f"recorded sha256:{A[:16]}…, now sha256:{B[:16]}…")


def test_another_host_file_at_the_same_place_is_material():
    other = "/opt/mpich-5.1/lib/libmpi.so.12"
    (line,) = lines(record(loaded(MPI, HOST, A), decisions=(inject(),)), record(decisions=(inject(host=other),)))
    assert line == (f"differs: loaded {MPI} (host {HOST}, by hello): another host file offered there now: "
                    f"recorded {HOST}, now {other}")


def test_an_injection_no_longer_offered_is_material():
    skipped = {**inject(), "decision": "skip", "reason": "profile not requested"}
    for now in (record(), record(decisions=(skipped,))):
        (line,) = lines(record(loaded(MPI, HOST, A), decisions=(inject(),)), now)
        assert line.startswith(f"differs: loaded {MPI} (host {HOST}, by hello): not offered now")
        assert line.endswith(f"recorded {HOST}, now none")


def test_an_object_of_a_bound_directory_is_compared_by_its_sha256_now():
    fabric = "/opt/site-mpich/lib/mpich/libfabric.so.1"
    bind = {"src": "/opt/site-mpich/lib/mpich", "dst": "/opt/site-mpich/lib/mpich", "read_only": True}
    old = record(loaded("/opt/site-mpich/lib/mpich/libfabric.so.1", fabric, A), binds=(bind,))
    assert lines(old, record(binds=(bind,)), {fabric: A}.get) == []
    (line,) = lines(old, record(binds=(bind,)), {fabric: B}.get)
    assert "the bound file is now another build" in line and line.startswith("differs:")
    (line,) = lines(old, record(binds=(bind,)), {}.get)
    assert "the bound file is gone" in line


def test_image_objects_are_compared_once_by_the_image_digest():
    objects = [loaded(f"/usr/lib/x86_64-linux-gnu/lib{n}.so.1") for n in ("a", "b", "c", "d")]
    rebuilt = {"kind": "sif", "sha256": None, "path": "/img.sif",
               "sif": {"objects": [{"id": 1, "type": "FS", "name": "", "primary": True, "sha256": B}]}}
    (found,) = loaded_differences(record(*objects), record(image=rebuilt))
    assert found.material
    assert found.line() == ("differs: 4 object(s) the run loaded from the image (liba.so.1, libb.so.1, libc.so.1, …): "
                            f"the image: recorded sha256:{A[:16]}…, now sha256:{B[:16]}…")
    squashfs = {"kind": "squashfs", "sha256": A, "path": "/img.sqfs", "sif": None}
    assert loaded_differences(record(*objects, image=squashfs), record(image=squashfs)) == []


def test_objects_of_a_directory_the_plan_bound_are_compared_by_the_bind():
    """A profile's bundled libraries (no "host" of their own): the same host directory bound there
    now; one line per bind that changed."""
    where = "/.shim/inject/site-mpich/mpich"
    bind = {"src": "/opt/site-mpich/lib/mpich", "dst": where, "read_only": True}
    names = ("libfabric.so.1", "libucp.so.0", "libuct.so.0", "ucx/libuct_ib.so.0")
    objects = [loaded(f"{where}/{name}") for name in names]
    old = record(*objects, loaded("linux-vdso.so.1"), binds=(bind,))
    assert loaded_differences(old, record(binds=(bind,))) == []   # nor is the vDSO taken for the image's
    (line,) = lines(old, record(binds=({**bind, "src": "/opt/mpich-5.1/lib/mpich"},)))
    assert line == (f"differs: 4 object(s) the run loaded from host /opt/site-mpich/lib/mpich (bound at {where}: "
                    "libfabric.so.1, libucp.so.0, libuct.so.0, …): bound from elsewhere now: "
                    "recorded /opt/site-mpich/lib/mpich, now /opt/mpich-5.1/lib/mpich")
    (line,) = lines(old, record())
    assert line.endswith("not bound now: recorded /opt/site-mpich/lib/mpich, now none")


def test_a_directory_image_is_named_as_not_compared():
    directory = {"kind": "dir", "sha256": None, "sif": None, "path": "/images/app"}
    (found,) = loaded_differences(record(loaded("/usr/lib/libx.so.1"), image=directory), record(image=directory))
    assert not found.material and found.line().startswith("note: 1 object(s) the run loaded from the image (libx.so.1)")


# ---- shimrun check --against, records on disk ---------------------------------------------------

def test_a_hand_made_record_with_a_loaded_list_is_read(shim, busybox_sif: Path, user_dir: Path):
    """The file's run took busybox's `true`; the replay on this node finds it the same."""
    doc = json.loads((DATA / "loaded-record.json").read_text())
    target = user_dir / "record.json"
    target.write_text(json.dumps(doc))
    r = shim.run(["check", "--json", busybox_sif, "--against", target])
    assert r.returncode in (0, 1), r.stderr
    found = json.loads(r.stdout)["differences"]
    assert not [d for d in found if d["what"].startswith("loaded ")], found
    assert [d for d in found if "object(s) the run loaded from the image (busybox)" in d["what"]], found


@pytest.mark.parametrize(("change", "says"), [
    (lambda e: e.pop("path"), "loaded[0].path is missing"),
    (lambda e: e.update(path=None), "loaded[0].path is not a string"),
    (lambda e: e.update(pid=[1]), "loaded[0].pid is not a value"),
])
def test_a_loaded_list_of_another_shape_is_refused(shim, busybox_sif: Path, user_dir: Path, change, says):
    doc = json.loads((DATA / "loaded-record.json").read_text())
    change(doc["loaded"][0])
    target = user_dir / "bad.json"
    target.write_text(json.dumps(doc))
    r = shim.run(["check", busybox_sif, "--against", target])
    assert r.returncode == ExitCode.USAGE and r.stdout == "", r.stdout
    assert says in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_swapped_site_library_that_the_run_loaded_is_named(shim, foo_image: Path, site_libs, user_dir: Path):
    """A real record (the site's libsitefoo injected) with the loaded list the executor writes;
    the site then puts another build of libsitefoo at the same path."""
    site = user_dir / "site-lib"
    site.mkdir()
    lib = site / "libsitefoo.so.1"
    shutil.copy(site_libs["good"], lib)
    shutil.copy(site_libs["good"].parent / "libsitedep.so.1", site / "libsitedep.so.1")
    conf = write_conf(user_dir / "conf", {"site-foo": foo_profile(lib)})
    target = user_dir / "r.json"
    r = shim.run(["--provenance", target, "--conf", conf, foo_image, "/opt/app/foo-app"])
    assert r.returncode == 0 and r.stdout == "foo: host\ndep: host dep\n", r.stderr
    doc = json.loads(target.read_text())
    (foo,) = [d for d in doc["plan"]["decisions"] if d["library"] == "libsitefoo.so.1"]
    assert foo["decision"] == "inject" and foo["host_path"] == str(lib)
    doc["loaded"] = [loaded("/opt/app/foo-app", exe="foo-app"),
                     loaded(foo["container_path"], str(lib), foo["sha256"], exe="foo-app")]
    target.write_text(json.dumps(doc))
    same = shim.run(["check", foo_image, "--against", target])
    assert same.returncode == 0 and "the same computation would run" in same.stdout, same.stdout + same.stderr
    assert "note: 1 object(s) the run loaded from the image (foo-app)" in same.stdout

    rebuilt = user_dir / "rebuilt"
    rebuilt.mkdir()
    for name in ("libsitedep.so.1", "libsitedep.so"):  # what foo_lib links the new build with
        shutil.copy(site_libs["good"].parent / name, rebuilt / name)
    other = foo_lib(rebuilt, "host rebuilt", "sitedep")
    shutil.copy(other, lib)
    lib.chmod(0o755)
    swapped = shim.run(["check", foo_image, "--against", target])
    assert swapped.returncode == 1, swapped.stdout + swapped.stderr
    now = hashlib.sha256(lib.read_bytes()).hexdigest()
    assert (f"differs: loaded {foo['container_path']} (host {lib}, by foo-app): offered now as another build: "
            f"recorded sha256:{foo['sha256'][:16]}…, now sha256:{now[:16]}…") in swapped.stdout.splitlines()


def test_an_audited_run_then_another_site_mpi(shim, user_dir: Path):
    """The MPICH app with the site's MPICH 5 injected, audited (--provenance turns the audit on);
    then the site's profile points at a copy of that MPI in another place."""
    missing = audit_missing(shim)
    if missing:
        pytest.skip(missing)
    mpi, sif = hostmpi.build_host_mpi(), images.build_sif(images.DEBIAN_MPICH)
    conf = hostmpi.write_site_conf(user_dir / "conf", mpi.prefix)
    target = user_dir / "r.json"
    r = shim.run(["--provenance", target, "--conf", conf, sif, "/opt/app/hello"])
    assert r.returncode == 0 and "MPICH Version:      5.0" in r.stdout, r.stdout + r.stderr
    doc = json.loads(target.read_text())
    (entry,) = [e for e in doc["loaded"] if e["host"] == str(mpi.libmpi)]
    assert entry["sha256"] == hashlib.sha256(mpi.libmpi.read_bytes()).hexdigest() and entry["exe"] == "hello"
    same = shim.run(["check", sif, "--against", target])
    assert same.returncode == 0 and "the same computation would run" in same.stdout, same.stdout + same.stderr

    moved = user_dir / "mpich-moved"
    shutil.copytree(mpi.prefix / "lib", moved / "lib", symlinks=True)
    subprocess.run(["chmod", "-R", "a+rX", str(moved)], check=True)
    hostmpi.write_site_conf(conf, moved)
    now = shim.run(["check", sif, "--against", target])
    assert now.returncode == 1, now.stdout + now.stderr
    lines = now.stdout.splitlines()
    assert (f"differs: loaded {entry['path']} (host {mpi.libmpi}, by hello): another host file offered there now: "
            f"recorded {mpi.libmpi}, now {moved / 'lib' / 'libmpi.so.12'}") in lines, now.stdout
    assert any(ln.startswith("differs: ") and f"loaded from host {mpi.bundled_dir} " in ln
               and ln.endswith(f"bound from elsewhere now: recorded {mpi.bundled_dir}, now {moved / 'lib' / 'mpich'}")
               for ln in lines), now.stdout
