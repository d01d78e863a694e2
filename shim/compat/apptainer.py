"""`apptainer` and `singularity`: shim under Apptainer's names, for workflow engines and Apptainer
habits (one program: it reads its name from argv[0]).

Apptainer's command line is turned into shimrun's (shim/compat/options.py says what each option
becomes), then the native shimrun is exec'd with it: a warm launch runs its cached record, and
this module is the only Python started. Options mean what Apptainer documents (`-e` is
--cleanenv here, --env in shimrun); one shim cannot honour is refused with one line and exit 64."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping

from shim.compat.options import (
    ACCEPT,
    ACTION_OPTIONS,
    INSPECT_FLAGS,
    MAP,
    PULL_OPTIONS,
    REFUSE,
    CompatOption,
)
from shim.errors import escaped
from shim.options import GLOBAL_OPTIONS, TRUE_WORDS

# The Apptainer release whose command line shim follows: engines gate features on it (cwltool:
# `run` and --no-eval from 1.1, --mount from "3.9"; Snakemake needs >= 1.0), and 1.3.6 is the
# release whose options shim/compat/options.py lists.
APPTAINER_VERSION = "1.3.6"
USAGE = 64
VERBS = ("exec", "run", "shell", "pull", "build", "inspect", "verify", "sign", "version", "cache", "help")


class CompatError(Exception):
    """One line for the user; exit 64."""

    def __str__(self) -> str:
        return escaped(super().__str__())


def version_text() -> str:
    from shim import __version__

    return f"{APPTAINER_VERSION}+shim.{__version__}"


def _setting(environ: Mapping[str, str], name: str) -> str | None:
    """APPTAINER_name, else SINGULARITY_name (Apptainer's order)."""
    for prefix in ("APPTAINER_", "SINGULARITY_"):
        if prefix + name in environ:
            return environ[prefix + name]
    return None


def _lookup(table: Iterable[CompatOption], name: str) -> CompatOption | None:
    return next((o for o in table if name in o.names), None)


def _split(args: list[str], table: tuple[CompatOption, ...], verb: str) -> tuple[list[tuple[CompatOption, str]],
                                                                                   list[str]]:
    """Options before the first word that is not one (the image, or OUT/SOURCE), and the rest.
    Accepts --opt=value, --opt value, -Xvalue and combined boolean short options (-ce)."""
    found: list[tuple[CompatOption, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return found, args[i + 1:]
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        opt = _lookup(table, name)
        if opt is None and not arg.startswith("--") and len(arg) > 2:
            head = _lookup(table, arg[:2])
            if head is not None and head.value:  # -Bvalue
                opt, value, eq = head, arg[2:], "="
            elif all((o := _lookup(table, "-" + c)) is not None and not o.value for c in arg[1:]):
                found += [(_lookup(table, "-" + c), "") for c in arg[1:]]  # type: ignore[misc]
                i += 1
                continue
        if opt is None:
            raise CompatError(f"unknown option {name} for '{verb}' (apptainer {APPTAINER_VERSION} has no such "
                              "option, or shim does not know it): leave it out")
        if opt.value and not eq:
            if i + 1 >= len(args):
                raise CompatError(f"option {name} needs a value")
            value = args[i + 1]
            i += 1
        elif not opt.value and eq:
            raise CompatError(f"option {name} takes no value (given {arg})")
        found.append((opt, value))
        i += 1
    return found, args[i:]


def _shim_options(found: list[tuple[CompatOption, str]], environ: Mapping[str, str],
                  table: tuple[CompatOption, ...]) -> list[str]:
    """shimrun's options for Apptainer's (refusing the ones shim cannot honour), with the
    APPTAINER_*/SINGULARITY_* settings of options not given."""
    out: list[str] = []
    given = {o.names[-1] for o, _ in found}
    for opt in table:
        if opt.env and opt.names[-1] not in given:
            setting = _setting(environ, opt.env)
            if setting is None:
                continue
            if not opt.value and setting.lower() not in TRUE_WORDS:
                continue
            found.append((opt, setting))
    for opt, value in found:
        if opt.action == REFUSE:
            raise CompatError(f"{opt.names[-1]} is not supported by shim: {opt.why}")
        if opt.action == ACCEPT:
            continue
        names = opt.to if opt.action == MAP else (opt.names[-1],)
        for name in names:
            out += [name, value] if opt.value else [name]
    return out


def _shimrun() -> str:
    from shim.launch.execute import frontend_path

    return frontend_path()


def _exec(argv: list[str], environ: Mapping[str, str]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    exe = _shimrun()
    try:
        os.execve(exe, ["shimrun", *argv], dict(environ))
    except OSError as e:
        print(f"apptainer: error: cannot run {exe}: {e.strerror} (reinstall shim: scripts/install.sh)",
              file=sys.stderr)
        return 71
    return 0  # not reached


def _environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Apptainer's settings that are shim's under another name (under Apptainer's name, they win:
    a user who set APPTAINER_CACHEDIR for this command meant it over a site-wide SHIMRUN_CACHE)."""
    env = dict(environ)
    cache = _setting(environ, "CACHEDIR")
    if cache:
        env["SHIMRUN_CACHE"] = cache
    # APPTAINER_TMPDIR has nothing to move: shim's pull and build write beside OUT.sif only.
    return env


def _action(verb: str, args: list[str], globals_: list[str], environ: Mapping[str, str]) -> list[str]:
    found, rest = _split(args, ACTION_OPTIONS, verb)
    if verb != "shell" and any(o.names[-1] == "--shell" for o, _ in found):
        raise CompatError(f"--shell is an option of 'shell' only, not of '{verb}'")
    if not rest:
        raise CompatError(f"'{verb}' needs an image" + (" and a command" if verb == "exec" else ""))
    if verb == "exec" and len(rest) < 2:
        raise CompatError("'exec' needs a command after the image")
    image = rest[0]
    if "://" in image or image.startswith(("docker-archive:", "oci-archive:", "oci:")):
        raise CompatError(f"{image}: shim runs local images: pull it first (apptainer pull IMAGE.sif {image})")
    options = _shim_options(found, environ, ACTION_OPTIONS)
    binds = _setting(environ, "BIND") or _setting(environ, "BINDPATH")
    if binds:
        options += ["--bind", binds]
    return [verb, *dict.fromkeys(globals_), *options, *rest]


def _pull(verb: str, args: list[str], globals_: list[str], environ: Mapping[str, str]) -> list[str]:
    found, rest = _split(args, PULL_OPTIONS, verb)
    options = _shim_options(found, environ, PULL_OPTIONS)
    nohttps = _setting(environ, "NO_HTTPS") or _setting(environ, "NOHTTPS")
    if nohttps and nohttps.lower() in TRUE_WORDS and "--no-https" not in options:
        options.append("--no-https")
    if "--dir" in options:  # shimrun has no --dir: the file name gets it
        where = options.pop(options.index("--dir") + 1)
        options.remove("--dir")
        if "--name" in options:
            at = options.index("--name") + 1
            options[at] = os.path.join(where, options[at])
        elif len(rest) == 2:
            rest[0] = os.path.join(where, rest[0])
        else:
            raise CompatError("--dir without --name or an output file: give --name NAME.sif too")
    if verb == "build":
        if len(rest) != 2:
            raise CompatError("'build' needs OUT.sif and SOURCE")
        source = rest[1]
        if source.endswith(".def") or _is_definition(source):
            raise CompatError(f"{source}: definition files are not supported by shim: build from a root "
                              "filesystem, a tarball or an OCI image (docker://, docker-archive:, oci-archive:, oci:)")
        options = [o for o in options if o not in ("--name",)]
    output = [g for g in dict.fromkeys(globals_) if g in ("--debug", "--quiet")]  # pull and build take these
    return [verb, *output, *options, *rest]


def _is_definition(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"bootstrap:" in head.lower()


def _inspect(args: list[str], globals_: list[str]) -> list[str]:
    wanted, rest = [], []
    for arg in args:
        if arg in INSPECT_FLAGS:
            wanted.append(arg)
        elif arg.startswith("-"):
            raise CompatError(f"unknown option {arg} for 'inspect': leave it out")
        else:
            rest.append(arg)
    if len(rest) != 1:
        raise CompatError("'inspect' needs one image")
    return ["inspect", "--format", "apptainer", *wanted, *rest]


def usage(prog: str) -> str:
    return (f"Usage: {prog} [global options] <command> [options] ...\n"
            f"  shim's {prog}-compatible command (Apptainer {APPTAINER_VERSION} options; see shimrun --help)\n"
            f"  commands: {', '.join(VERBS)} ({prog} COMMAND --help shows its options)\n")


_VERB_USAGE = {"exec": "exec [options] IMAGE COMMAND [ARGS...]", "run": "run [options] IMAGE [ARGS...]",
               "shell": "shell [options] IMAGE [ARGS...]", "pull": "pull [options] [OUT.sif] SOURCE",
               "build": "build [options] OUT.sif SOURCE", "inspect": "inspect [options] IMAGE"}


def verb_usage(prog: str, verb: str) -> str:
    """`apptainer VERB --help`: the command line, and each option with what shim does with it."""
    table = ACTION_OPTIONS if verb in ("exec", "run", "shell") else PULL_OPTIONS if verb in ("pull", "build") else ()
    lines = [f"Usage: {prog} {_VERB_USAGE[verb]}"]
    if verb == "inspect":
        lines.append("  options: " + ", ".join(INSPECT_FLAGS))
    for opt in table:
        spelled = ", ".join(opt.names) + (" VALUE" if opt.value else "")
        why = {ACCEPT: f"accepted: {opt.why}", REFUSE: f"refused: {opt.why}"}.get(opt.action, "")
        lines.append(f"  {spelled}" + (f"  ({why})" if why else ""))
    return "\n".join(lines) + "\n"


def _wants_help(words: list[str]) -> bool:
    """-h/--help among the options before the first other word (after it, it is the app's)."""
    for word in words:
        if word in ("-h", "--help"):
            return True
        if not word.startswith("-"):
            return False
    return False


def main(argv: list[str], prog: str, environ: Mapping[str, str]) -> int:
    globals_: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        if arg in ("--version",):
            print(f"apptainer version {version_text()}")
            return 0
        if arg in ("-h", "--help"):
            sys.stdout.write(usage(prog))
            return 0
        if arg in GLOBAL_OPTIONS:
            if GLOBAL_OPTIONS[arg]:
                globals_.append(f"--{GLOBAL_OPTIONS[arg]}")
        elif arg in ("-c", "--config") or arg.startswith("--config="):
            raise CompatError(f"{arg}: shim reads no apptainer.conf: a site configures shim in /etc/shim/shim.toml")
        else:
            raise CompatError(f"unknown global option {arg}: leave it out")
        i += 1
    if i >= len(argv):
        raise CompatError("no command given")
    verb, rest = argv[i], argv[i + 1:]
    try:
        return _verb(prog, verb, rest, globals_, environ)
    except CompatError as e:
        if verb not in _VERB_USAGE:
            raise
        raise CompatError(f"{e} ({prog} {verb} --help shows the usage)") from None


def _verb(prog: str, verb: str, rest: list[str], globals_: list[str], environ: Mapping[str, str]) -> int:
    env = _environment(environ)
    if verb in _VERB_USAGE and _wants_help(rest):
        sys.stdout.write(verb_usage(prog, verb))
        return 0
    if verb == "version":
        print(version_text())
        return 0
    if verb == "help":
        sys.stdout.write(usage(prog))
        return 0
    if verb in ("exec", "run", "shell"):
        return _exec(_action(verb, rest, globals_, environ), env)
    if verb in ("pull", "build"):
        return _exec(_pull(verb, rest, globals_, environ), env)
    if verb == "inspect":
        return _exec(_inspect(rest, globals_), env)
    if verb in ("verify", "sign"):  # shimrun's take Apptainer's options (--key, -g, -i, -a, -j, -k)
        return _exec([verb, *rest], env)
    if verb == "cache":
        words = [w for w in rest if w not in ("-f", "--force")]
        return _exec(["cache", *words], env)
    raise CompatError(f"unknown command '{verb}' (shim's {prog} has: {', '.join(VERBS)})")


def entry() -> None:
    prog = "singularity" if os.path.basename(sys.argv[0]).startswith("singularity") else "apptainer"
    try:
        code = main(sys.argv[1:], prog, os.environ)
    except CompatError as e:
        text = str(e)
        print(f"{prog}: error: {text}" + ("" if text.endswith("shows the usage)") else
                                          f" ({prog} --help shows the usage)"), file=sys.stderr)
        code = USAGE
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
