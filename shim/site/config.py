"""Site configuration: where it is found and what it says.

Lookup order: --conf DIR, then $SHIMRUN_CONF, then the system directory (set at install,
/etc/shim by default), then the bundled conf/. Whichever directory is used for profiles, binds and
the diagnostics' policy, the system directory's [images] and [provenance] always hold: a directory
the user names may add image rules (a tighter policy, both must allow) and provenance
directories, never drop or loosen the site's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from shim.errors import ExitCode, ShimError
from shim.knowledge.codes import ACTIONS, closest, is_known
from shim.site.schema import (
    NOT_A_TABLE,
    OUTSIDE_TABLE,
    UNKNOWN_KEY,
    UNKNOWN_TABLE,
    Field,
    Finding,
    Schema,
    UnreadableToml,
    findings,
    read_toml,
)
from shim.site.serve_config import ServeSettings, serve_settings

CONFIG_NAME = "shim.toml"


def _system_conf_dir() -> str:
    """The site's directory, fixed when shim was installed (SHIM_SYSCONFDIR, setup.py writes
    shim/_install.py); no setting read at run time can move it."""
    try:
        from shim._install import SYSTEM_CONF_DIR as installed
    except ImportError:  # a source tree
        return "/etc/shim"
    return installed


SYSTEM_CONF_DIR = _system_conf_dir()
_PKG = Path(__file__).resolve().parent.parent
# Installed: the repo's conf/ ships as package data shim/conf; in a source tree it is ../conf.
BUNDLED_CONF_DIR = next((d for d in (_PKG / "conf", _PKG.parent / "conf") if (d / "shim.toml").is_file()),
                        _PKG / "conf")

# shim.toml's schema (conf/shim.toml explains each key).
_STRINGS, _BOOL = Field("strings"), Field("boolean")
SCHEMA: Schema = {
    "launch": {"binds": _STRINGS}, "policy": {"refusal": Field("string"), "codes": Field("string-table")},
    "images": {"paths": _STRINGS, "signers": _STRINGS, "allow_unsigned": _BOOL, "allow_directories": _BOOL,
               "allow_foreign_arch": _BOOL, "allow_legacy_signatures": _BOOL, "allow_writable": _BOOL},
    "provenance": {"dir": Field("string")}, "audit": {"report": _BOOL},
    "pull": {"max_entries": Field("integer")},
    "cdi": {"dirs": _STRINGS, "unknown_hooks": Field("string", 'unknown_hooks = "error"')},
    "serve": {"mode": Field("string", 'mode = "auto"'), "local_dir": Field("string", 'local_dir = "/local"'),
              "unpack_cap": Field("size", 'unpack_cap = "20G"'), "kept_idle": Field("integer", "kept_idle = 600"),
              "stage": Field("string", 'stage = "auto"')},
}
REFUSAL_ACTIONS = ("warn", "error")
UNKNOWN_HOOK_ACTIONS = ("error", "warn")   # [cdi] unknown_hooks: refuse the launch, or skip the hook


class ConfigError(ShimError):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(ExitCode.CONFIG, message, hint)


@dataclass(frozen=True)
class ImagePolicy:
    """[images]: which images may run on this site (shim/site/image_policy.py evaluates it)."""
    paths: tuple[str, ...] = ()          # absolute prefixes an image must lie under; () anywhere
    signers: tuple[str, ...] = ()        # a valid signature by one of these keys is required; () any trusted key
    allow_unsigned: bool = True          # False: a SIF must carry a valid signature from a key in <conf>/keys/
    allow_directories: bool = True       # directory (sandbox) images and bare squashfs files
    allow_foreign_arch: bool = True      # images of another architecture, run under an emulator
    allow_legacy_signatures: bool = False  # signatures of Singularity < 3.6 (they cover object data only)
    # under a signature rule, an image file someone besides the user (or root) can write: its
    # signature says nothing of bytes that may change after the check
    allow_writable: bool = False

    @property
    def active(self) -> bool:
        return self.restricts

    @property
    def restricts(self) -> bool:
        """Does it refuse anything? (allow_writable alone refuses nothing)."""
        return (bool(self.paths) or self.needs_signature or not self.allow_directories or not self.allow_foreign_arch)

    @property
    def needs_signature(self) -> bool:
        return not self.allow_unsigned or bool(self.signers)


@dataclass(frozen=True)
class PolicyLayer:
    """One shim.toml's [images], checked with the keys of its own directory (<conf>/keys/)."""
    conf_dir: Path
    path: str
    images: ImagePolicy


@dataclass(frozen=True)
class SiteConfig:
    path: str
    binds: tuple[str, ...] = field(default_factory=tuple)
    refusal: str = "warn"                    # a refused injection: warn (the image's own is used) or error
    codes: tuple[tuple[str, str], ...] = ()  # diagnostic code -> ignore | info | warn | error
    images: ImagePolicy = field(default_factory=ImagePolicy)
    provenance_dir: str = ""                 # [provenance] dir: one record per run there; "" none
    pull_max_entries: int = 0                # [pull] max_entries: entries of one pulled image; 0 shim's default
    # Every [images] that applies (the system directory's first): an image runs only if each allows it.
    policies: tuple[PolicyLayer, ...] = ()
    # Every [provenance] dir that applies (the system directory's first).
    provenance_dirs: tuple[str, ...] = ()
    serve: ServeSettings = ServeSettings()   # [serve]: how an image's files are served (serve_config.py)
    audit_report: bool = False               # [audit] report: every launch audits what it loads (--report-loaded)
    cdi_dirs: tuple[str, ...] = ()           # [cdi] dirs: CDI spec directories after /etc/cdi, /var/run/cdi
    cdi_unknown_hooks: str = "error"         # [cdi] unknown_hooks: a spec's hook shim cannot do natively

    def policy(self) -> dict[str, str]:
        return dict(self.codes)

    @property
    def images_restricted(self) -> bool:
        return any(layer.images.restricts for layer in self.policies)


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
    """The configuration in force: the chosen directory's (find_conf_dir), with the system
    directory's image policy and provenance directory always added (see the module's docstring)."""
    chosen = find_conf_dir(option)
    site = _read_config(chosen / CONFIG_NAME)
    layers = [PolicyLayer(chosen, site.path, site.images)]
    dirs = [site.provenance_dir] if site.provenance_dir else []
    system = Path(SYSTEM_CONF_DIR)
    if chosen != system and chosen != BUNDLED_CONF_DIR and _is_config(SYSTEM_CONF_DIR, given=False):
        base = _read_config(system / CONFIG_NAME)
        layers.insert(0, PolicyLayer(system, base.path, base.images))
        dirs[:0] = [base.provenance_dir] if base.provenance_dir and base.provenance_dir not in dirs else []
    return replace(site, policies=tuple(layers), provenance_dirs=tuple(dirs))


def _read_config(path: Path) -> SiteConfig:
    data = _read_toml(path)
    if found := findings(data, SCHEMA):
        raise ConfigError(*_worded(path, found[0]))   # shim.toml stops at its first problem
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
    max_entries = data.get("pull", {}).get("max_entries", 0)
    if isinstance(max_entries, bool) or max_entries < 0:
        raise ConfigError(f"{path}: pull.max_entries = {max_entries!r} is not a count of entries",
                          "e.g. max_entries = 2000000")
    return SiteConfig(str(path), tuple(binds), refusal, tuple(sorted(codes.items())), _image_policy(path, data),
                      _provenance_dir(path, data), max_entries, serve=serve_settings(path, data),
                      audit_report=bool(data.get("audit", {}).get("report", False)), **_cdi(path, data))


def _read_toml(path: Path) -> dict:
    try:
        return read_toml(path)
    except UnreadableToml as e:
        message, hint = {
            "read": (f"cannot read {path}: {e.detail}", "check its permissions"),
            "utf8": (f"{path} is not UTF-8 text", "save it as UTF-8"),
            "nesting": (f"{path}: arrays or tables nested too deeply", "fix the TOML: shim.toml needs two levels"),
            "syntax": (f"{path}: {e.detail}", "fix the TOML syntax"),
        }[e.reason]
        raise ConfigError(message, hint) from None


def _worded(path: Path, found: Finding) -> tuple[str, str]:
    """(message, hint) for what the schema found in shim.toml."""
    table = found.table
    if found.what in (UNKNOWN_TABLE, OUTSIDE_TABLE):
        return f"{path}: unknown table [{table}]", f"known tables: {', '.join(sorted(SCHEMA))}"
    if found.what == NOT_A_TABLE:
        return (f"{path}: {table} must be a table, not a {type(found.value).__name__}",
                f"write it as [{table}] with its keys below (see conf/shim.toml)")
    if found.what == UNKNOWN_KEY:
        known = ", ".join(sorted(SCHEMA[table]))
        return f"{path}: unknown key {table}.{found.key}", f"known keys in [{table}]: {known}"
    return f"{path}: {table}.{found.key} must be a {SCHEMA[table][found.key].python_name}", "see conf/shim.toml"


def _strings(path: Path, table: str, key: str, values: list, example: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{path}: {table}.{key} must be a list of non-empty strings", f"e.g. {key} = {example}")
    return tuple(values)


def _image_policy(path: Path, data: dict) -> ImagePolicy:
    images = data.get("images", {})
    prefixes = _strings(path, "images", "paths", images.get("paths", []), '["/apps/containers/"]')
    for prefix in prefixes:
        if not prefix.startswith("/"):
            raise ConfigError(f"{path}: images.paths: {prefix!r} is not an absolute path",
                              'e.g. paths = ["/apps/containers/"]')
    signers = _strings(path, "images", "signers", images.get("signers", []),
                       '["12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"]')
    flags = {k: v for k, v in images.items() if k.startswith("allow_")}
    return ImagePolicy(paths=tuple(os.path.normpath(p) for p in prefixes),
                       signers=tuple(s.upper() if not s.startswith("SHA256:") else s for s in signers), **flags)


def _provenance_dir(path: Path, data: dict) -> str:
    where = data.get("provenance", {}).get("dir", "")
    if where and not where.startswith("/"):
        raise ConfigError(f"{path}: provenance.dir = {where!r} is not an absolute path",
                          'e.g. dir = "/var/log/shim/provenance" (a directory every user can write to, mode 1777)')
    return os.path.normpath(where) if where else ""


def _cdi(path: Path, data: dict) -> dict:
    cdi = data.get("cdi", {})
    dirs = _strings(path, "cdi", "dirs", cdi.get("dirs", []), '["/opt/site/cdi"]')
    for d in dirs:
        if not d.startswith("/"):
            raise ConfigError(f"{path}: cdi.dirs: {d!r} is not an absolute path", 'e.g. dirs = ["/opt/site/cdi"]')
    hooks = cdi.get("unknown_hooks", "error")
    if hooks not in UNKNOWN_HOOK_ACTIONS:
        raise ConfigError(f"{path}: cdi.unknown_hooks = {hooks!r} is not one of {', '.join(UNKNOWN_HOOK_ACTIONS)}",
                          'e.g. unknown_hooks = "warn" to skip, with a warning, a hook shim cannot do natively')
    return {"cdi_dirs": tuple(os.path.normpath(d) for d in dirs), "cdi_unknown_hooks": hooks}
