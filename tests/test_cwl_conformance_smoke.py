"""A handful of the CWL v1.2 conformance tests through shim, as scripts/cwl_conformance.sh runs the
whole suite: `cwltest` drives `cwltool --singularity` with only shim's compat commands on PATH, as
an ordinary user, with the images the suite names built offline (tests/cwl_images.py) and waiting
in cwltool's cache under the names `singularity pull` would give them. One test per stand-in image
and per thing a container changes: stdout redirection, the image's ENTRYPOINT (`singularity run`),
$HOME and $TMPDIR, no network unless asked for, a writable directory in the working directory."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import cwl_images
import engines
import pytest
from conftest import User, compat_bin_dir, shimrun_path

SUITE_COMMIT = "551d58d409ef2a0fa2e3ab93b85167dd7d4b1833"   # scripts/cwl_conformance.sh's
SUITE_GIT = Path(os.environ.get("CWL_SUITE_GIT", "/work/.mirror/common-workflow-language+cwl-v1.2/repo"))
# Not the suite's first test: cwltest's -s cannot select test number 1 (it looks the name up as a
# number and takes 0 for "not found").
SMOKE = ("stdout_redirect_docker", "docker_entrypoint", "env_home_tmpdir_docker", "networkaccess_disabled",
         "initial_workdir_empty_writable_docker")
TIMEOUT = 300


@pytest.fixture(scope="module")
def venv() -> Path:
    try:
        return engines.conformance_venv()
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"cwltest/cwltool could not be installed (scripts/cwl_conformance.requirements.txt): {e}")


@pytest.fixture(scope="module")
def suite(world_dir: Path) -> Path:
    if not SUITE_GIT.is_dir():
        pytest.skip(f"no cwl-v1.2 git directory at {SUITE_GIT} (set CWL_SUITE_GIT)")
    dest = world_dir / "cwl-v1.2"
    dest.mkdir()
    archive = subprocess.run(["git", f"--git-dir={SUITE_GIT}", "archive", SUITE_COMMIT], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)
    return dest


def _as_user(user: User, argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    ids = {"user": user.uid, "group": user.gid, "extra_groups": []} if os.getuid() == 0 else {}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, check=False, **ids)


def _env(user: User, work: Path, sifs: Path) -> dict[str, str]:
    return {"HOME": user.home, "USER": user.name, "LOGNAME": user.name, "LANG": "C.UTF-8",
            "PATH": f"{compat_bin_dir()}:/usr/local/bin:/usr/bin:/bin", "TMPDIR": str(work),
            "CWL_SINGULARITY_CACHE": str(sifs)}


def test_stand_ins_have_the_names_cwltool_looks_for(venv: Path, user: User, user_dir: Path) -> None:
    """Against cwl-utils' own naming: a stand-in under any other name would be pulled (and fail)."""
    refs = [s.ref for s in cwl_images.STAND_INS] + ["docker.io/library/some_image"]
    code = ("import sys; from cwl_utils.image_puller import SingularityImagePuller as P\n"
            "for r in sys.argv[1:]: print(P(r if ':' in r.rsplit('/', 1)[-1] else r + ':latest', '/c',"
            " 'singularity', False).find_destination_path().name)")
    done = _as_user(user, [str(venv / "bin" / "python"), "-c", code, *refs], user_dir, _env(user, user_dir, user_dir))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [cwl_images.pulled_name(r) for r in refs]


def test_conformance_smoke(venv: Path, suite: Path, user: User, user_dir: Path) -> None:
    sifs = user_dir / "sifs"
    placed = cwl_images.place(sifs, shimrun_path())
    tool = user_dir / "cwltool"
    tool.write_text(f'#!/bin/sh\nexec {venv}/bin/python -c "{engines.CWLTOOL_MAIN}" "$@"\n')
    tool.chmod(0o755)
    junit = user_dir / "smoke.xml"
    os.chown(user_dir / "sifs", user.uid, user.gid)
    done = _as_user(user, [str(venv / "bin" / "python"), "-c", engines.CWLTEST_MAIN, "--test", "conformance_tests.yaml",
                           "--tool", str(tool), "-j", "2", "--timeout", "120", "--junit-verbose",
                           "--junit-xml", str(junit), "-s", ",".join(SMOKE), "--", "--singularity"],
                    suite, _env(user, user_dir, sifs))
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert "All tests passed" in done.stdout + done.stderr
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    assert len(cases) == len(SMOKE)
    for case in cases:  # every tool ran in a container (cwltool's Singularity path), from a placed image
        err = case.findtext("system-err") or ""
        assert "with Singularity" in err and "Pulling" not in err, err[-3000:]
    assert sorted(p.name for p in sifs.iterdir()) == sorted(p.name for p in placed.values())


def test_a_failing_tool_fails_the_smoke_run(venv: Path, suite: Path, user: User, user_dir: Path) -> None:
    """The runner's status reaches cwltest: without the image, the test must fail (not pass on a
    swallowed error, as `python -m cwltool` would let it)."""
    sifs = user_dir / "empty-sifs"
    sifs.mkdir()
    os.chown(sifs, user.uid, user.gid)
    tool = user_dir / "cwltool"
    tool.write_text(f'#!/bin/sh\nexec {venv}/bin/python -c "{engines.CWLTOOL_MAIN}" "$@"\n')
    tool.chmod(0o755)
    done = _as_user(user, [str(venv / "bin" / "python"), "-c", engines.CWLTEST_MAIN, "--test", "conformance_tests.yaml",
                           "--tool", str(tool), "--timeout", "120", "-s", "stdout_redirect_docker", "--",
                           "--singularity"], suite, _env(user, user_dir, sifs))
    assert done.returncode != 0
    assert "1 failures" in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
