"""The plan cache: a warm `check` (or launch) reuses the plan, opens no ELF file and does not import
pyelftools; anything the plan depends on (a profile, a host library, the image) makes it a miss."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import VENV_PYTHON
from library_images import foo_profile
from siteconf import write_conf

from shim.errors import ExitCode

STATE = re.compile(r"plan cache (hit|miss|off)")


@pytest.fixture
def conf(world_dir: Path, site_libs: dict[str, Path], request) -> Path:
    return write_conf(world_dir / f"conf-{request.node.name}", {"site-foo": foo_profile(site_libs["good"])})


def check(shim, conf: Path, image: Path, cache: Path, *extra: str, python_opts: tuple[str, ...] = ()):
    cmd = ["check", "--json", "--debug", "--conf", conf, image, "/opt/app/foo-app"]
    if python_opts:
        r = subprocess.run([VENV_PYTHON, *python_opts, "-m", "shim", *map(str, cmd)],
                           capture_output=True, text=True, check=False, cwd="/tmp",
                           env=shim.env({"SHIMRUN_CACHE": str(cache), **dict(e.split("=", 1) for e in extra)}),
                           **shim._ids())
    else:
        r = shim.run(cmd, env={"SHIMRUN_CACHE": str(cache), **dict(e.split("=", 1) for e in extra)})
    assert r.returncode == 0, r.stderr
    return STATE.search(r.stderr).group(1), r


def test_second_check_is_a_hit_without_pyelftools(shim, conf, foo_image, user_dir):
    cache = user_dir / "cache"
    state, cold = check(shim, conf, foo_image, cache, python_opts=("-X", "importtime"))
    assert state == "miss" and "elftools" in cold.stderr
    state, warm = check(shim, conf, foo_image, cache, python_opts=("-X", "importtime"))
    assert state == "hit" and "elftools" not in warm.stderr
    assert warm.stdout == cold.stdout  # the same plan, JSON for JSON
    assert check(shim, conf, foo_image, cache, "SHIMRUN_NO_PLAN_CACHE=1")[0] == "off"


def test_changed_inputs_are_a_miss(shim, conf, foo_image, user_dir, site_libs):
    cache = user_dir / "cache"
    assert check(shim, conf, foo_image, cache)[0] == "miss"
    assert check(shim, conf, foo_image, cache)[0] == "hit"
    profile = conf / "profiles" / "site-foo.toml"
    profile.write_text(profile.read_text() + "\n# edited\n")
    assert check(shim, conf, foo_image, cache)[0] == "miss"
    assert check(shim, conf, foo_image, cache)[0] == "hit"
    os.utime(site_libs["good"])  # the host library was updated in place
    assert check(shim, conf, foo_image, cache)[0] == "miss"


def test_a_torn_entry_is_a_miss_not_an_error(shim, conf, foo_image, user_dir):
    cache = user_dir / "cache"
    check(shim, conf, foo_image, cache)
    (entry,) = (cache / "plans").glob("*.json")
    entry.write_text(entry.read_text()[: len(entry.read_text()) // 2])
    state, r = check(shim, conf, foo_image, cache)
    assert state == "miss" and '"decision": "inject"' in r.stdout


def _store(directory: str, barrier, n: int) -> None:
    try:
        os.environ["SHIMRUN_CACHE"] = directory
        from shim.model import Decision
        from shim.plan.cache import CachedPlan, store_plan
        from shim.plan.model import Plan

        plan = Plan(image="img.sif", profiles=["p"], decisions=[Decision("libx.so.1", "/h", "/c", "inject", "r", "p")])
        barrier.wait(30)
        os._exit(0 if store_plan("k" * 32, CachedPlan(plan, b"\x01" * 4096 * (1 + n % 3), {}, {})) else 2)
    except BaseException:
        os._exit(1)


def test_64_ranks_storing_the_same_plan_at_once(tmp_path, monkeypatch):
    """A step's 64 first launches on a node may all miss and store together: every read in the
    meantime is a miss or a whole entry, never a torn one, and no temporary file stays."""
    import multiprocessing

    from shim.plan.cache import load_plan

    monkeypatch.setenv("SHIMRUN_CACHE", str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(64)
    procs = [ctx.Process(target=_store, args=(str(tmp_path), barrier, i)) for i in range(64)]
    for p in procs:
        p.start()
    reads = []
    while any(p.is_alive() for p in procs):
        got = load_plan("k" * 32, str(tmp_path))
        if got is not None:
            reads.append(got)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    final = load_plan("k" * 32, str(tmp_path))
    assert final is not None and final.plan.decisions[0].library == "libx.so.1"
    assert all(e.plan.decisions[0].library == "libx.so.1" and len(e.ld_cache) % 4096 == 0 for e in reads)
    assert not [n for n in os.listdir(tmp_path / "plans") if n.endswith(".tmp")]


def test_a_directory_image_whose_library_changed_gets_a_fresh_plan(shim, conf, foo_image, user_dir,
                                                                   site_libs):
    """The plan records every path it read inside the image with its identity: replacing the
    image's libsitefoo.so.1 (same directory, same top-level mtime) is a miss, and the new plan
    sees the new file."""
    image = user_dir / "image"
    shutil.copytree(foo_image, image, symlinks=True)
    os.utime(image, (1, 1))  # the top directory's stat must not be what catches it
    cache = user_dir / "cache"
    state, r = check(shim, conf, image, cache)
    (d,) = [d for d in json.loads(r.stdout)["decisions"] if d["library"] == "libsitefoo.so.1"]
    assert state == "miss" and d["decision"] == "inject"
    assert check(shim, conf, image, cache)[0] == "hit"
    lib = image / "usr/lib/x86_64-linux-gnu/libsitefoo.so.1"
    lib.unlink()
    shutil.copy2(site_libs["good"], lib)  # the image now carries the host's very build
    os.utime(image, (1, 1))
    state, r = check(shim, conf, image, cache)
    (d,) = [d for d in json.loads(r.stdout)["decisions"] if d["library"] == "libsitefoo.so.1"]
    assert state == "miss" and (d["decision"], d["reason"]) == ("skip", "the image already has an identical file")
    assert check(shim, conf, image, cache)[0] == "hit"


def test_a_directory_images_hardware_check_follows_its_files(shim, user_dir):
    """The hardware-check cache revalidates what the check read in a directory image: once the
    image's declaration is removed, launches stop failing on it."""
    image = user_dir / "declares-cuda"
    (image / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", image / "bin/busybox")
    for d in ("etc", "proc", "sys", "dev", "tmp", "home", ".shim"):
        (image / d).mkdir()
    (image / ".shim/requires").write_text("gpu.cuda>=12.2\n")
    subprocess.run(["chmod", "-R", "a+rX", str(image)], check=True)
    env = {"SHIMRUN_CACHE": str(user_dir / "cache")}
    for _ in range(2):  # cold, then from the cache
        r = shim.run([image, "/bin/busybox", "true"], env=env)
        assert r.returncode == ExitCode.REFUSED and "GPU-ABSENT" in r.stderr and "gpu.cuda>=12.2" in r.stderr, r.stderr
    (image / ".shim/requires").unlink()
    os.utime(image, (1, 1))
    r = shim.run([image, "/bin/busybox", "true"], env=env)
    assert r.returncode == 0 and "GPU-ABSENT" not in r.stderr, r.stderr
