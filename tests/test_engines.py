"""Real workflow engines drive shim through its `apptainer`/`singularity` commands: cwltool
(--singularity), Snakemake (--use-apptainer) and miniwdl (its singularity backend), installed from
PyPI (tests/engines.py). Each runs a two-step workflow as the ordinary user, with only shim's
compatibility commands on PATH, in an image pulled from the local registry: one step uses the
image's Env, one an input file from the host, the second reads what the first wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import engines
import oci
import pytest
from conftest import User, compat_bin_dir

from shim.record.format import NO_RECORD_CACHE

ENGINE_TIMEOUT = 600
HOST_LINE = "a line from the host"
EXPECTED = f"GREETING={oci.TOOLS_GREETING}\n{HOST_LINE}\nstep2-done\n"


@pytest.fixture(scope="session")
def engines_venv() -> Path:
    try:
        return engines.engines_venv()
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        pytest.fail(f"installing the workflow engines failed (tests/requirements-engines.txt): {e}")


@pytest.fixture(scope="session")
def tools_ref(registry: oci.Registry, tools_layout: oci.Layout) -> str:
    registry.push(tools_layout, "sci/tools:1")
    return f"{registry.host}/sci/tools:1"


def _path() -> str:
    """Only shim's compatibility commands: no Apptainer anywhere else on it."""
    path = f"{compat_bin_dir()}:/usr/local/bin:/usr/bin:/bin"
    for name in ("apptainer", "singularity"):
        assert shutil.which(name, path=path) == str(compat_bin_dir() / name)
    return path


def _run(user: User, argv: list[str], cwd: Path, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {"HOME": user.home, "USER": user.name, "LOGNAME": user.name, "LANG": "C.UTF-8", "PATH": _path(),
           "APPTAINER_NO_HTTPS": "1",  # the test registry is plain HTTP (no engine passes --no-https)
           "APPTAINER_CACHEDIR": str(cwd / "apptainer-cache"), **(extra or {})}
    if os.environ.get(NO_RECORD_CACHE):
        env[NO_RECORD_CACHE] = "1"
    ids = {"user": user.uid, "group": user.gid, "extra_groups": []} if os.getuid() == 0 else {}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=ENGINE_TIMEOUT,
                          stdin=subprocess.DEVNULL, check=False, **ids)


def _workdir(user_dir: Path, user: User) -> Path:
    (user_dir / "input.txt").write_text(HOST_LINE + "\n")
    os.chown(user_dir / "input.txt", user.uid, user.gid)
    return user_dir


def _probe(engines_venv: Path, user: User, cwd: Path, code: str) -> subprocess.CompletedProcess:
    return _run(user, [str(engines_venv / "bin" / "python"), "-c", textwrap.dedent(code)], cwd)


def test_cwltool_reads_the_compat_version(engines_venv: Path, user: User, user_dir: Path) -> None:
    """cwltool's own probe runs `singularity --version` and gates features on it."""
    done = _probe(engines_venv, user, user_dir, """
        import cwltool.singularity as s, cwl_utils.singularity as u
        print(s.get_version()[0], s.get_version()[1], s.is_apptainer_1_1_or_newer(), s.is_version_3_9_or_newer(),
              u.is_version_3_or_newer())
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1.3.6", "apptainer", "True", "True", "True"]


def test_snakemake_reads_the_compat_version(engines_venv: Path, user: User, user_dir: Path) -> None:
    done = _probe(engines_venv, user, user_dir, """
        import subprocess
        from snakemake.deployment.singularity import Singularity
        s = Singularity()
        s.check()  # raises below Apptainer 1.0, or without apptainer/singularity on PATH
        out = subprocess.run(["apptainer", "--version"], capture_output=True, text=True).stdout
        print(s.parseversion(out).base_version)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1.3.6"]


def test_miniwdl_probe_passes(engines_venv: Path, user: User, user_dir: Path) -> None:
    done = _probe(engines_venv, user, user_dir, """
        import logging
        from WDL.runtime import config
        from WDL.runtime.backend.singularity import SingularityContainer
        log = logging.getLogger("probe")
        SingularityContainer.global_init(config.Loader(log, []), log)
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.split() == ["ok"], done.stderr


README = Path(__file__).resolve().parents[1] / "README.md"
README_IMAGE = "registry.example.org/sci/tools:1"


def readme_example(marker: str) -> tuple[str, str]:
    """The README's example after `marker`: (the file, the command line), its two indented blocks."""
    text = README.read_text().split("## Apptainer's command line and workflow engines", 1)[1]
    after = text.split(marker, 1)[1].split("\n")
    blocks: list[list[str]] = []
    for line in after[1:]:
        if line.startswith("    "):
            if not blocks or blocks[-1][-1] == "":
                blocks.append([])
            blocks[-1].append(line[4:])
        elif line.strip():
            break
        elif blocks:
            blocks[-1].append("")
        if len(blocks) > 2:
            break
    assert len(blocks) >= 2, f"README: no example after {marker}"
    return "\n".join(blocks[0]).strip() + "\n", "\n".join(blocks[1]).strip()


def _run_readme(user: User, engines_venv: Path, work: Path, command: str,
                extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The README's command line, with the engines on PATH (as a user who installed them has)."""
    tools = work / "engines-bin"
    tools.mkdir()
    for engine in engines.MODULES:
        wrapper = tools / engine
        wrapper.write_text(f'#!/bin/sh\nexec {" ".join(engines.engine_command(engines_venv, engine))} "$@"\n')
        wrapper.chmod(0o755)
    env = {"PATH": f"{tools}:{_path()}", **(extra or {})}
    return _run(user, ["/bin/sh", "-c", command], work, env)


def _write(user: User, path: Path, text: str) -> None:
    path.write_text(text)
    os.chown(path, user.uid, user.gid)


def test_cwltool_workflow(engines_venv: Path, tools_ref: str, user: User, user_dir: Path) -> None:
    work = _workdir(user_dir, user)
    wf, command = readme_example("With `wf.cwl`:")
    _write(user, work / "wf.cwl", wf.replace(README_IMAGE, tools_ref))
    _write(user, work / "job.yml", "infile: {class: File, path: input.txt}\n")
    done = _run_readme(user, engines_venv, work, command)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-6000:]
    final = Path(json.loads(done.stdout)["final"]["path"])
    assert final.read_text() == EXPECTED
    assert list((work / "sifs").glob("*.sif")), "cwltool pulled the image with `singularity pull`"


def test_snakemake_workflow(engines_venv: Path, tools_ref: str, user: User, user_dir: Path) -> None:
    work = _workdir(user_dir, user)
    snakefile, command = readme_example("With `Snakefile`:")
    _write(user, work / "Snakefile", snakefile.replace(README_IMAGE, tools_ref))
    done = _run_readme(user, engines_venv, work, command)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert (work / "results" / "step2.txt").read_text() == EXPECTED
    # into $APPTAINER_CACHEDIR, as Snakemake does when it is set
    assert list((work / "apptainer-cache").glob("*.simg")), "pulled with `apptainer pull`"


def test_miniwdl_workflow(engines_venv: Path, tools_ref: str, user: User, user_dir: Path) -> None:
    work = _workdir(user_dir, user)
    wdl, command = readme_example("With `wf.wdl`:")
    _write(user, work / "wf.wdl", wdl.replace(README_IMAGE, tools_ref))
    done = _run_readme(user, engines_venv, work, command, {"MINIWDL__SINGULARITY__IMAGE_CACHE": str(work / "sifs")})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    outputs = json.loads(done.stdout)["outputs"]
    assert Path(outputs["two_step.final"]).read_text() == EXPECTED
