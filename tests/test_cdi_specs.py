"""CDI specs: read, validated, listed and requested (issue #26 items 1-2). The specs are those
`nvidia-ctk cdi generate` writes (tests/cdi_specs.py) for a SIMULATED GPU host root
(tests/hostroot.py: fake /proc/driver/nvidia and /dev/nvidia*, gcc-built driver stubs); shimrun
runs as the ordinary test user with SHIMRUN_HOST_ROOT naming the simulated node."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cdi_specs import KIND, dump, gpu_uuid, nvidia_spec, write_spec
from conftest import Runner, User
from simulated_gpu import DRIVER, gpu_host

from shim.cdi.registry import load_registry, site_registry
from shim.cdi.select import launch_requests
from shim.cdi.spec import CdiError, RequestError, read_spec
from shim.compat.apptainer import _action
from shim.errors import ExitCode


@pytest.fixture
def node(world_dir: Path, request):
    """A simulated node with two GPUs, world-readable (the test user reads it), no spec yet."""
    base = world_dir / f"cdi-{request.node.name[:60].replace('[', '_').replace(']', '')}"
    host = gpu_host(base / "host")
    host.nvidia_dev_nodes(2)
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(base)], check=True)
    return host


def _readable(path: Path) -> None:
    subprocess.run(["chmod", "-R", "a+rX", str(path)], check=True)


def cdi(shim: Runner, host, *args: str, conf: Path | None = None) -> subprocess.CompletedProcess:
    extra = ["--conf", str(conf)] if conf else []
    return shim.run(["cdi", *args, *extra], env={"SHIMRUN_HOST_ROOT": str(host.root)})


def one_error(r: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The command failed with `code` and one line on stderr holding every word."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------- list, validate

def test_list_shows_what_nvidia_ctk_generated(shim: Runner, node) -> None:
    """The generated YAML (index, UUID and `all` names): `cdi list` prints one qualified name a
    line, as `nvidia-ctk cdi list` does; --json names the spec file and the edits."""
    write_spec(node.path("etc/cdi"), nvidia_spec(node, DRIVER))
    r = cdi(shim, node, "list")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == sorted([f"{KIND}=0", f"{KIND}=1", f"{KIND}={gpu_uuid(0)}",
                                            f"{KIND}={gpu_uuid(1)}", f"{KIND}=all"])
    r = cdi(shim, node, "list", "--json")
    rows = {d["name"]: d for d in json.loads(r.stdout)["devices"]}
    zero = rows[f"{KIND}=0"]
    assert zero["spec"] == str(node.path("etc/cdi/nvidia.yaml")) and zero["cdiVersion"] == "0.8.0"
    assert zero["edits"]["deviceNodes"] == 4 and zero["edits"]["hooks"] == 4   # nvidia0 + ctl, uvm, uvm-tools
    assert zero["edits"]["mounts"] >= 3   # libcuda, libnvidia-ml, the PTX JIT library, nvidia-smi


def test_validate_json_and_yaml(shim: Runner, node, world_dir: Path) -> None:
    spec = nvidia_spec(node, DRIVER)
    yaml_file = write_spec(node.path("etc/cdi"), spec)
    json_file = write_spec(node.path("var/run/cdi"), {**spec, "kind": "example.com/gpu"}, "other.json")
    r = cdi(shim, node, "validate")
    assert r.returncode == 0, r.stderr
    assert f"{yaml_file}: ok (cdiVersion 0.8.0, {KIND}, 5 devices)" in r.stdout
    assert f"{json_file}: ok" in r.stdout
    r = cdi(shim, node, "validate", str(json_file))
    assert r.returncode == 0 and r.stdout.count(": ok") == 1, r.stderr
    assert read_spec(str(json_file)).devices == read_spec(str(yaml_file)).devices


def test_nothing_to_list(shim: Runner, node) -> None:
    r = cdi(shim, node, "list")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert "no CDI devices" in r.stderr and str(node.path("etc/cdi")) in r.stderr


BAD_SPECS = {
    # file name, text -> words of the one line
    "malformed-yaml": ("nvidia.yaml", "cdiVersion: 0.8.0\nkind: nvidia.com/gpu\ndevices: [\n",
                       ("nvidia.yaml", "not valid YAML", "line 4")),
    "malformed-json": ("nvidia.json", '{"cdiVersion": "0.8.0", "kind": "nvidia.com/gpu", "devices": [}',
                       ("nvidia.json", "not valid JSON", "line 1")),
    "bad-version": ("nvidia.yaml", 'cdiVersion: "0.2.0"\nkind: nvidia.com/gpu\ndevices:\n- name: "0"\n',
                    ("cdiVersion = '0.2.0' is not a CDI version shim knows", "0.3.0")),
    "version-too-old": ("nvidia.yaml", 'cdiVersion: "0.4.0"\nkind: nvidia.com/gpu\ndevices:\n- name: "0"\n',
                        ("cdiVersion = '0.4.0'", "beginning with a digit needs at least 0.5.0")),
    "numeric-version": ("nvidia.yaml", "cdiVersion: 0.5\nkind: nvidia.com/gpu\ndevices:\n- name: gpu0\n",
                        ("cdiVersion must be a string, not a number",)),
    "bad-kind": ("nvidia.yaml", 'cdiVersion: "0.8.0"\nkind: nvidia.com/gpu/x\ndevices:\n- name: a\n',
                 ("kind = 'nvidia.com/gpu/x'", "invalid class")),
    "bad-name": ("nvidia.yaml", 'cdiVersion: "0.8.0"\nkind: nvidia.com/gpu\ndevices:\n- name: "gpu 0!"\n',
                 ("devices[0].name = 'gpu 0!' is not a device name",)),
    "unknown-key": ("nvidia.yaml", ('cdiVersion: "0.8.0"\nkind: nvidia.com/gpu\ndevices:\n- name: a\n'
                    '  containerEdits:\n    mount: []\n'),
                    ("device 'a': containerEdits.mount is not a key the CDI specification defines",)),
    "relative-path": ("nvidia.yaml", ('cdiVersion: "0.8.0"\nkind: nvidia.com/gpu\ndevices:\n- name: a\n'
                      '  containerEdits:\n    deviceNodes:\n    - path: dev/nvidia0\n'),
                      ("device 'a': containerEdits.deviceNodes[0].path must be an absolute path",)),
    "no-devices": ("nvidia.yaml", 'cdiVersion: "0.8.0"\nkind: nvidia.com/gpu\ndevices: []\n', ("devices is empty",)),
    "yaml-alias": ("nvidia.yaml", 'cdiVersion: "0.8.0"\nkind: nvidia.com/gpu\ndevices:\n- &d {name: a}\n- *d\n',
                   ("aliases", "not accepted")),
    "python-tag": ("nvidia.yaml", ('cdiVersion: !!python/object/apply:os.getpid []\nkind: a.com/b\n'
                   'devices: [{name: a}]\n'), ("not valid YAML",)),
}


@pytest.mark.parametrize("case", BAD_SPECS)
def test_a_bad_spec_is_one_line_and_exit_78(shim: Runner, node, case: str) -> None:
    """Each problem: one line naming the file (and the device and key), exit 78, from `cdi list`
    (the spec directories) and `cdi validate FILE` alike."""
    name, text, words = BAD_SPECS[case]
    path = write_spec(node.path("etc/cdi"), text, name)
    one_error(cdi(shim, node, "list"), ExitCode.CONFIG, str(path), *words)
    r = cdi(shim, node, "validate", str(path))
    one_error(r, ExitCode.CONFIG, str(path), *words)


def test_two_specs_defining_one_device(shim: Runner, node) -> None:
    spec = nvidia_spec(node, DRIVER)
    first = write_spec(node.path("etc/cdi"), spec, "a.yaml")
    second = write_spec(node.path("etc/cdi"), spec, "b.json")
    one_error(cdi(shim, node, "list"), ExitCode.CONFIG, str(first), str(second), f"both define device {KIND}=0")
    one_error(cdi(shim, node, "validate"), ExitCode.CONFIG, str(first), str(second))


def test_a_later_directory_wins(shim: Runner, node) -> None:
    """/var/run/cdi after /etc/cdi (the specification's order): its device replaces the same name."""
    static = nvidia_spec(node, DRIVER)
    dynamic = nvidia_spec(node, DRIVER)
    dynamic["devices"][0]["containerEdits"] = {"deviceNodes": [{"path": "/dev/nvidia1"}]}
    write_spec(node.path("etc/cdi"), static)
    later = write_spec(node.path("var/run/cdi"), dynamic)
    rows = {d["name"]: d for d in json.loads(cdi(shim, node, "list", "--json").stdout)["devices"]}
    assert rows[f"{KIND}=0"]["spec"] == str(later)
    registry = site_registry(environ={"SHIMRUN_HOST_ROOT": str(node.root)})
    [zero] = registry.resolve([f"{KIND}=0"])
    assert [n.path for n in zero.device.edits.device_nodes] == ["/dev/nvidia1"]


def test_the_sites_cdi_dirs(shim: Runner, node, world_dir: Path) -> None:
    conf = node.root.parent / "conf"
    conf.mkdir()
    (conf / "shim.toml").write_text('[cdi]\ndirs = ["/opt/site/cdi"]\n')
    write_spec(node.path("opt/site/cdi"), {**nvidia_spec(node, DRIVER), "kind": "site.example/gpu"}, "site.json")
    _readable(conf)
    r = cdi(shim, node, "list", conf=conf)
    assert r.returncode == 0 and "site.example/gpu=0" in r.stdout.splitlines(), r.stderr
    (conf / "shim.toml").write_text('[cdi]\ndirs = ["opt/site/cdi"]\n')
    one_error(cdi(shim, node, "list", conf=conf), ExitCode.CONFIG, "cdi.dirs", "not an absolute path")


# ---------------------------------------------------------------------------------- trust

def test_a_spec_directory_writable_by_others_is_refused(shim: Runner, node) -> None:
    """Whoever can write a spec chooses what every container of the node gets (host files bound,
    device nodes): a spec directory or file others can write is refused, and nothing is listed."""
    directory = node.path("etc/cdi")
    write_spec(directory, nvidia_spec(node, DRIVER))
    os.chmod(directory, 0o777)
    one_error(cdi(shim, node, "list"), ExitCode.CONFIG, str(directory), "not trusted", "writable by others")
    os.chmod(directory, 0o755)
    os.chmod(directory / "nvidia.yaml", 0o666)
    one_error(cdi(shim, node, "list"), ExitCode.CONFIG, "nvidia.yaml", "not trusted", "writable by others")
    os.chmod(directory / "nvidia.yaml", 0o644)
    os.chmod(node.path("etc"), 0o777)   # above it: the spec directory could be swapped
    one_error(cdi(shim, node, "list"), ExitCode.CONFIG, "not trusted", "a directory above it")


def test_a_spec_another_user_owns_is_refused(shim: Runner, node, other_user: User) -> None:
    path = write_spec(node.path("etc/cdi"), nvidia_spec(node, DRIVER))
    os.chown(path, other_user.uid, other_user.gid)
    one_error(cdi(shim, node, "list"), ExitCode.CONFIG, str(path), f"owned by uid {other_user.uid}")


def test_a_spec_symlink_is_not_followed(shim: Runner, node, world_dir: Path) -> None:
    elsewhere = write_spec(world_dir / "elsewhere-cdi", nvidia_spec(node, DRIVER))
    node.path("etc/cdi").mkdir(parents=True)
    (node.path("etc/cdi") / "nvidia.yaml").symlink_to(elsewhere)
    one_error(cdi(shim, node, "list"), ExitCode.CONFIG, "symbolic link")


# ---------------------------------------------------------------------------------- requests

def _registry(node) -> object:
    return load_registry(("/etc/cdi", "/var/run/cdi"), str(node.root))


def _nodes(resolved) -> list[str]:
    return sorted({n.path for r in resolved for n in r.edits.device_nodes})


def test_device_by_index_uuid_and_all(node) -> None:
    write_spec(node.path("etc/cdi"), nvidia_spec(node, DRIVER))
    registry = _registry(node)
    control = ["/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidiactl"]
    by_index = registry.resolve([f"{KIND}=1"])
    assert [r.qualified for r in by_index] == [f"{KIND}=1"]
    assert _nodes(by_index) == sorted(["/dev/nvidia1", *control])
    # the spec's edits, then the device's: env, the driver's mounts, the hooks (as data)
    edits = by_index[0].edits
    assert edits.env == ("NVIDIA_VISIBLE_DEVICES=void",)
    assert any(m.container_path.endswith(f"libcuda.so.{DRIVER}") for m in edits.mounts)
    assert [h.args[1] for h in edits.hooks] == ["create-symlinks", "enable-cuda-compat", "update-ldcache",
                                                 "disable-device-node-modification"]
    by_uuid = registry.resolve([f"{KIND}={gpu_uuid(0)}"])
    assert _nodes(by_uuid) == sorted(["/dev/nvidia0", *control])
    assert _nodes(registry.resolve([f"{KIND}=all"])) == sorted(["/dev/nvidia0", "/dev/nvidia1", *control])
    both = registry.resolve([f"{KIND}=0", f"{KIND}=1", f"{KIND}=0"])   # repeatable, each once
    assert [r.qualified for r in both] == [f"{KIND}=0", f"{KIND}=1"]


def test_all_without_a_device_named_all_is_every_device(node) -> None:
    spec = nvidia_spec(node, DRIVER, uuids=False)
    spec["devices"] = [d for d in spec["devices"] if d["name"] != "all"]
    write_spec(node.path("etc/cdi"), spec)
    assert [r.qualified for r in _registry(node).resolve([f"{KIND}=all"])] == [f"{KIND}=0", f"{KIND}=1"]


@pytest.mark.parametrize(("var", "value", "expected"), [
    ("CUDA_VISIBLE_DEVICES", "1", ["/dev/nvidia1"]),
    ("CUDA_VISIBLE_DEVICES", gpu_uuid(0), ["/dev/nvidia0"]),
    ("SLURM_JOB_GPUS", "0,1", ["/dev/nvidia0", "/dev/nvidia1"]),
    ("SLURM_STEP_GPUS", "1", ["/dev/nvidia1"]),
])
def test_a_gpu_binding_narrows_all(node, var: str, value: str, expected: list[str]) -> None:
    """--nv (nvidia.com/gpu=all) under CUDA_VISIBLE_DEVICES or Slurm's GPU binding: the bound
    devices' nodes only (by index or UUID); a device named explicitly is not narrowed."""
    write_spec(node.path("etc/cdi"), nvidia_spec(node, DRIVER))
    registry = _registry(node)
    requests = launch_requests((), True, registry)
    assert requests == (f"{KIND}=all",)
    gpus = [p for p in _nodes(registry.resolve(requests, {var: value})) if p[-1].isdigit()]
    assert gpus == expected
    assert _nodes(registry.resolve([f"{KIND}=0"], {var: value}))[0] == "/dev/nvidia-uvm"


def test_slurm_binding_wins_over_cuda_visible_devices(node) -> None:
    """Slurm's GPU indices are the node's (the device nodes' numbers); CUDA_VISIBLE_DEVICES inside
    a job may be renumbered from 0 by the cgroup."""
    write_spec(node.path("etc/cdi"), nvidia_spec(node, DRIVER))
    resolved = _registry(node).resolve([f"{KIND}=all"], {"SLURM_STEP_GPUS": "1", "CUDA_VISIBLE_DEVICES": "0"})
    assert [r.qualified for r in resolved] == [f"{KIND}=1"]


def test_bad_requests_exit_64_and_list_what_exists(node) -> None:
    write_spec(node.path("etc/cdi"), nvidia_spec(node, DRIVER))
    registry = _registry(node)
    with pytest.raises(RequestError) as e:
        registry.resolve([f"{KIND}=7"])
    assert e.value.code == ExitCode.USAGE
    assert f"--device {KIND}=7: no such CDI device" in str(e.value) and f"{KIND}=0, {KIND}=1" in str(e.value)
    with pytest.raises(RequestError, match="'GPU-nope' is not a device"):
        registry.resolve([f"{KIND}=all"], {"CUDA_VISIBLE_DEVICES": "GPU-nope"})
    with pytest.raises(RequestError, match="no such CDI device"):
        registry.resolve(["amd.com/gpu=all"])
    with pytest.raises(RequestError, match="VENDOR/CLASS=NAME"):
        registry.resolve(["nvidia.com/gpu"])


def test_nv_without_a_gpu_spec_keeps_the_profiles(node) -> None:
    registry = _registry(node)
    assert launch_requests((), True, registry) == ()
    assert launch_requests((f"{KIND}=0",), False, registry) == (f"{KIND}=0",)


def test_device_option_syntax_is_checked_before_planning(shim: Runner, busybox_sif: Path) -> None:
    one_error(shim.run(["--device", "nvidia.com=0", busybox_sif, "true"]), ExitCode.USAGE,
              "--device 'nvidia.com=0'", "is not vendor/class")


def test_apptainer_passes_device_through() -> None:
    argv = _action("exec", ["--device", f"{KIND}=0", "--device", f"{KIND}={gpu_uuid(1)}", "img", "app"], [], {})
    assert argv == ["exec", "--device", f"{KIND}=0", "--device", f"{KIND}={gpu_uuid(1)}", "img", "app"]


def test_dump_is_what_the_reader_reads(node) -> None:
    spec = nvidia_spec(node, DRIVER)
    assert dump(spec).startswith("---\ncdiVersion: 0.8.0\ncontainerEdits:")
    with pytest.raises(CdiError):
        read_spec(str(write_spec(node.path("etc/cdi"), dump({**spec, "cdiVersion": "9.9.9"}))))
