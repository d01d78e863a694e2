"""Site configurations for launch tests: a shim.toml and profiles, world-readable like everything
a launch as the test user reads."""

from __future__ import annotations

import subprocess
from pathlib import Path

NO_BINDS = "[launch]\nbinds = []\n"   # a shim.toml that binds nothing of the host


def write_conf(conf: Path, profiles: dict[str, str], shim_toml: str = NO_BINDS) -> Path:
    """`conf` with `shim_toml` and one profile per name, whose text is given."""
    (conf / "profiles").mkdir(parents=True, exist_ok=True)
    (conf / "shim.toml").write_text(shim_toml)
    for name, text in profiles.items():
        (conf / "profiles" / f"{name}.toml").write_text(text)
    subprocess.run(["chmod", "-R", "a+rX", str(conf)], check=True)
    return conf


def conf_with(conf: Path, profiles: dict[str, str]) -> Path:
    """`conf` with an empty shim.toml and one profile per name that sets environment variables
    (kind "other", applied always), whose [env] is the text given."""
    return write_conf(conf, {name: f'[profile]\nkind = "other"\napplies = "always"\n[provides]\n[env]\n{env}'
                             for name, env in profiles.items()})
