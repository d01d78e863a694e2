"""The one definition of shimrun's launch options, as data: argparse is built from it (shim/cli),
and so is the table the native front-end parses argv with (csrc/gen/options.h, written by
shim/cgen.py when the C code is built). Nothing here imports the rest of shim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

FLAG, VALUE, APPEND = "flag", "value", "append"
# The words that turn a yes/no setting on (SHIMRUN_*, APPTAINER_*, NVIDIA_DISABLE_REQUIRE), compared
# lower-case.
TRUE_WORDS = ("1", "true", "yes", "on")
RUN, IMAGE = "run", "image"   # only for a launch; for a launch and `check`


@dataclass(frozen=True)
class Option:
    names: tuple[str, ...]
    dest: str
    kind: str                 # flag | value | append (repeatable value)
    help: str
    metavar: str = ""
    scope: str = RUN
    launches: bool = True     # False: with it, shimrun does not launch (the native path leaves it to Python)
    alone: bool = False       # with it, a launch gets its own container (never a node's shared one)


OPTIONS: tuple[Option, ...] = (
    Option(("-B", "--bind"), "bind", APPEND, "bind a host path into the container (repeatable; also "
           "SHIMRUN_BIND=a,b:c)", "SRC[:DST[:ro|rw]]"),
    Option(("-e", "--env"), "env", APPEND, "set K=V in the container (repeatable; also SHIMRUNENV_K=V, "
           "APPTAINERENV_K=V, SINGULARITYENV_K=V)", "K=V"),
    Option(("--cleanenv",), "cleanenv", FLAG, "pass no host variables except TERM, proxies, Slurm/PMI"),
    Option(("--fakeroot",), "fakeroot", FLAG, "appear as root (uid 0) inside the container"),
    Option(("--pwd",), "pwd", VALUE, "working directory inside the container, absolute; it must exist there "
           "(default: the current one, else / with a warning)", "DIR"),
    Option(("--no-home",), "no_home", FLAG, "do not bind the home directory"),
    Option(("-H", "--home"), "home", VALUE, "the home directory in the container: bind SRC there (at DST, default "
           "the same path)", "SRC[:DST]"),
    Option(("--mount",), "mount", APPEND, "bind as Apptainer's --mount does (repeatable): SPEC is "
           "type=bind,source=S,target=T[,readonly]", "SPEC"),
    Option(("--env-file",), "env_file", VALUE, "set the K=V lines of FILE in the container (before --env)", "FILE"),
    Option(("-c", "--contain"), "contain", FLAG, "private /tmp and /var/tmp, a minimal /dev, no home unless --home",
           alone=True),
    Option(("-C", "--containall"), "containall", FLAG, "--contain, --ipc, --pid and --cleanenv", alone=True),
    Option(("-i", "--ipc"), "ipc", FLAG, "a new IPC namespace", alone=True),
    Option(("-p", "--pid"), "pid", FLAG, "a new PID namespace: the app's ancestor is a minimal init (PID 1)",
           alone=True),
    Option(("-n", "--net"), "net", FLAG, "a new network namespace with only lo up", alone=True),
    Option(("--network",), "network", VALUE, "with --net: the network; only 'none' (an unprivileged user can "
           "have no other)", "none", alone=True),
    Option(("--no-mount",), "no_mount", APPEND, "do not mount these (comma list): home, tmp, cwd, hostfs, "
           "bind-paths, proc, sys, dev, devpts", "NAMES"),
    Option(("--writable-tmpfs",), "writable_tmpfs", FLAG, "writable image: changes go to a tmpfs, gone at exit",
           alone=True),
    Option(("--nv",), "nv", FLAG, "the NVIDIA driver and its devices: every configured GPU profile (as "
           "--profile cuda-driver)", scope=IMAGE),
    Option(("--device",), "devices", APPEND, "a CDI device of the node's specs (repeatable): NAME is its "
           "name, an index, a UUID or all (`shimrun cdi list`)", "VENDOR/CLASS=NAME", scope=IMAGE),
    Option(("--rocm",), "rocm", FLAG, "the AMD ROCm driver (not yet: refused with the reason)"),
    Option(("-u", "--userns"), "userns", FLAG, "accepted: shim always runs in a user namespace"),
    Option(("--no-eval",), "no_eval", FLAG, "accepted: shim never evaluates the environment through a shell"),
    Option(("--provenance",), "provenance", VALUE, "write a provenance record of the run (JSON: the image's digests, "
           "the injected libraries, decisions, host facts, times, exit status) to FILE, or one per run into a "
           "directory", "FILE|DIR"),
    Option(("--report-loaded",), "report_loaded", FLAG, "audit what the app loads (glibc LD_AUDIT): after it ends, "
           "say which MPI, transports (RDMA or TCP) and GPU driver it used (also on with --provenance, or the "
           "site's [audit] report)"),
    Option(("--dry-run",), "dry_run", FLAG, "print the injection plan and diagnostics, do not run", launches=False),
    Option(("--json",), "json", FLAG, "with --dry-run: the plan as JSON", launches=False),
    Option(("--conf",), "conf", VALUE, "site configuration directory (default: SHIMRUN_CONF, /etc/shim)", "DIR",
           scope=IMAGE),
    Option(("--profile",), "profile", APPEND, "apply injection profile NAME (repeatable)", "NAME", scope=IMAGE),
    Option(("--no-profiles",), "no_profiles", FLAG, "apply no profile unless requested with --profile",
           scope=IMAGE),
    Option(("--strict",), "strict", FLAG, "a refused injection or a warning is fatal", scope=IMAGE),
    Option(("--quiet",), "quiet", FLAG, "print errors only (no warnings, no notices)", scope=IMAGE),
    Option(("--debug",), "debug", FLAG, "show each set-up step (and tracebacks)", scope=IMAGE),
    Option(("--serve",), "serve", VALUE, "how a SIF's files are served: auto (default: unpack when it fits, else "
           "kept), unpack (a node-local copy, made once and reused), kept (a mount kept across launches), mount "
           "(a squashfuse mount per launch); also SHIMRUN_SERVE", "MODE", scope=IMAGE),
)


# Options before a verb (`shimrun -q exec ...`, `apptainer -q exec ...`: Apptainer's global
# options) -> the setting of the verb's own they make (None: accepted, nothing to change; -v keeps
# output as it is, --debug being shim's most verbose).
GLOBAL_OPTIONS: dict[str, str | None] = {"-q": "quiet", "--quiet": "quiet", "-s": "quiet", "--silent": "quiet",
                                         "-d": "debug", "--debug": "debug", "-v": None, "--verbose": None,
                                         "--nocolor": None}
# Options with a value that may come before any verb (`shimrun --conf DIR profiles`): the verb's
# own option of that name gets it (a verb that reads no site configuration ignores it).
GLOBAL_VALUE_OPTIONS: dict[str, str] = {"--conf": "conf"}

# shimrun's verbs (`shimrun VERB ...`), in the order --help lists them. Before one, only the global
# options above; any other first word that is not an option is the IMAGE of `shimrun IMAGE COMMAND`.
VERBS: tuple[str, ...] = ("inspect", "build", "check", "profiles", "cdi", "pull", "cache", "run", "exec", "shell",
                          "version", "verify", "sign")


def launch_options() -> tuple[Option, ...]:
    return OPTIONS


def image_options() -> tuple[Option, ...]:
    """The options `check` takes too."""
    return tuple(o for o in OPTIONS if o.scope == IMAGE)


def _field(opt: Option) -> tuple[str, type, object]:
    if opt.kind == FLAG:
        return opt.dest, bool, False
    if opt.kind == APPEND:
        return opt.dest, tuple[str, ...], ()
    return opt.dest, str | None, None


# A launch's options as one typed, immutable value: a field per option of the table above (a flag is
# a bool, a value str or None, a repeatable value a tuple), and what the command line names besides.
# Planning (shim/pipeline) reads this, never argparse; shim/cli makes it (launch_values). A NamedTuple:
# a planned launch pays for making it at start-up (a 36-field frozen dataclass costs ~1.3 ms, this ~0.1).
_FIELDS = (("image", str, ""), ("command", tuple[str, ...], ()),
           ("runscript", bool, False),  # `shimrun run`: the image's runscript, COMMAND its arguments
           *(_field(o) for o in OPTIONS))
LaunchOptions = NamedTuple("LaunchOptions", [(name, kind) for name, kind, _ in _FIELDS])
LaunchOptions.__new__.__defaults__ = tuple(default for _, _, default in _FIELDS)
LaunchOptions.__doc__ = "shimrun's launch options, IMAGE and COMMAND, typed (one field per entry of OPTIONS)."


def launch_values(given: object) -> LaunchOptions:
    """The typed options from any object with the options' attributes (argparse's namespace); an
    option it lacks (`check` has only the image options) is not given."""
    values = {}
    for name in LaunchOptions._fields:
        value = getattr(given, name, None)
        if value is None:
            continue
        values[name] = tuple(value) if isinstance(value, list) else value
    return LaunchOptions(**values)
