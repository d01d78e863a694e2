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
    if os.environ.get("SHIMRUN_NO_RECORD_CACHE"):
        env["SHIMRUN_NO_RECORD_CACHE"] = "1"
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


def test_cwltool_workflow(engines_venv: Path, tools_ref: str, user: User, user_dir: Path) -> None:
    work = _workdir(user_dir, user)
    step = """
      {name}:
        in: {{{inp}: {src}}}
        out: [out]
        run:
          class: CommandLineTool
          baseCommand: [sh, -c]
          arguments: ['{script}', $(inputs.{inp}.path)]
          inputs: {{{inp}: File}}
          outputs: {{out: {{type: File, outputBinding: {{glob: {name}.txt}}}}}}
    """
    wf = textwrap.dedent(f"""\
        cwlVersion: v1.2
        class: Workflow
        requirements:
          DockerRequirement: {{dockerPull: "docker://{tools_ref}"}}
        inputs: {{infile: File}}
        outputs: {{final: {{type: File, outputSource: step2/out}}}}
        steps:
        """)
    first = 'echo "GREETING=$GREETING" > step1.txt; cat "$0" >> step1.txt'
    wf += textwrap.indent(textwrap.dedent(step.format(name="step1", inp="infile", src="infile", script=first)), "  ")
    wf += textwrap.indent(textwrap.dedent(step.format(
        name="step2", inp="prev", src="step1/out", script='cat "$0" > step2.txt; echo step2-done >> step2.txt')), "  ")
    (work / "wf.cwl").write_text(wf)
    (work / "job.yml").write_text("infile: {class: File, path: input.txt}\n")
    (work / "sifs").mkdir()  # CWL_SINGULARITY_CACHE: cwltool pulls into it, it does not make it
    os.chown(work / "sifs", user.uid, user.gid)
    done = _run(user, [*engines.engine_command(engines_venv, "cwltool"), "--singularity", "--outdir", "out",
                       "wf.cwl", "job.yml"], work, {"CWL_SINGULARITY_CACHE": str(work / "sifs")})
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-6000:]
    final = Path(json.loads(done.stdout)["final"]["path"])
    assert final.read_text() == EXPECTED
    assert list((work / "sifs").glob("*.sif")), "cwltool pulled the image with `singularity pull`"


def test_snakemake_workflow(engines_venv: Path, tools_ref: str, user: User, user_dir: Path) -> None:
    work = _workdir(user_dir, user)
    (work / "Snakefile").write_text(textwrap.dedent(f"""\
        container: "docker://{tools_ref}"
        rule all:
            input: "results/step2.txt"
        rule step1:
            input: "input.txt"
            output: "results/step1.txt"
            shell: 'echo "GREETING=$GREETING" > {{output}}; cat {{input}} >> {{output}}'
        rule step2:
            input: "results/step1.txt"
            output: "results/step2.txt"
            shell: 'cat {{input}} > {{output}}; echo step2-done >> {{output}}'
        """))
    done = _run(user, [*engines.engine_command(engines_venv, "snakemake"), "--use-apptainer", "-c1",
                       "--apptainer-prefix", str(work / "images")], work)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert (work / "results" / "step2.txt").read_text() == EXPECTED
    assert list((work / "images").glob("*.simg")), "Snakemake pulled the image with `apptainer pull`"


def test_miniwdl_workflow(engines_venv: Path, tools_ref: str, user: User, user_dir: Path) -> None:
    work = _workdir(user_dir, user)
    task = """
        task {name} {{
          input {{ File {inp} }}
          command <<<
            {line1}
            {line2}
          >>>
          output {{ File out = "{name}.txt" }}
          runtime {{ docker: "{ref}" }}
        }}
    """
    wdl = textwrap.dedent("""\
        version 1.0
        workflow two_step {
          input { File infile }
          call step1 { input: infile = infile }
          call step2 { input: prev = step1.out }
          output { File final = step2.out }
        }
        """)
    wdl += textwrap.dedent(task.format(name="step1", inp="infile", ref=tools_ref,
                                       line1='echo "GREETING=$GREETING" > step1.txt',
                                       line2="cat ~{infile} >> step1.txt"))
    wdl += textwrap.dedent(task.format(name="step2", inp="prev", ref=tools_ref, line1="cat ~{prev} > step2.txt",
                                       line2="echo step2-done >> step2.txt"))
    (work / "wf.wdl").write_text(wdl)
    done = _run(user, [*engines.engine_command(engines_venv, "miniwdl"), "run", "wf.wdl", "infile=input.txt",
                       "--dir", "runs/"], work,
                {"MINIWDL__SCHEDULER__CONTAINER_BACKEND": "singularity",
                 "MINIWDL__SINGULARITY__IMAGE_CACHE": str(work / "sifs")})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    outputs = json.loads(done.stdout)["outputs"]
    assert Path(outputs["two_step.final"]).read_text() == EXPECTED
