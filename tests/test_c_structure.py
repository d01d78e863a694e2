"""The shape the C core promises (csrc/core.h, "One error style"): every call that can fail is
checked where it is made, by one of the checking macros; no call cycle between its files; and the
facts it shares with the planner come from their one Python definition (shim/cgen.py writes them
into csrc/gen/), never from a copy by hand.

Each check is a function over source text, so that it is also run against a known-bad example:
a check that cannot fail is no check."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from shim.record import runtime_env

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"

# The calls of the launch path that can fail: syscalls and the libc calls over them, memory.
CHECKED_CALLS = frozenset({
    "open", "openat", "fcntl", "dup2", "dup3", "pipe2", "close_range", "read", "pread", "write", "send", "recv",
    "sendmsg", "recvmsg", "mount", "umount2", "pivot_root", "mount_setattr", "move_mount", "open_tree",
    "syscall", "unshare", "setns", "prctl", "setgroups", "setpgid", "setsid", "fork", "kill", "waitpid",
    "sigprocmask", "sigaction", "poll", "chdir", "fchdir", "mkdir", "mkdirat", "symlinkat", "chmod", "fchmod",
    "unlink", "unlinkat", "rename", "renameat", "stat", "lstat", "fstat", "fstatat", "statfs", "fstatvfs",
    "readlink", "readlinkat", "realpath", "getcwd", "access", "socket", "bind", "listen", "connect", "accept4",
    "getsockname", "getsockopt", "shutdown", "ioctl", "opendir", "fdopendir", "fopen", "malloc", "calloc",
    "realloc", "strdup", "setenv", "unsetenv", "clock_gettime", "nanosleep", "sched_getaffinity",
    "pthread_create", "posix_spawn",
})
# Calls whose failure has no effect worth a report, with why:
#   close: Linux frees the descriptor whatever close(2) returns; the closes that can lose data
#          (a file written) are checked with Z where they are made.
#   exec*: they return only on failure, and the statement after each is its report.
#   sigemptyset/sigaddset, snprintf, free: cannot fail with the constant arguments given.
CHECKERS = frozenset({"Z", "ZP", "ZE", "ZIMG", "ZR", "ZRP", "ZX", "ZXP", "HANDLED", "BEST_EFFORT"})
EXPLAINED = frozenset({"HANDLED", "BEST_EFFORT"})  # exceptions: a comment at the use says why
EXEC_CALLS = frozenset({"execve", "execv", "execl", "execvpe", "execvp"})


def _blank(text: str) -> str:
    return re.sub(r"[^\n]", " ", text)


def code_of(src: str) -> str:
    """C source with comments and string and character literals blanked (lines kept)."""
    out, i, n = [], 0, len(src)
    while i < n:
        if src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(_blank(src[i:j]))
        elif src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(_blank(src[i:j]))
        elif src[i] in "\"'":
            j = i + 1
            while j < n and src[j] != src[i]:
                j += 2 if src[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(src[i] + _blank(src[i + 1:j - 1]) + src[i:j][-1:])
        else:
            j = i + 1
            out.append(src[i])
        i = j
    return "".join(out)


def _has_comment(src_lines: list[str], line: int) -> bool:
    """A comment on the line (1-based) or on one of the two before it."""
    return any("/*" in src_lines[k] or "*/" in src_lines[k] for k in range(max(0, line - 3), line))


def _assigned_then_checked(code: str, at: int) -> bool:
    """`x = call(...);` directly followed by a checking macro on x (`Z(x, ...)`)."""
    line_start = code.rfind("\n", 0, at) + 1
    left = re.fullmatch(r"\s*(\*?[\w>.-]+(?:\[\w+\])?)\s*=\s*(?:\([\w\s*]+\)\s*)?", code[line_start:at])
    if not left:
        return False
    after = code[code.find(";", at) + 1:].lstrip()
    checked = r"(if\s*\(\s*)?(Z|ZP|ZIMG|ZR|ZRP|ZX|ZXP)\(\s*" + re.escape(left.group(1)) + r"\s*,"
    return re.match(checked, after) is not None


def unchecked_calls(name: str, src: str) -> Iterator[str]:
    """`file:line: call` for each call of CHECKED_CALLS outside a checking macro, and each
    exception (HANDLED, BEST_EFFORT) without a comment saying why."""
    code, lines = code_of(src), src.splitlines()
    enclosing: list[str] = []  # the name before each open parenthesis
    for m in re.finditer(r"[A-Za-z_]\w*|[()]", code):
        word, line = m.group(), code.count("\n", 0, m.start()) + 1
        if word == "(":
            before = re.search(r"([A-Za-z_]\w*)\s*$", code[max(0, m.start() - 64):m.start()])
            enclosing.append(before.group(1) if before else "")
            if enclosing[-1] in EXPLAINED and not _has_comment(lines, line):
                yield f"{name}:{line}: {enclosing[-1]} without a comment saying why"
        elif word == ")":
            if enclosing:
                enclosing.pop()
        elif re.match(r"\s*\(", code[m.end():]) and not re.search(r"(->|\.)\s*$", code[max(0, m.start() - 8):
                                                                                    m.start()]):
            if word in EXEC_CALLS:
                following = code[m.end():].split(";", 2)
                if "errno" not in following[1] if len(following) > 1 else True:
                    yield f"{name}:{line}: {word} not followed by its report"
            elif word in CHECKED_CALLS and not CHECKERS.intersection(enclosing) \
                    and not _assigned_then_checked(code, m.start()):
                yield f"{name}:{line}: {word}"


def functions(code: str) -> Iterator[tuple[str, bool, str]]:
    """(name, static, body) of each function defined at file level of blanked C code."""
    code = re.sub(r"^\s*#.*$", lambda m: _blank(m.group()), code, flags=re.M)
    depth, head_at, head = 0, 0, None
    for i, ch in enumerate(code):
        if ch == "{":
            if depth == 0:
                text = code[head_at:i]
                m = re.search(r"\b([A-Za-z_]\w*)\s*\(([^()]|\([^()]*\))*\)\s*(__attribute__\s*\(\(.*?\)\)\s*)?$",
                              text, re.S)
                head = (m.group(1), "static" in text[:m.start()], i) if m and "=" not in text else None
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                if head:
                    yield head[0], head[1], code[head[2]:i + 1]
                head, head_at = None, i + 1
        elif ch == ";" and depth == 0:
            head_at = i + 1


def call_graph(sources: Mapping[str, str]) -> dict[str, set[str]]:
    """Which file calls a function that which other file defines."""
    parsed = {name: list(functions(code_of(src))) for name, src in sources.items()}
    defined = {fn: name for name, fns in parsed.items() for fn, static, _ in fns if not static}
    graph: dict[str, set[str]] = {name: set() for name in sources}
    for name, fns in parsed.items():
        for _, _, body in fns:
            for call in re.finditer(r"\b([A-Za-z_]\w*)\s*\(", body):
                callee = defined.get(call.group(1))
                if callee and callee != name:
                    graph[name].add(callee)
    return graph


def call_cycles(graph: Mapping[str, set[str]]) -> list[str]:
    """Each cycle once, from its smallest file: "a.c -> b.c -> a.c"."""
    found = []

    def walk(path: list[str]) -> None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == path[0]:
                found.append(" -> ".join([*path, nxt]))
            elif nxt > path[0] and nxt not in path:
                walk([*path, nxt])

    for start in sorted(graph):
        walk([start])
    return found


# Facts with one definition (shim/record/runtime_env.py, shim/record/format.py), generated into
# csrc/gen/: none may be written by hand in C, nor in the Python files that once copied them.
def _c_literal(text: str) -> str:
    return '"' + text + '"'


C_FACTS = sorted({*runtime_env.SLURM.values(), runtime_env.SHARE_VARIABLE, runtime_env.SHARE_REQUEST,
                  runtime_env.SHARE_HASH_TAG, runtime_env.RECORD_KEY_TAG, runtime_env.KEPT_SOCKET,
                  runtime_env.KEPT_REQUEST, runtime_env.KEPT_HASH_TAG,
                  *runtime_env.BLOCKED_PREFIXES, *runtime_env.SETTINGS_PREFIXES})
C_REPLY_TAGS = (runtime_env.SHARE_REPLY_OK, runtime_env.SHARE_REPLY_ERROR)
_PY_PREFIXES = {*runtime_env.SETTINGS_PREFIXES, *runtime_env.BLOCKED_PREFIXES, *runtime_env.OVERRIDE_PREFIXES}
PY_COPIES = {"shim/launch/execute.py": {runtime_env.SHARE_VARIABLE, runtime_env.SLURM["JOB_ID"],
                                        runtime_env.SLURM["STEP_ID"], *runtime_env.SHARE_OFF},
             "shim/container/environment.py": _PY_PREFIXES, "shim/record/format.py": _PY_PREFIXES,
             "shim/cgen.py": {*_PY_PREFIXES, runtime_env.SHARE_VARIABLE}}


def facts_by_hand_in_c(name: str, src: str) -> Iterator[str]:
    """A string literal in C that is one of the generated facts (comments may name them)."""
    literals = re.findall(r'"((?:[^"\\\n]|\\.)*)"', _strip_comments(src))
    for text in literals:
        if text in C_FACTS or any(text.startswith(f"{fact}=") for fact in C_FACTS) or text in C_REPLY_TAGS:
            yield f"{name}: {_c_literal(text)}"


def _strip_comments(src: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", lambda m: _blank(m.group()), src, flags=re.S)


def facts_by_hand_in_python(name: str, src: str, facts: set[str]) -> Iterator[str]:
    for text in re.findall(r'"([^"\n]+)"', src):
        if text in facts:
            yield f"{name}: {text!r}"


def _sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(CSRC.glob("*.c"))}


def test_every_call_is_checked() -> None:
    found = [hit for name, src in _sources().items() for hit in unchecked_calls(name, src)]
    assert found == []


def test_no_call_cycle_between_c_files() -> None:
    assert call_cycles(call_graph(_sources())) == []


def test_shared_facts_are_generated_not_copied() -> None:
    found = [hit for name, src in _sources().items() for hit in facts_by_hand_in_c(name, src)]
    found += [hit for name in ("core.h", "rd.h", "shim_core.h") for hit in facts_by_hand_in_c(name,
                                                                                            (CSRC / name).read_text())]
    found += [hit for path, facts in PY_COPIES.items()
              for hit in facts_by_hand_in_python(path, (REPO / path).read_text(), facts)]
    assert found == []


# The checks against examples each must refuse (the old code's own forms, as of 85e818e).
@pytest.mark.parametrize(("src", "want"), [
    ("void f(void)\n{\n    prctl(PR_SET_PDEATHSIG, SIGKILL);\n}\n", ["x.c:3: prctl"]),
    ("void f(int a)\n{\n    if (a >= 0)\n        dup2(a, 0);\n}\n", ["x.c:4: dup2"]),
    ('void f(void)\n{\n    setenv("A", "0", 1);\n}\n', ["x.c:3: setenv"]),
    ("void f(void)\n{\n    int fd = open(p, 0);\n    use(fd);\n}\n", ["x.c:3: open"]),
    ("void f(void)\n{\n    BEST_EFFORT(kill(c, 9));\n}\n", ["x.c:3: BEST_EFFORT without a comment saying why"]),
    ('void f(void)\n{\n    execv(p, a);\n    _exit(1);\n}\n', ["x.c:3: execv not followed by its report"]),
    (("void f(void)\n{\n    Z(mkdir(p, 0755), \"mkdir %s\", p);\n    fd = open(p, 0);\n"
      "    Z(fd, \"open\");\n    ZX(dup2(fd, 1), \"x\");\n    BEST_EFFORT(kill(c, 9)); /* gone */\n"
      "    if (ZR(fd = open(p, 0), w, n, \"o\"))\n        return;\n    execv(p, a);\n    report(errno);\n}\n"), []),
])
def test_unchecked_calls_are_found(src: str, want: list[str]) -> None:
    assert list(unchecked_calls("x.c", src)) == want


def test_call_cycles_are_found() -> None:
    graph = call_graph({"a.c": "int fa(void)\n{\n    return fb();\n}\n",
                        "b.c": "static int own(void) { return 0; }\nint fb(void)\n{\n    return fc() + own();\n}\n",
                        "c.c": "int fc(void)\n{\n    return fa();\n}\n",
                        "d.c": "int fd(void)\n{\n    return fa();\n}\n"})
    assert graph == {"a.c": {"b.c"}, "b.c": {"c.c"}, "c.c": {"a.c"}, "d.c": {"a.c"}}
    assert call_cycles(graph) == ["a.c -> b.c -> c.c -> a.c"]


def test_facts_by_hand_are_found() -> None:
    c = ('/* SHIMRUN_SHARE=0 in a comment is fine */\nconst char *s = getenv("SHIMRUN_SHARE");\n'
         'static const char *p[] = {"SHIMRUN", "APPTAINERENV_", "PATH=", NULL};\nsend("SHIMREQ1"); x("ER");\n')
    assert list(facts_by_hand_in_c("x.c", c)) == ['x.c: "SHIMRUN_SHARE"', 'x.c: "SHIMRUN"', 'x.c: "APPTAINERENV_"',
                                                  'x.c: "SHIMREQ1"', 'x.c: "ER"']
    py = 'share = environ.get("SHIMRUN_SHARE", "")\n_P = ("SINGULARITYENV_", "APPTAINERENV_")\n'
    facts = PY_COPIES["shim/container/environment.py"] | {"SHIMRUN_SHARE"}
    assert list(facts_by_hand_in_python("x.py", py, facts)) == ["x.py: 'SHIMRUN_SHARE'", "x.py: 'SINGULARITYENV_'",
                                                                "x.py: 'APPTAINERENV_'"]
