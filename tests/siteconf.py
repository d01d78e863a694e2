"""Site configurations for launch tests: a shim.toml and profiles that set environment variables
(kind "other", applied always), world-readable like everything a launch as the test user reads."""

from __future__ import annotations

import subprocess
from pathlib import Path


def conf_with(conf: Path, profiles: dict[str, str]) -> Path:
    """`conf` with an empty shim.toml and one profile per name, whose [env] is the text given."""
    (conf / "profiles").mkdir(parents=True)
    (conf / "shim.toml").write_text("[launch]\nbinds = []\n")
    for name, env in profiles.items():
        (conf / "profiles" / f"{name}.toml").write_text(f'[profile]\nkind = "other"\napplies = "always"\n'
                                                        f"[provides]\n[env]\n{env}")
    subprocess.run(["chmod", "-R", "a+rX", str(conf)], check=True)
    return conf
