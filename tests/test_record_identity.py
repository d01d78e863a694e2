"""No behaviour change against the reference build (issue #23's first acceptance): a fixed set of
command lines of the suite's own kinds, each launched as the ordinary test user with the build
under test and with the REFERENCE build (tests/refbuild.py: the commit before the refactor,
installed from this repository's git objects), and the launch records they write compared field
by field, decoded; `check --json` (and what a launch that writes no record says) compared as
the user sees it.

Each build plans in a fresh cache at the same path (a record names the cache's files), the
reference first; the runs' own files (a provenance record) go to a scratch directory beside it.
Equal except what is inherently per-build, each named in refbuild.normalised() with its reason."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import hostmpi
import hostroot
import images
import oci
import pytest
import refbuild
from conftest import REPO, User, compat_bin_dir, shimrun_path
from dirimage import BUSYBOX, Extras, busybox_dir
from policy import make_conf, make_signing_key, readable_copy
from siteconf import conf_with

pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static is not installed")

CUDA_ENV = 'export CUDA_VERSION=12.2.0\nexport NVIDIA_REQUIRE_CUDA="cuda>=12.2"\n'


@dataclass(frozen=True)
class Case:
    """A command line: shimrun's words (or `apptainer`'s) with {placeholders} (a fixture, one of
    DEBIAN_IMAGES, or {out}: the launch's scratch directory); the environment it runs with (the
    same placeholders); outputs: compare stdout and stderr too (check, --dry-run)."""
    name: str
    line: str
    env: tuple[tuple[str, str], ...] = ()
    tool: str = "shimrun"
    outputs: bool = False

    def placeholders(self) -> set[str]:
        text = self.line + " ".join(v for _, v in self.env)
        return {part.split("}", 1)[0] for part in text.split("{")[1:]} - {"out"}


def sim(root: str, **more: str) -> tuple[tuple[str, str], ...]:
    return (("SHIMRUN_HOST_ROOT", f"{{{root}}}"), *more.items())


CASES = [
    # single launches: SIF and directory images, busybox and Debian
    Case("sif", "{busybox_sif} /bin/busybox true"),
    Case("sif-shell", "{busybox_sif} sh -c true"),
    Case("sif-exec-verb", "exec {busybox_sif} /bin/busybox true"),
    Case("sif-run-verb", "run {busybox_sif}"),
    Case("dir", "{busybox_image} /bin/busybox true"),
    Case("debian-sif", "{debian_sif} /bin/true"),
    Case("debian-dir", "{debian_dir} /bin/true"),
    Case("quiet", "--quiet {busybox_sif} /bin/busybox true"),
    Case("debug", "--debug {debian_sif} /bin/true"),
    # isolation
    Case("contain", "--contain {busybox_sif} /bin/busybox true"),
    Case("contain-debian-dir", "--contain {debian_dir} /bin/true"),
    Case("containall", "--containall {debian_sif} /bin/true"),
    Case("ipc-pid-net", "--ipc --pid --net --network none {busybox_sif} /bin/busybox true"),
    Case("writable-tmpfs", "--writable-tmpfs {busybox_sif} /bin/busybox true"),
    Case("writable-tmpfs-dir", "--writable-tmpfs {debian_dir} /bin/true"),
    Case("fakeroot", "--fakeroot {busybox_sif} /bin/busybox true"),
    Case("fakeroot-contain", "--fakeroot --contain {debian_sif} /bin/true"),
    # binds, environment, working directory, home
    Case("bind", "--bind {data}:/data:ro -B {data}:/mnt/rw {busybox_sif} /bin/busybox true"),
    Case("bind-env", "{busybox_sif} /bin/busybox true", (("SHIMRUN_BIND", "{data}:/srv"),)),
    Case("mount", "--mount type=bind,source={data},target=/mnt/in,readonly {busybox_sif} /bin/busybox true"),
    Case("env", "--env A=1 -e 'B=two words' --env PATH=/opt/bin {busybox_sif} /bin/busybox true"),
    Case("env-file", "--env-file {data}/env.txt {debian_sif} /bin/true"),
    Case("env-prefixed", "{busybox_sif} /bin/busybox true", (("SHIMRUNENV_GREETING", "hi"),)),
    Case("cleanenv", "--cleanenv --env A=1 {debian_dir} /bin/true"),
    Case("pwd", "--pwd /tmp {busybox_sif} /bin/busybox true"),
    Case("home", "--home {data}:/home/me {busybox_sif} /bin/busybox true"),
    Case("no-home-no-mount", "--no-home --no-mount tmp,cwd {busybox_sif} /bin/busybox true"),
    Case("provenance", "--provenance {out}/prov.json {debian_sif} /bin/true"),
    # hardware: this node, and simulated nodes (tests/hostroot.py)
    Case("cuda-image-here", "{cuda_image} /bin/busybox true"),
    Case("cuda-image-strict", "--strict {cuda_image} /bin/busybox true"),
    Case("sim-gpu", "{cuda_image} /bin/busybox true", sim("gpu_node")),
    Case("sim-gpu-hidden", "{cuda_image} /bin/busybox true", sim("gpu_node", CUDA_VISIBLE_DEVICES="")),
    Case("sim-old-driver", "{cuda_image} /bin/busybox true", sim("old_driver_node")),
    Case("sim-rdma-rxe", "{mpich_sif} /opt/app/hello", sim("rxe_node")),
    Case("sim-one-cpu", "{debian_sif} /bin/true", sim("one_cpu_node", OMP_NUM_THREADS="64")),
    Case("nv", "--nv --conf {gpu_conf} {debian_sif} /bin/true", sim("gpu_node")),
    Case("nv-dir-contain", "--nv --contain --conf {gpu_conf} {debian_dir} /bin/true", sim("gpu_node")),
    Case("profile-cuda-driver", "--profile cuda-driver --conf {gpu_conf} {debian_sif} /bin/true", sim("gpu_node")),
    Case("nv-without-gpu-profile", "--nv --conf {env_conf} {busybox_sif} /bin/busybox true", outputs=True),
    # site profiles
    Case("profile-env", "--conf {env_conf} {busybox_sif} /bin/busybox true"),
    Case("mpi-injected", "--conf {mpi_conf} {mpich_sif} /opt/app/hello"),
    Case("mpi-no-profiles", "--no-profiles --conf {mpi_conf} {mpich_sif} /opt/app/hello"),
    Case("mpi-abi-refused", "--profile site-mpich --conf {mpi_conf} {openmpi_sif} /opt/app/hello"),
    Case("mpi-abi-strict", "--strict --profile site-mpich --conf {mpi_conf} {openmpi_sif} /opt/app/hello"),
    # the site's image policy: allowed, refused (a record holding only REFUSE)
    Case("policy-signed", "--conf {signed_only_conf} {signed_busybox} /bin/busybox true"),
    Case("policy-unsigned-refused", "--conf {signed_only_conf} {busybox_sif} /bin/busybox true"),
    Case("policy-path-refused", "--conf {paths_conf} {busybox_sif} /bin/busybox true"),
    Case("policy-directory-refused", "--conf {no_dirs_conf} {busybox_image} /bin/busybox true"),
    # OCI images (a local layout, built into a SIF): Entrypoint/Cmd, Env as data
    Case("oci-run", "run {oci_app_sif}"),
    Case("oci-run-args", "run {oci_noshell_sif} one two"),
    Case("oci-exec", "{oci_app_sif} /bin/sh -c true"),
    # Apptainer's command lines (shim/compat)
    Case("apptainer-exec", "exec --containall --pid --net --network none {busybox_sif} true", tool="apptainer"),
    Case("apptainer-miniwdl", "exec --pwd /tmp --containall --no-mount hostfs --fakeroot --bind {data}:/mnt/w:ro "
         "{busybox_sif} true", tool="apptainer"),
    Case("apptainer-run", "run --cleanenv {oci_app_sif}", tool="apptainer"),
    Case("singularity-shell-c", "exec --home {data} --bind {data} --pwd {data} {debian_sif} /bin/true",
         tool="singularity"),
    # what a user reads: check --json, --dry-run --json
    Case("check-sif", "check --json {busybox_sif}", outputs=True),
    Case("check-debian-dir", "check --json {debian_dir} /bin/true", outputs=True),
    Case("check-sim-gpu", "check --json {cuda_image} /bin/sh", sim("gpu_node"), outputs=True),
    Case("check-sim-old-driver", "check --json {cuda_image} /bin/sh", sim("old_driver_node"), outputs=True),
    Case("check-mpi", "check --json --conf {mpi_conf} {mpich_sif}", outputs=True),
    Case("dry-run-nv", "--dry-run --json --nv --conf {gpu_conf} {debian_sif} /bin/true", sim("gpu_node"), outputs=True),
    Case("check-oci", "check --json {oci_app_sif}", outputs=True),
    Case("check-policy-refused", "check --json --conf {signed_only_conf} {busybox_sif}", outputs=True),
    Case("dry-run-json", "--dry-run --json --conf {mpi_conf} {openmpi_sif} /opt/app/hello", outputs=True),
]


# ---- the images, configurations and simulated nodes the lines name -------------------------------

def _readable(path: Path) -> Path:
    subprocess.run(["chmod", "-R", "a+rX", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def area(world_dir: Path) -> Path:
    d = world_dir / "identity"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="module")
def data(area: Path) -> Path:
    d = area / "data"
    d.mkdir()
    (d / "file").write_text("data\n")
    (d / "env.txt").write_text("FROM_FILE=1\nOTHER=two words\n")
    return _readable(d)


@pytest.fixture(scope="module")
def busybox_image(area: Path) -> Path:
    return busybox_dir(area / "busybox-dir")


@pytest.fixture(scope="module")
def cuda_image(area: Path) -> Path:
    """An image that counts as built for CUDA 12.2 (CUDA_VERSION in its environment)."""
    return busybox_dir(area / "cuda-dir", Extras(env=CUDA_ENV))


# The Debian images (tests/images.py: built once per machine, cached), by placeholder.
DEBIAN_IMAGES = {
    "debian_sif": lambda: images.build_sif(images.DEBIAN_BASE),
    "debian_dir": lambda: images.build_rootfs(images.DEBIAN_BASE),
    "mpich_sif": lambda: images.build_sif(images.DEBIAN_MPICH),
    "openmpi_sif": lambda: images.build_sif(images.DEBIAN_OPENMPI),
}


@pytest.fixture(scope="module")
def mpi_conf(area: Path) -> Path:
    return hostmpi.write_site_conf(area / "conf-mpi", hostmpi.build_host_mpi().prefix)


@pytest.fixture(scope="module")
def env_conf(area: Path) -> Path:
    return conf_with(area / "conf-env", {"a-site": 'prepend = { PATH = "/site/bin" }\nset = { SITE = "1" }\n',
                                         "b-site": 'unset = ["HOSTVAR"]\n'})


@pytest.fixture(scope="module")
def gpu_conf(area: Path) -> Path:
    """The shipped cuda-driver example, enabled as a site enables it (on request: --nv)."""
    conf = area / "conf-gpu"
    (conf / "profiles").mkdir(parents=True)
    (conf / "shim.toml").write_text("")
    shutil.copy(REPO / "conf" / "profiles" / "examples" / "cuda-driver.toml", conf / "profiles")
    return _readable(conf)


def _node(area: Path, name: str, make) -> Path:
    return _readable(make(area / f"sim-{name}").root)


def _gpu_with_smi(root: Path) -> hostroot.SimulatedHost:
    """A GPU node with nvidia-smi (the cuda-driver example's one required binary)."""
    host = hostroot.gpu_present(root)
    host.write("usr/bin/nvidia-smi", "#!/bin/sh\n").chmod(0o755)
    return host


@pytest.fixture(scope="module")
def gpu_node(area: Path) -> Path:
    return _node(area, "gpu", _gpu_with_smi)


@pytest.fixture(scope="module")
def old_driver_node(area: Path) -> Path:
    return _node(area, "gpu-470", lambda r: hostroot.gpu_present(r, driver="470.199.02", cuda=11040))


@pytest.fixture(scope="module")
def rxe_node(area: Path) -> Path:
    return _node(area, "rxe", hostroot.rdma_rxe)


@pytest.fixture(scope="module")
def one_cpu_node(area: Path) -> Path:
    return _node(area, "one-cpu", hostroot.one_cpu_of_64)


@pytest.fixture(scope="module")
def signing_key(area: Path) -> tuple[Path, Path]:
    return make_signing_key(area)


@pytest.fixture(scope="module")
def signed_busybox(area: Path, busybox_sif: Path, signing_key) -> Path:
    sif = readable_copy(busybox_sif, area / "busybox-signed.sif")
    r = subprocess.run([shimrun_path(), "sign", "--key", signing_key[0], sif], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    return sif


@pytest.fixture(scope="module")
def signed_only_conf(area: Path, signing_key) -> Path:
    return make_conf(area / "conf-signed-only", "allow_unsigned = false", (signing_key[1],))


@pytest.fixture(scope="module")
def paths_conf(area: Path) -> Path:
    return make_conf(area / "conf-paths", f'paths = ["{area}/allowed"]')


@pytest.fixture(scope="module")
def no_dirs_conf(area: Path) -> Path:
    return make_conf(area / "conf-no-dirs", "allow_directories = false")


def _oci_sif(layout: oci.Layout, out: Path, user: User) -> Path:
    """`shimrun build` of a local OCI layout (as the user: the build under test's)."""
    r = subprocess.run([shimrun_path(), "build", str(out), f"oci:{layout.path}:{layout.tag}"], capture_output=True,
                       text=True, check=False, user=user.uid, group=user.gid, extra_groups=[],
                       env={"HOME": user.home, "PATH": "/usr/bin:/bin", "SHIMRUN_CACHE": str(out.parent / "cache")})
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def oci_area(area: Path, user: User) -> Path:
    d = area / "oci"
    d.mkdir()
    os.chown(d, user.uid, user.gid)
    return d


@pytest.fixture(scope="module")
def oci_app_sif(app_layout, oci_area: Path, user: User) -> Path:
    return _oci_sif(app_layout, oci_area / "app.sif", user)


@pytest.fixture(scope="module")
def oci_noshell_sif(noshell_layout, oci_area: Path, user: User) -> Path:
    return _oci_sif(noshell_layout, oci_area / "noshell.sif", user)


# ---- the two builds, and one line launched with each ---------------------------------------------

@pytest.fixture(scope="module")
def builds() -> dict[str, refbuild.Build]:
    """The reference, and the build under test (the prefix of $SHIMRUN's venv)."""
    frontend = Path(shimrun_path()).resolve()
    prefix = frontend.parents[6] if frontend.parent.name == "libexec" else frontend.parents[2]
    under_test = refbuild.Build(prefix, frontend)
    if under_test.compat_bin != compat_bin_dir():
        pytest.fail(f"the front-end {frontend} and the compat commands {compat_bin_dir()} are two installs")
    return {"reference": refbuild.reference_build(), "under test": under_test}


def launch(build: refbuild.Build, case: Case, user: User, values: dict[str, str], run_dir: Path) -> refbuild.Outcome:
    """The case's line, launched by `build` as the user, in `run_dir` (its cache and scratch)."""
    for d in (run_dir, run_dir / "cache", run_dir / "out"):
        d.mkdir()
        os.chown(d, user.uid, user.gid)
    values = {**values, "out": str(run_dir / "out")}
    exe = build.shimrun if case.tool == "shimrun" else build.compat_bin / case.tool
    runner = refbuild.RecordingRunner(user, str(exe))
    # SHIMRUN_SERVE=mount: the image served as the reference serves it (a per-launch mount; the
    # reference ignores the setting, and both builds hash it into the record's key alike)
    env = {"SHIMRUN_CACHE": str(run_dir / "cache"), "HOSTVAR": "host", "SHIMRUN_SERVE": "mount",
           **{k: v.format(**values) for k, v in case.env}}
    r = runner.run([w.format(**values) for w in shlex.split(case.line)], cwd=run_dir, env=env, timeout=120)
    records = tuple(tuple(refbuild.decode(p.read_bytes())) for p in sorted((run_dir / "cache").glob("records/*.rec")))
    return refbuild.Outcome(r.returncode, r.stdout, r.stderr, records)


# Other processes on the node change what a record notes between the two launches (an install's
# chmod of /dev/fuse, a cache directory's mtime, a user added to /etc/passwd): the pair is
# launched again before a difference counts. A real difference is the same every time.
ATTEMPTS = 3


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_launch_record_is_the_references(case: Case, builds, user: User, user_dir: Path, request) -> None:
    values = {name: str(DEBIAN_IMAGES[name]() if name in DEBIAN_IMAGES else request.getfixturevalue(name))
              for name in sorted(case.placeholders())}
    prefixes = (str(builds["reference"].prefix), str(builds["under test"].prefix))
    seen = []
    for attempt in range(ATTEMPTS):
        outcomes = {}
        for which, build in builds.items():
            run_dir = user_dir / "run"  # the same path for both: records name the cache's files
            outcomes[which] = launch(build, case, user, values, run_dir)
            run_dir.rename(user_dir / f"run.{attempt}.{which.replace(' ', '-')}")
        ref = outcomes["reference"]
        if not case.outputs and not ref.records:
            pytest.fail(f"the reference wrote no launch record (exit {ref.returncode}):\n{ref.stderr}")
        seen.append(refbuild.differences(ref, outcomes["under test"], prefixes, case.outputs))
        if not seen[-1]:
            return
    pytest.fail(f"{ATTEMPTS} times another record or output than the reference's; the last:\n{seen[-1]}",
                pytrace=False)
