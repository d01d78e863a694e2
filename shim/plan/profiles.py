"""The site's profiles as one set: every enabled file read (shim/site/profile_file.py), then the
checks between them (unique names, no two conflicting profiles that both apply automatically:
shim/plan/selection.py). `load_profiles` is what a launch uses; `lint_files` is `shimrun profiles
lint`, which reports every problem, host files missing included.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from shim.plan.selection import conflict_problems
from shim.site.config import ConfigError
from shim.site.profile_file import profile_files, read_profile
from shim.site.profile_model import PROFILES_DIR, Problem, Profile, ProfileSet


def load_profiles(conf_dir: str | os.PathLike[str], host_root: str = "/",
                  environ: Mapping[str, str] | None = None) -> ProfileSet:
    """The enabled profiles; ConfigError on the first problem with their text, duplicate names
    or conflicting automatic profiles. Profiles missing host files load as unavailable."""
    env = os.environ if environ is None else environ
    profiles: list[Profile] = []
    problems: list[Problem] = []
    for path in profile_files(conf_dir):
        profile, found = read_profile(str(path), host_root, env)
        problems += [p for p in found if not p.host]
        if profile is not None:
            profiles.append(profile)
    problems += _check_names(profiles)
    # Conflicts only among profiles usable here: one shared file can serve several node types.
    problems += conflict_problems([p for p in profiles if p.available])
    if problems:
        first = problems[0]
        more = len(problems) - 1
        lint = f"; {more} more: run shimrun profiles lint {Path(conf_dir) / PROFILES_DIR}/*.toml" if more else ""
        raise ConfigError(f"{first.file}: {first.key}: {first.message}", first.fix + lint)
    return ProfileSet(str(Path(conf_dir) / PROFILES_DIR), tuple(profiles))


def lint_files(paths: Iterable[str | os.PathLike[str]], host_root: str = "/",
               environ: Mapping[str, str] | None = None) -> list[Problem]:
    """Every problem in these files, host files missing under host_root included, and between
    them (duplicate names, conflicts), as if they were a site's whole profiles/ directory."""
    env = os.environ if environ is None else environ
    profiles: list[Profile] = []
    problems: list[Problem] = []
    for path in paths:
        profile, found = read_profile(str(path), host_root, env)
        problems += found
        if profile is not None:
            profiles.append(profile)
    return problems + _check_names(profiles) + conflict_problems(profiles)


def _check_names(profiles: list[Profile]) -> list[Problem]:
    seen: dict[str, Profile] = {}
    out = []
    for p in profiles:
        if p.name in seen:
            out.append(Problem(p.file, "profile.name", f"name '{p.name}' is also used by {seen[p.name].file}",
                               "give each profile a unique name (the file name is the default)"))
        else:
            seen[p.name] = p
    return out
