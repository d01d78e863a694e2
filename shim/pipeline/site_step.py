"""Step 2 of planning: the site's configuration and injection profiles, and which profiles this
launch asks for (--profile, and --nv's GPU driver profiles)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from shim.pipeline.inputs import profile_inputs
from shim.record.format import CHECK, IDENTITY
from shim.record.model import Input
from shim.record.snapshot import file_input
from shim.site.config import CONFIG_NAME, SYSTEM_CONF_DIR, ConfigError, SiteConfig, find_conf_dir, load_site_config

if TYPE_CHECKING:
    from shim.site.profile_model import ProfileSet


class SiteRequest(NamedTuple):
    conf: str | None                # --conf (None: SHIMRUN_CONF, else the system directory)
    requested: tuple[str, ...]      # --profile NAME...
    nv: bool                        # --nv: every GPU driver profile, as if requested
    host_root: str
    env: Mapping[str, str]          # the job's environment (a recording view: what profiles read is an input)
    devices: tuple[str, ...] = ()   # --device VENDOR/CLASS=NAME... (CDI)


class SiteStep(NamedTuple):
    site: SiteConfig
    conf_dir: Path
    profiles: ProfileSet | None     # None: the site has no profile files
    requested: tuple[str, ...]      # the profiles this launch asks for, --nv's included
    inputs: tuple[Input, ...]


def _load_profiles(conf_dir: Path, host_root: str, environ: Mapping[str, str]) -> ProfileSet | None:
    try:
        if not any(n.endswith(".toml") and not n.startswith(".") for n in os.listdir(conf_dir / "profiles")):
            return None
    except OSError:
        return None
    # Imported only when a site has profile files: the profile machinery (TOML schema, host probing)
    # costs a launch without profiles about 10 ms of imports.
    from shim.plan.profiles import load_profiles

    return load_profiles(conf_dir, host_root=host_root, environ=environ)


def _requested(given: tuple[str, ...], nv: bool, profiles: ProfileSet | None, conf_dir: Path) -> tuple[str, ...]:
    if nv:  # as `apptainer --nv`: the GPU driver profiles, by request
        gpu = [p.name for p in (profiles.profiles if profiles else ()) if p.kind == "gpu"]
        if not gpu:
            raise ConfigError(f"--nv: no GPU driver profile is configured in {conf_dir / 'profiles'}",
                              "a site enables it by copying conf/profiles/examples/cuda-driver.toml there")
        given = (*given, *(n for n in gpu if n not in given))
    if profiles is None and given:
        raise ConfigError(f"unknown profile '{given[0]}' requested",
                          f"no profiles are configured in {conf_dir / 'profiles'}")
    return given


def read_site(req: SiteRequest) -> SiteStep:
    site = load_site_config(req.conf)
    conf_dir = find_conf_dir(req.conf)
    inputs = [file_input(os.path.join(SYSTEM_CONF_DIR, CONFIG_NAME), IDENTITY | CHECK["FOLLOW"]),
              file_input(str(conf_dir / CONFIG_NAME), IDENTITY | CHECK["FOLLOW"])]
    inputs += [file_input(os.path.join(SYSTEM_CONF_DIR, sub), CHECK["EXISTS"] | CHECK["TYPE"]) for sub in ("", "keys")]
    profiles = _load_profiles(conf_dir, req.host_root, req.env)
    inputs += profile_inputs(str(conf_dir), profiles, req.host_root)
    nv, cdi = req.nv, ()
    if req.devices or req.nv:
        # Only when a device is asked for: the CDI machinery (YAML, the spec checks) costs imports.
        from shim.pipeline.cdi_step import cdi_devices, with_cdi

        step = cdi_devices(req.devices, req.nv, site, req.host_root, req.env)
        inputs += step.inputs
        nv, cdi = req.nv and not step.nv_done, step.profiles
    requested = _requested(req.requested, nv, profiles, conf_dir)
    if cdi:
        profiles = with_cdi(profiles, cdi, conf_dir)
        requested = (*requested, *(p.name for p in cdi))
    return SiteStep(site, conf_dir, profiles, requested, tuple(inputs))
