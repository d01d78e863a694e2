"""The app's environment, computed the way `apptainer exec` builds it.

Precedence, highest first:

  1. overrides: --env K=V (the last one given wins), then SHIMRUNENV_K=V, APPTAINERENV_K=V
     and SINGULARITYENV_K=V from the host environment, in that order. PATH replaces the PATH;
     PREPEND_PATH and APPEND_PATH are added in front of / behind the final PATH. HOME cannot be
     overridden (shimrun sets it to the home directory in the container).
  2. the site's injection profiles' [env] edits (set, prepend, append, unset), applied in
     profile order to the value the app would otherwise see (after 3-5): a prepend goes in front
     of the image's value, an unset removes the image's and the host's variable alike;
  3. the image's environment scripts (/.singularity.d/env/*.sh: %environment, Docker ENV);
  4. host variables passed through (below);
  5. defaults: PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin,
     SHIMRUN_CONTAINER (image path), SHIMRUN_NAME (image file name), and the same as
     APPTAINER_CONTAINER/_NAME and SINGULARITY_CONTAINER/_NAME, which scripts test to know they
     run in a container, as under Apptainer.
  HOME is always the home directory in the container.

Host variables pass through, except:
  * SHIMRUN_*, SHIMRUNENV_*, APPTAINER_*, APPTAINERENV_*, SINGULARITY_*, SINGULARITYENV_*
    (the runtime's own settings, and overrides, which act through rule 1);
  * HOME and PATH (set by shimrun), PS1 and PROMPT_COMMAND (the host's prompt);
  * LD_LIBRARY_PATH, LD_PRELOAD and LD_AUDIT: they make the container's dynamic loader load
    host libraries, built against the host's C library, into container programs;
  * IFS: it would change how the image's scripts split words.
With --cleanenv only TERM and the proxy variables (http_proxy, https_proxy, ftp_proxy,
all_proxy, no_proxy, each also in upper case) pass, and LANG=C is set (it can be overridden).
Slurm and PMI variables (SLURM_*, PMI_*, PMIX_*) always pass, even with --cleanenv: MPI in the
container finds its rank and the process manager through them.

How it runs: the planner turns these rules into a launch record's environment rules (which host
variables pass, then ordered set/prepend/append/unset operations); the C executor applies them to
each launch's own host environment (csrc/envcompose.c), so a launch from a cached record, a
freshly planned one and a rank joining a shared container get the same environment. `compose`
below asks the same C code. When the image has no /.singularity.d/env, the app is exec'd with `direct`; so it is when the only
script there is the one that holds an OCI image's Env (`image_env_script`), which `direct` applies
as data (a shell is slow to hold 100,000 variables, and an image may have none).
Otherwise the image's /bin/sh runs `action_script` with `base` as its environment; the script
sets the host variables aside, sources the image's scripts in lexical order, restores the host
value of each variable the scripts left unset, then applies the profiles' edits, the overrides
and HOME.

Differences from Apptainer: override values are taken literally (Apptainer evaluates them in
double quotes unless --no-eval), and so are --env-file values (shim.container.contain.read_env_file:
one pair of surrounding quotes removed, nothing evaluated); the image's 99-runtimevars.sh is
skipped (Apptainer replaces it too; the PATH edits it would apply are done by the script); PS1 and
the /.singularity.d/libs additions to LD_LIBRARY_PATH are not reproduced; with dash as /bin/sh,
host variables whose names are not shell identifiers are dropped.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from shim.elf.rootpath import DEFAULT_PATH
from shim.errors import EXEC_NOT_EXECUTABLE, EXEC_NOT_FOUND, UsageError
from shim.model import EnvEdit
from shim.record.format import ENV_OP, ENV_PASS, ENV_TARGET
from shim.record.model import EnvOp, EnvRules
from shim.record.runtime_env import BLOCKED_PREFIXES, OVERRIDE_PREFIXES, RUNTIMES

HOSTVARS = "SHIMRUN_HOSTVARS"  # private: names of the host variables, for the action script

_BLOCKED = frozenset({"HOME", "PATH", "PS1", "PROMPT_COMMAND", "LD_LIBRARY_PATH", "LD_PRELOAD", "LD_AUDIT", "IFS"})
_ALWAYS_PREFIXES = ("SLURM_", "PMI_", "PMIX_")
_CLEANENV_KEEP = frozenset({"TERM", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY",
                            "all_proxy", "ALL_PROXY", "ftp_proxy", "FTP_PROXY"})
# Read-only in bash (an `unset` of them fails): left in place rather than set aside by the script.
_SHELL_OWNED = frozenset({"PPID", "UID", "EUID", "SHELLOPTS", "BASHOPTS", "BASH_VERSINFO"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PATH_EDITS = frozenset({"PATH", "PREPEND_PATH", "APPEND_PATH"})


@dataclass(frozen=True)
class EnvOptions:
    cleanenv: bool = False
    env_pairs: tuple[str, ...] = ()  # from repeated --env K=V (later wins)
    home: str = ""  # HOME inside the container
    image_path: str = ""  # for SHIMRUN_CONTAINER / SHIMRUN_NAME
    extra: Mapping[str, str] = field(default_factory=dict)  # variables the runtime itself adds
    edits: tuple[EnvEdit, ...] = ()  # the profiles' [env], in profile order
    pwd: str = ""  # PWD as the app sees it (passes like a host variable)
    image_env: tuple[tuple[str, str], ...] = ()  # an OCI image's Env, as data (no shell needed)
    image_env_script: str = ""  # the env script that holds only image_env (10-docker2singularity.sh)


@dataclass(frozen=True)
class LaunchEnv:
    direct: dict[str, str]  # final env when the image has no env dir: the app is exec'd directly
    base: dict[str, str]  # env for /bin/sh when the image has an env dir
    action_script: str  # run as: /bin/sh -c SCRIPT shimrun CMD ARGS...


def _sq(value: str) -> str:
    """Single-quoted for sh: taken literally, whatever it holds."""
    return "'" + value.replace("'", "'\\''") + "'"


def _check_override(name: str, source: str) -> None:
    if name == "HOME":
        raise UsageError(f"{source}: HOME cannot be overridden, shimrun sets it to the home directory "
                         "in the container")


def _overrides(host_env: Mapping[str, str], pairs: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for prefix in OVERRIDE_PREFIXES:
        for key, value in host_env.items():
            name = key[len(prefix):]
            # A stray malformed variable in a batch job's environment must not stop the job;
            # sh could not export such a name anyway.
            if key.startswith(prefix) and _NAME.match(name):
                _check_override(name, key)
                found[name] = value
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not _NAME.match(name):
            raise UsageError(f"invalid --env {pair!r}: expected NAME=VALUE, NAME made of letters, digits and _",
                             "e.g. --env OMP_NUM_THREADS=4")
        _check_override(name, "--env")
        found[name] = value
    return found


def _passes(name: str, cleanenv: bool) -> bool:
    if name.startswith(_ALWAYS_PREFIXES):
        return True
    if name in _BLOCKED or name.startswith(BLOCKED_PREFIXES):
        return False
    return not cleanenv or name in _CLEANENV_KEEP


# {env_dir}, {default_path} and {tail} are filled in. Notes:
# - PATH starts unset (the shell would invent one) so that the image's scripts see what they
#   see under Apptainer; 90-environment.sh gets the default PATH if nothing set one before it.
# - Host values are saved in unexported _shimrun_h_NAME variables; names are shell identifiers
#   (checked in Python), so the eval'd text is only `_shimrun_h_X=$X`: values are never parsed.
# - The scripts are sourced inside a function so that a `set --` in them cannot touch "$@".
_SCRIPT = """\
unset PATH
_shimrun_hv=$SHIMRUN_HOSTVARS
unset SHIMRUN_HOSTVARS
for _shimrun_n in $_shimrun_hv; do eval "_shimrun_h_$_shimrun_n=\\$$_shimrun_n; unset $_shimrun_n"; done
_shimrun_source() {{ . "$_shimrun_f"; }}
for _shimrun_f in {env_dir}/*.sh; do
case ${{_shimrun_f##*/}} in
90-environment.sh) [ -n "${{PATH+x}}" ] || export PATH={default_path};;
99-runtimevars.sh) continue;;
esac
[ -f "$_shimrun_f" ] && _shimrun_source
case ${{_shimrun_f##*/}} in
10-docker2singularity.sh|10-docker.sh)
for _shimrun_d in {default_dirs}; do
case :$PATH: in *:"$_shimrun_d":*) ;; *) PATH=${{PATH:+$PATH:}}$_shimrun_d;; esac
done
export PATH;;
esac
done
[ -n "${{PATH+x}}" ] || export PATH={default_path}
for _shimrun_n in $_shimrun_hv; do eval "[ -n \\"\\${{$_shimrun_n+x}}\\" ] || $_shimrun_n=\\$_shimrun_h_$_shimrun_n; export $_shimrun_n"; done
{tail}case $1 in
*/*) [ -e "$1" ] || {{ printf {not_found} "$1" "$PATH" >&2; exit 127; }}
[ -f "$1" ] && [ -x "$1" ] || {{ printf {not_executable} "$1" {eacces} >&2; exit 126; }};;
*) command -v -- "$1" >/dev/null 2>&1 || {{ printf {not_found} "$1" "$PATH" >&2; exit 127; }};;
esac
exec "$@"
"""


def _edit_lines(edits: tuple[EnvEdit, ...]) -> list[str]:
    """The same edits in sh (names are identifiers, checked when the profile was loaded)."""
    out = []
    for e in edits:
        n, v = e.name, _sq(e.value)
        if not _NAME.match(n):
            continue
        out.append({"set": f"export {n}={v}\n", "prepend": f"{n}={v}${{{n}:+:${n}}}; export {n}\n",
                    "append": f"{n}=${{{n}:+${n}:}}{v}; export {n}\n", "unset": f"unset {n}\n"}[e.op])
    return out


def _script(env_dir: str, overrides: Mapping[str, str], home: str, edits: tuple[EnvEdit, ...] = ()) -> str:
    tail = _edit_lines(edits)
    tail += [f"export {k}={_sq(v)}\n" for k, v in overrides.items() if k not in _PATH_EDITS]
    if overrides.get("PATH"):
        tail.append(f"export PATH={_sq(overrides['PATH'])}\n")
    if overrides.get("PREPEND_PATH"):
        tail.append(f"PATH={_sq(overrides['PREPEND_PATH'])}:$PATH\n")
    if overrides.get("APPEND_PATH"):
        tail.append(f"PATH=$PATH:{_sq(overrides['APPEND_PATH'])}\n")
    tail.append(f"export HOME={_sq(home)}\n")
    return _SCRIPT.format(env_dir=_sq(env_dir), default_path=_sq(DEFAULT_PATH),
                          default_dirs=" ".join(DEFAULT_PATH.split(":")), tail="".join(tail),
                          not_found=_sq(f"shimrun: error: {EXEC_NOT_FOUND}\\n"),
                          not_executable=_sq(f"shimrun: error: {EXEC_NOT_EXECUTABLE}\\n"),
                          eacces=_sq(os.strerror(errno.EACCES)))


_SET, _PREPEND, _APPEND, _UNSET = ENV_OP["SET"], ENV_OP["PREPEND"], ENV_OP["APPEND"], ENV_OP["UNSET"]
_EDIT_OPS = {"set": _SET, "prepend": _PREPEND, "append": _APPEND, "unset": _UNSET}
HOST_T, DIRECT_T, BASE_T = ENV_TARGET["HOST"], ENV_TARGET["DIRECT"], ENV_TARGET["BASE"]


def _pass_rules(cleanenv: bool) -> tuple[tuple[int, str], ...]:
    rules = [(ENV_PASS["ALWAYS_PREFIX"], p) for p in _ALWAYS_PREFIXES]
    rules += [(ENV_PASS["BLOCKED"], n) for n in sorted(_BLOCKED)]
    rules += [(ENV_PASS["BLOCKED_PREFIX"], p) for p in BLOCKED_PREFIXES]
    rules += [(ENV_PASS["CLEANENV_KEEP"], n) for n in sorted(_CLEANENV_KEEP)]
    rules += [(ENV_PASS["SHELL_OWNED"], n) for n in sorted(_SHELL_OWNED)]
    if cleanenv:
        rules.append((ENV_PASS["CLEANENV"], ""))
    return tuple(rules)


def env_rules(settings: Mapping[str, str], opts: EnvOptions, env_dir: str = "/.singularity.d/env") -> EnvRules:
    """The rules for both launch paths; raises UsageError for a bad or refused override.
    `settings`: the host variables the overrides come from (SHIMRUNENV_*, APPTAINERENV_*,
    SINGULARITYENV_*: the runtime's own settings, part of a record's key)."""
    overrides = _overrides(settings, opts.env_pairs)
    defaults = {"HOME": opts.home}
    if opts.image_path:
        for runtime in RUNTIMES:
            defaults[f"{runtime}_CONTAINER"] = opts.image_path
            defaults[f"{runtime}_NAME"] = os.path.basename(opts.image_path)
    defaults.update(opts.extra)
    ops: list[EnvOp] = []
    if opts.pwd and _passes("PWD", opts.cleanenv):
        ops.append(EnvOp(HOST_T, _SET, "PWD", opts.pwd))
    if opts.cleanenv:
        # Apptainer sets it in the process env: it ranks with the host variables.
        ops.append(EnvOp(HOST_T, ENV_OP["SET_DEFAULT"], "LANG", "C"))
    # direct: defaults < host < the profiles' edits < overrides; PATH edits; HOME.
    ops.append(EnvOp(DIRECT_T, _SET, "PATH", DEFAULT_PATH))
    ops += [EnvOp(DIRECT_T, _SET, k, v) for k, v in defaults.items()]
    ops.append(EnvOp(DIRECT_T, ENV_OP["HOST"]))
    # An OCI image's Env ranks as its environment scripts do (above the host's variables): the same
    # as when the image's shell sources 10-docker2singularity.sh with the host's variables set aside
    # (and then appends the default directories its PATH lacks).
    ops += [EnvOp(DIRECT_T, _SET, k, with_default_dirs(v) if k == "PATH" else v) for k, v in opts.image_env
            if k != "HOME"]
    ops += [EnvOp(DIRECT_T, _EDIT_OPS[e.op], e.name, e.value) for e in opts.edits]
    ops.append(EnvOp(DIRECT_T, ENV_OP["SET_DEFAULT"], "PATH", DEFAULT_PATH))
    ops += [EnvOp(DIRECT_T, _SET, k, v) for k, v in overrides.items() if k not in _PATH_EDITS]
    # Empty values are ignored, as Apptainer's runtime_vars.sh does.
    if overrides.get("PATH"):
        ops.append(EnvOp(DIRECT_T, _SET, "PATH", overrides["PATH"]))
    if overrides.get("PREPEND_PATH"):
        ops.append(EnvOp(DIRECT_T, _PREPEND, "PATH", overrides["PREPEND_PATH"]))
    if overrides.get("APPEND_PATH"):
        ops.append(EnvOp(DIRECT_T, _APPEND, "PATH", overrides["APPEND_PATH"]))
    ops.append(EnvOp(DIRECT_T, _SET, "HOME", opts.home))
    # base (for /bin/sh and the action script): defaults < host, HOME, the host variables' names.
    ops += [EnvOp(BASE_T, _SET, k, v) for k, v in defaults.items()]
    ops += [EnvOp(BASE_T, ENV_OP["HOST"]), EnvOp(BASE_T, _SET, "HOME", opts.home),
            EnvOp(BASE_T, ENV_OP["HOST_NAMES"], HOSTVARS)]
    return EnvRules(_pass_rules(opts.cleanenv), tuple(ops), _script(env_dir, overrides, opts.home, opts.edits),
                    env_dir, opts.image_env_script)


def with_audit(rules: EnvRules, library: str) -> EnvRules:
    """The rules with `library` in front of LD_AUDIT (the app's own auditors keep working), set
    last, so that no edit or override drops it; through the action script, just before its exec
    (the image's shell and environment scripts are not audited)."""
    tail = 'exec "$@"\n'
    script = rules.action_script
    if script.endswith(tail):
        script = script[:-len(tail)] + f"LD_AUDIT={_sq(library)}${{LD_AUDIT:+:$LD_AUDIT}}; export LD_AUDIT\n" + tail
    return replace(rules, ops=(*rules.ops, EnvOp(DIRECT_T, _PREPEND, "LD_AUDIT", library)), action_script=script)


def with_default_dirs(path: str) -> str:
    """`path` with the default directories it lacks appended, as the action script does after an
    image's Docker Env (the loop after 10-docker2singularity.sh in _SCRIPT)."""
    for d in DEFAULT_PATH.split(":"):
        if f":{d}:" not in f":{path}:":
            path = f"{path}:{d}" if path else d
    return path


def environment(rules: EnvRules, host_env: Mapping[str, str]) -> LaunchEnv:
    """What the rules give for this host environment (computed by the C executor's code)."""
    from shim import native
    from shim.record.encode import env_only

    record = env_only(native.build_id(), rules)
    return LaunchEnv(direct=native.record_env(record, host_env, DIRECT_T),
                     base=native.record_env(record, host_env, BASE_T), action_script=rules.action_script)


def compose(host_env: Mapping[str, str], opts: EnvOptions, env_dir: str = "/.singularity.d/env") -> LaunchEnv:
    """The environment for `host_env` (its overrides included); raises UsageError for a bad or
    refused override."""
    return environment(env_rules(host_env, opts, env_dir), host_env)
