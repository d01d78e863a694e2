"""The launch record's format, as data: the one definition of its tags and of every number the
planner and the C executor share (docs/launch-record.md describes each field). shim/cgen.py
writes csrc/gen/record.h from it; shim/record/encode.py writes records with it.

A record is MAGIC, then fields: u16 tag, u32 length, payload; integers little-endian, strings
NUL-terminated (the NUL is part of the payload). Nothing here imports the rest of shim but its sibling
runtime_env.py (the runtime's own names)."""

from __future__ import annotations

from shim.record.runtime_env import SETTINGS_PREFIXES

MAGIC = b"SHIMREC1"
MAX_RECORD = 64 << 20        # bytes: a record larger than this is not read
MAX_CONTENT = 1 << 16        # bytes of a file kept as a content input

# name: (tag, payload)
TAGS: dict[str, tuple[int, str]] = {
    "VERSION": (1, "string: the build that wrote it (a record of another build is never run)"),
    "KEY": (2, "string: the key it was written under"),
    "INPUT_FILE": (10, ("u32 check, u32 mode, u64 dev, u64 ino, u64 size, i64 mtime_ns, i64 ctime_ns, path (mode 0: "
                        "absent)")),
    "INPUT_CONTENT": (11, "u8 present, path, bytes: the whole file as it was"),
    "INPUT_GLOB": (12, "pattern, then each name glob(3) matched, sorted"),
    "INPUT_ENV": (13, "u8 how, u8 expect, name, value"),
    "INPUT_CPUS": (14, "u32 allowed CPUs (0: not checked), host root, cgroup CPU quota (\"\": none)"),
    "IMAGE_KIND": (20, "u32 IMG_*"),
    "IMAGE_PATH": (21, "string: SIF/squashfs file or directory"),
    "IMAGE_OFFSET": (22, "u64: offset of the squashfs partition"),
    "SQUASHFUSE": (23, "string: the squashfuse binary"),
    "STAGE": (24, "string: the directory that gets the launch's private tmpfs"),
    "FAKEROOT": (25, "u32"),
    "NAMESPACES": (26, "u32 NS_* flags: namespaces besides user + mount (--ipc, --net, --pid)"),
    "WRITABLE": (27, "u32: 1: the root is an overlay whose changes go to the launch's tmpfs (--writable-tmpfs)"),
    "IMAGE_FILE": (28, ("u32 IMAGE_SOURCE_*, u32 mode, u64 dev, u64 ino, u64 size, i64 mtime_ns, i64 ctime_ns: the "
                        "image the command line names, as the planner opened and judged it (the executor opens "
                        "IMAGE once and runs the record only on that very file)")),
    "ROOT_LOCK": (29, ("string: the unpacked root's lock file (DIR/DIGEST.lock): the executor flock(LOCK_SH)s it "
                       "for the app's lifetime, so a clean-up leaves the root alone, and stamps it as last used")),
    "KEPT_IDLE": (34, ("u32 seconds: with IMAGE_KIND KEPT, how long the kept mount's holder stays once no app of "
                       "it is left (the latest launch's value wins)")),
    "AUDIT": (35, ("u32 AUDIT_*, string: the audit library's host path: the executor forks, names the library in "
                   "LD_AUDIT and, when the app has ended, reads what its processes loaded (--report-loaded)")),
    "AUDIT_RULE": (36, ("u8 AUDIT_KIND_*, u8 AUDIT_SEVERITY_*, code, preconditions, patterns, message, hint, admin "
                        "hint: a finding about what was loaded (pattern lists AUDIT_SEP-separated fnmatch globs)")),
    "AUDIT_INJECTED": (37, "container path, host path, sha256: an injected object, mapped back to its host file"),
    "BIND": (30, "u32 BIND_* flags, src, dst"),
    "APPEND": (31, "container path, text shown appended to it"),
    "STAGE_FILE": (32, "name, bytes: written to STAGE/name before the binds"),
    "LINK": (33, ("target, path: a symlink made after the binds, in a directory the launch mounted fresh, or in an "
               "underlay it makes over the image's read-only directory (never in the image or a host directory)")),
    "CWD": (40, "string: the working directory (\"\": the caller's)"),
    "CWD_REQUIRED": (41, "u32: a missing working directory is an error"),
    "QUIET": (42, "u32"),
    "DEBUG": (43, "u32"),
    "COMMAND": (44, "string: the app; its arguments come from each launch"),
    "RUNSCRIPT": (45, ("u32: 1: `shimrun run IMAGE [ARGS...]`: the app is the FIXED words, then the launch's "
                       "ARGS or, with none, the DEFAULT words (COMMAND is not used)")),
    "RUN_ARG": (46, "u8 RUN_ARG_*, string: a word of the image's runscript (OCI Entrypoint: FIXED, Cmd: DEFAULT)"),
    "ENV_OP": (50, "u8 target, u8 op, name, value"),
    "ENV_PASS": (51, "u8 rule, text"),
    "ACTION_SCRIPT": (52, "string: run by the image's /bin/sh when ENV_DIR exists in the image"),
    "ENV_DIR": (53, "string"),
    "ENV_DATA": (54, ("string: the name of an environment script that sets only what the ENV_OPs apply as data (an "
                      "OCI image's Env): when it is the only script in ENV_DIR, the app is exec'd directly, without "
                      "the image's shell")),
    "DIAGNOSTICS": (60, "string: printed on stderr before the app, as it is"),
    "REFUSE": (61, "u32 exit code, string: printed, and the app is not started"),
    "NOTICE": (62, "string: printed when the record is run from the cache (the planner printed it itself)"),
    "PROVENANCE": (70, "u32 PROV_*, path: where a provenance record of the run goes (at most PROV_MAX of them)"),
    "PROVENANCE_FACTS": (71, ("string: the planner's facts, one JSON object: the executor forks, waits for the app "
                              "and writes them with the run's own (command line, times, exit status, Slurm ids)")),
}

# INPUT_FILE: what of stat(2) must still match.
# CTIME: the inode's change time too, which no one can set back (a SIF rewritten in place with its
# mtime restored is still a new image: its signatures are checked again).
CHECK = {"EXISTS": 1, "TYPE": 2, "ID": 4, "SIZE": 8, "MTIME": 16, "MODE": 32, "FOLLOW": 64, "CTIME": 128}
IDENTITY = CHECK["EXISTS"] | CHECK["TYPE"] | CHECK["ID"] | CHECK["SIZE"] | CHECK["MTIME"] | CHECK["MODE"]
# INPUT_ENV: VALUE: set to this value (expect 1) or unset (0); NONEMPTY: set and not empty (1) or
# not (0); PREFIX: some variable whose name starts with `name` is set (1) or none is (0).
ENV_HOW = {"VALUE": 1, "NONEMPTY": 2, "PREFIX": 3}

# ENV_OP targets: HOST edits the passing host variables; DIRECT is the app's environment when it
# is exec'd directly; BASE is /bin/sh's when the action script runs.
ENV_TARGET = {"HOST": 1, "DIRECT": 2, "BASE": 3}
ENV_OP = {"SET": 1, "PREPEND": 2, "APPEND": 3, "UNSET": 4, "SET_DEFAULT": 5,
          "HOST": 6,         # all passing host variables, here
          "HOST_NAMES": 7}   # name = the passing host variables' names sh can take, space-separated
ENV_PASS = {"ALWAYS_PREFIX": 1, "BLOCKED": 2, "BLOCKED_PREFIX": 3, "CLEANENV_KEEP": 4, "CLEANENV": 5,
            "SHELL_OWNED": 6}

# KEPT: a squashfs served by the user's kept squashfuse mount on this node (csrc/kept.c), joined by
# each launch with its own binds; mounted per launch when it cannot be joined.
IMG = {"SQUASHFS": 1, "DIR": 2, "KEPT": 3}
# IMAGE_FILE: where the root comes from. OPENED: the opened image itself (squashfuse reads its
# descriptor; a directory is bound from it); COPY: IMAGE_PATH, a private copy extracted from it.
IMAGE_SOURCE = {"OPENED": 1, "COPY": 2}
RUN_ARG = {"FIXED": 1, "DEFAULT": 2}
# The word after shimrun's options that makes the next one the image and the rest its arguments.
RUN_VERB = "run"
# `shimrun exec [OPTIONS] IMAGE COMMAND...`: Apptainer's spelling of `shimrun [OPTIONS] IMAGE COMMAND...`.
EXEC_VERB = "exec"
BIND = {"RO": 1,          # read-only in the container
        "OPTIONAL": 2,    # skipped when the source does not exist
        "KEEPDEV": 4,     # device nodes stay usable (host /dev); still nosuid
        "IFDST": 8,       # only when the destination already exists in the image
        # Not from the host: a new file system on dst, src its mount options ("" none).
        "TMPFS": 16, "DEVPTS": 32, "PROC": 64,
        # A writable host directory the user asked for (--home, --bind, --mount, the working
        # directory): a later bind's missing mount point inside it is made in it, on the host, and
        # left there, as Apptainer does. Without it (read-only, the system's and the site's binds)
        # the executor makes an underlay over the directory instead.
        "MOUNTPOINTS": 128}
FRESH = BIND["TMPFS"] | BIND["DEVPTS"] | BIND["PROC"]
NS = {"IPC": 1, "NET": 2, "PID": 4}
# PROVENANCE: where the record goes. USER: --provenance PATH, that file or, when PATH is a
# directory at launch, one file per run in it; SITE: one file per run in the site's [provenance]
# dir (a failure there is the site's: exit 78, not 64). MAX: how many a record may name.
PROV = {"USER": 1, "SITE": 2, "MAX": 2}

# AUDIT: what the after-start audit of loaded objects does (csrc/audit.c; README "What actually
# ran"). STRICT: a WARN/ERROR finding when the app exited 0 gives ExitCode.AFTER_START; PRINT: the
# findings are printed (without it, only the provenance record's "loaded" list is made).
AUDIT = {"STRICT": 1, "PRINT": 2}
# AUDIT_RULE: ANY fires when a loaded object matches a pattern (the message's %s: those objects);
# NONE when none does (its %s: the objects the preconditions matched). A rule applies only when
# one loaded object matches a precondition (none listed: always). A pattern with a '/' is matched
# against the whole container path, else against the basename.
AUDIT_KIND = {"ANY": 1, "NONE": 2}
AUDIT_SEVERITY = {"INFO": 1, "WARN": 2, "ERROR": 3}
AUDIT_SEP = "\x1f"
# Where the audit library reports, in the app: this descriptor, left open by the executor; once a
# process has closed it (a child that closes its descriptors, Python's subprocess), the FIFO at
# AUDIT_FIFO. One line per object: "pid\tdev\tino\tpath\n", written at once. The executor makes
# one directory in the staging tmpfs, AUDIT_STAGED_DIR, holding the FIFO and the library (its host
# file bound there), and the record binds that directory read-only at AUDIT_DIR: one bind, whose
# mount point an unpacked root has ready (shim/launch/unpack.py), so that no underlay is needed.
AUDIT_FD = 1001
AUDIT_DIR = "/.shim/audit"
AUDIT_LIBRARY_NAME, AUDIT_FIFO_NAME = "shim_audit.so", "report"
AUDIT_LIBRARY = f"{AUDIT_DIR}/{AUDIT_LIBRARY_NAME}"
AUDIT_FIFO = f"{AUDIT_DIR}/{AUDIT_FIFO_NAME}"
AUDIT_STAGED_DIR = "audit"   # its name in the staging tmpfs
# The provenance record's "loaded" list (the contract with shim/provenance/compare.py): one object
# per loaded path, in the order first seen, with these members:
#   path: the container path; host: the host file of an injected object, else null; sha256: the
#   injected object's, else null; pid: the first process that reported it; exe: that process's
#   /proc/PID/comm when it was read ("" when it was gone).
LOADED_KEYS = ("path", "host", "sha256", "pid", "exe")

# Variables that are the runtime's own settings: part of a record's key (and so never inputs),
# except those that carry one launch's hand-over between the front-end and the planner.
KEY_ENV_PREFIXES = SETTINGS_PREFIXES  # shim/record/runtime_env.py
HANDOVER_ENV = {"LISTEN_FD": "SHIMRUN_LISTEN_FD",   # the group socket a leading rank bound
                "RECORD_FD": "SHIMRUN_RECORD_FD",   # the planner's record, for the executor
                "FRONTEND": "SHIMRUN_FRONTEND",     # the front-end ran (and elected); its flags
                "IMAGE_FD": "SHIMRUN_IMAGE_FD"}     # the image, opened once: everything reads this descriptor
NO_RECORD_CACHE = "SHIMRUN_NO_RECORD_CACHE"         # set: no record is looked up or stored
RECORDS_DIR = "records"

# The job's environment variables the hardware check reads, and what of each it depends on: the
# value, or only whether it is set to something (a new job step must not be a new plan), or
# whether any variable of that prefix is set. The VALUE ones are part of a record's key too, so
# that steps which alternate them (srun -n 1, then -n 8) each keep their record.
JOB_VARIABLES: dict[str, int] = {
    **dict.fromkeys(("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DISABLE_REQUIRE", "OMP_NUM_THREADS",
                     "SLURM_CPUS_PER_TASK", "SLURM_MPI_TYPE", "SLURM_NTASKS", "LD_LIBRARY_PATH",
                     # a job's GPU binding selects its CDI devices (shim/cdi/select.py)
                     "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"), ENV_HOW["VALUE"]),
    **dict.fromkeys(("SLURM_JOB_ID", "SLURM_STEP_ID", "PMI_FD", "PMI_RANK", "PMIX_RANK"), ENV_HOW["NONEMPTY"]),
    "PMIX_SERVER_URI": ENV_HOW["PREFIX"],
}
