"""Site configuration: where it is found and what it says.

Lookup order: --conf DIR, then $SHIMRUN_CONF, then /etc/shim, then the bundled conf/.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from shim.errors import ExitCode, ShimError
from shim.knowledge.codes import ACTIONS, closest, is_known

CONFIG_NAME = "shim.toml"
SYSTEM_CONF_DIR = "/etc/shim"
_PKG = Path(__file__).resolve().parent.parent
# Installed: the repo's conf/ ships as package data shim/conf; in a source tree it is ../conf.
BUNDLED_CONF_DIR = next((d for d in (_PKG / "conf", _PKG.parent / "conf") if (d / "shim.toml").is_file()),
                        _PKG / "conf")

_KNOWN = {"launch": {"binds": list}, "policy": {"refusal": str, "codes": dict}}
REFUSAL_ACTIONS = ("warn", "error")


class ConfigError(ShimError):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(ExitCode.CONFIG, message, hint)


@dataclass(frozen=True)
class SiteConfig:
    path: str
    binds: tuple[str, ...] = field(default_factory=tuple)
    refusal: str = "warn"                    # a refused injection: warn (the image's own is used) or error
    codes: tuple[tuple[str, str], ...] = ()  # diagnostic code -> ignore | info | warn | error

    def policy(self) -> dict[str, str]:
        return dict(self.codes)


def _is_config(directory: str, given: bool) -> bool:
    """Does `directory` hold shim.toml? One the user named (--conf, SHIMRUN_CONF) that cannot be
    entered is an error; the default place then only does not count."""
    if given and os.path.isdir(directory) and not os.access(directory, os.X_OK):
        raise ConfigError(f"cannot enter configuration directory {directory}: Permission denied",
                          "ask its owner to make it readable (chmod a+rx), or point --conf/SHIMRUN_CONF elsewhere")
    return os.path.isfile(os.path.join(directory, CONFIG_NAME))


def find_conf_dir(option: str | None = None) -> Path:
    for candidate in (option, os.environ.get("SHIMRUN_CONF")):
        if candidate:
            if not _is_config(candidate, given=True):
                raise ConfigError(f"no {CONFIG_NAME} in configuration directory {candidate}",
                                  "point --conf/SHIMRUN_CONF at a directory holding shim.toml")
            return Path(candidate)
    if _is_config(SYSTEM_CONF_DIR, given=False):
        return Path(SYSTEM_CONF_DIR)
    return BUNDLED_CONF_DIR


def load_site_config(option: str | None = None) -> SiteConfig:
    import tomllib

    path = find_conf_dir(option) / CONFIG_NAME
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}", "check its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text", "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}", "fix the TOML syntax") from None
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nested too deeply", "fix the TOML: shim.toml needs "
                          "two levels") from None
    for table, value in data.items():
        if table not in _KNOWN:
            raise ConfigError(f"{path}: unknown table [{table}]", f"known tables: {', '.join(sorted(_KNOWN))}")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {table} must be a table, not a {type(value).__name__}",
                              f"write it as [{table}] with its keys below (see conf/shim.toml)")
        for key, item in value.items():
            want = _KNOWN[table].get(key)
            if want is None:
                raise ConfigError(f"{path}: unknown key {table}.{key}",
                                  f"known keys in [{table}]: {', '.join(sorted(_KNOWN[table]))}")
            if not isinstance(item, want):
                raise ConfigError(f"{path}: {table}.{key} must be a {want.__name__}", "see conf/shim.toml")
    binds = data.get("launch", {}).get("binds", [])
    if not all(isinstance(b, str) for b in binds):
        raise ConfigError(f"{path}: launch.binds must be a list of strings", 'e.g. binds = ["/scratch"]')
    policy = data.get("policy", {})
    refusal = policy.get("refusal", "warn")
    if refusal not in REFUSAL_ACTIONS:
        raise ConfigError(f"{path}: policy.refusal = {refusal!r} is not one of {', '.join(REFUSAL_ACTIONS)}",
                          'e.g. refusal = "error" to never start an app whose injection was refused')
    codes = policy.get("codes", {})
    for code, action in codes.items():
        if not is_known(code):
            close = closest(code)
            raise ConfigError(f"{path}: policy.codes: {code!r} is not a diagnostic code shim emits",
                              f"did you mean {close}?" if close else
                              "the codes are listed in the README (\"Hardware diagnostics\", \"Injection\")")
        if action not in ACTIONS:
            raise ConfigError(f"{path}: policy.codes.{code} = {action!r} is not one of {', '.join(ACTIONS)}",
                              f'e.g. {code} = "error"')
    return SiteConfig(str(path), tuple(binds), refusal, tuple(sorted(codes.items())))
