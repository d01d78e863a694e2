"""CDI edits at launch, on this machine's real /dev (no simulated host root), as the test user:

- a deviceNode whose hostPath differs from its path (a vendor's node shown under another name) is
  bound at the container path and stays usable there: the app reads zeros from /dev/nvidia9, which
  is this node's /dev/zero (a bind of a device node must keep it usable: not nodev);
- a spec's unknown hook under the site's `[cdi] unknown_hooks = "warn"`: the launch goes on with one
  warning line naming the hook, the hook's binary never runs (it would leave a marker); under the
  default ("error") the launch stops with one line, exit 78, and the app never starts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import Runner
from dirimage import busybox_dir

from shim.errors import ExitCode

KIND = "example.com/dev"


def _site(base: Path, spec: dict, unknown_hooks: str | None = None) -> Path:
    """A site configuration directory whose [cdi] dirs holds `spec` (root's, not writable by others)."""
    specs, conf = base / "cdi", base / "conf"
    specs.mkdir(parents=True)
    conf.mkdir()
    (specs / "dev.json").write_text(json.dumps(spec))
    hooks = f'unknown_hooks = "{unknown_hooks}"\n' if unknown_hooks else ""
    (conf / "shim.toml").write_text(f'[launch]\nbinds = []\n[cdi]\ndirs = ["{specs}"]\n{hooks}')
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(base)], check=True)
    return conf


@pytest.fixture
def image(user_dir: Path) -> Path:
    return busybox_dir(user_dir / "image")


def _launch(shim: Runner, conf: Path, image: Path, cache: Path, script: str) -> subprocess.CompletedProcess:
    return shim.run(["--conf", conf, "--device", f"{KIND}=x", image, "/bin/sh", "-c", script],
                    env={"SHIMRUN_CACHE": str(cache)})


def test_a_device_node_under_another_name_is_usable_there(shim: Runner, world_dir: Path, image: Path,
                                                          user_dir: Path) -> None:
    base = world_dir / "cdi-renamed-node"
    spec = {"cdiVersion": "0.5.0", "kind": KIND, "devices": [
        {"name": "x", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia9", "hostPath": "/dev/zero"}]}}]}
    conf = _site(base, spec)
    script = "[ -c /dev/nvidia9 ] && echo char; head -c 4 /dev/nvidia9 | od -An -tx1"
    for run in ("planned", "from the record cache"):
        r = _launch(shim, conf, image, user_dir / "c", script)
        assert r.returncode == 0, (run, r.stderr)
        assert r.stdout.split() == ["char", "00", "00", "00", "00"], (run, r.stdout, r.stderr)


@pytest.mark.parametrize("setting", ["warn", None])
def test_an_unknown_hook_is_skipped_with_one_warning_or_refused(shim: Runner, world_dir: Path, image: Path,
                                                               user_dir: Path, setting: str | None) -> None:
    base = world_dir / f"cdi-unknown-hook-{setting or 'default'}"
    marker = base / "hook-ran"
    hook = base / "bin" / "vendor-hook"
    hook.parent.mkdir(parents=True)
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    spec = {"cdiVersion": "0.5.0", "kind": KIND,
            "devices": [{"name": "x", "containerEdits": {"deviceNodes": [{"path": "/dev/null"}]}}],
            "containerEdits": {"hooks": [{"hookName": "createContainer", "path": str(hook),
                                          "args": ["vendor-hook", "setup"]}]}}
    conf = _site(base, spec, setting)
    r = _launch(shim, conf, image, user_dir / "c", "echo app ran")
    if setting == "warn":
        assert r.returncode == 0 and r.stdout == "app ran\n", r.stderr
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("shimrun: warning: CDI-HOOK-SKIPPED:"), r.stderr
        assert f"unknown hook {hook}" in lines[0] and f"{KIND}=x" in lines[0]
        # Warm: the record from the cache says it again, and still runs nothing.
        again = _launch(shim, conf, image, user_dir / "c", "echo app ran")
        assert (again.returncode, again.stdout, again.stderr.splitlines()) == (0, "app ran\n", lines)
    else:
        assert r.returncode == ExitCode.CONFIG and r.stdout == "", r.stderr
        assert len(r.stderr.splitlines()) == 1 and f"unknown hook {hook}" in r.stderr
        assert 'unknown_hooks = "warn"' in r.stderr
    assert not marker.exists(), "a spec's hook binary was run"
