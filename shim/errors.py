"""Errors as values with an exit-code class, rendered as one line by the CLI; and the rule for text
from outside in such a line (`shown`, `listed`, `one_line`: escaped and bounded).

Exit codes: `ExitCode` below is their one definition (shim/cgen.py writes them into
csrc/gen/codes.h for the C side), `EXIT_LABELS` their names as `shimrun --help` lists them, and
README.md's "Exit codes" table says when each is returned (tests/test_written_once.py holds the
table to the enum). When the app ran, shimrun exits with the app's own status.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    USAGE = 64
    IMAGE = 65
    ARCH = 66
    REFUSED = 67
    NO_SUCH_IMAGE = 68
    HOST = 69
    INTERNAL = 70
    LAUNCH = 71
    AFTER_START = 73
    UNREACHABLE = 75
    AUTH = 77
    CONFIG = 78
    UNTRUSTED = 79
    NOT_EXECUTABLE = 126
    NOT_FOUND = 127


# The name of each exit code, as `shimrun --help` lists them and the README's table begins its rows.
EXIT_LABELS: dict[ExitCode, str] = {
    ExitCode.USAGE: "usage", ExitCode.IMAGE: "image", ExitCode.ARCH: "architecture", ExitCode.REFUSED: "refused",
    ExitCode.NO_SUCH_IMAGE: "no such image", ExitCode.HOST: "host", ExitCode.INTERNAL: "internal error",
    ExitCode.LAUNCH: "launch", ExitCode.AFTER_START: "after start",
    ExitCode.UNREACHABLE: "registry unreachable", ExitCode.AUTH: "registry credentials",
    ExitCode.CONFIG: "configuration", ExitCode.UNTRUSTED: "untrusted", ExitCode.NOT_EXECUTABLE: "not executable",
    ExitCode.NOT_FOUND: "not found"}

# How a command that cannot be started is reported, by the C executor (generated into
# csrc/gen/codes.h), the image's shell (the action script) and `check IMAGE COMMAND` alike.
# printf formats: the command, then the PATH searched / the system's reason.
# "executable file not found in" is Apptainer's wording too: cwltool reads it to tell that --userns
# works (its probe runs a command the image lacks).
EXEC_NOT_FOUND = "%s: executable file not found in the image (PATH=%s)"
EXEC_NOT_EXECUTABLE = "%s: found in the image but cannot be executed: %s"


@dataclass
class ShimError(Exception):
    """A failure the user can act on: what went wrong, where, and how to fix it. Shown as one
    line, whatever the message quotes (escaped)."""

    code: ExitCode
    message: str
    hint: str = ""

    def __str__(self) -> str:
        return escaped(f"{self.message} ({self.hint})" if self.hint else self.message)


class UsageError(ShimError):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(ExitCode.USAGE, message, hint)


class ImageError(ShimError):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(ExitCode.IMAGE, message, hint)


# ---- text from outside (a registry, an image's names and links), fit for one terminal line ----
# Control characters (C0, DEL, C1, line and paragraph separators, bidirectional and other format
# characters) are written as escapes (\n, \x1b, \u202e), so a registry cannot forge a line of
# shimrun's own, move the cursor or retitle the terminal; a long text is cut with a count of what
# was left out, and so is a long list. The CLI passes every error line through `one_line` too.

TEXT_LIMIT = 120      # characters of one outside value in a message
LIST_LIMIT = 8        # items of an outside list in a message
LINE_LIMIT = 4000     # characters of a whole error line
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNSAFE = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"))


def _escape(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escaped(text: str) -> str:
    """`text` with every control or format character written as an escape."""
    if text.isprintable():
        return text
    return "".join(_escape(c) if c != " " and unicodedata.category(c) in _UNSAFE else c for c in text)


def shown(value: object, limit: int = TEXT_LIMIT) -> str:
    """An outside value for a message: escaped, and cut at `limit` characters with a count."""
    text = escaped(value if isinstance(value, str) else repr(value))
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def listed(items: Iterable[object], limit: int = LIST_LIMIT) -> str:
    """Outside values joined with commas: each shown, at most `limit` of them, then a count."""
    values = list(items)
    head = ", ".join(shown(v, TEXT_LIMIT // 2) for v in values[:limit])
    return head + (f" and {len(values) - limit} more" if len(values) > limit else "")


def one_line(text: str) -> str:
    """A whole message as one bounded terminal line."""
    return shown(text, LINE_LIMIT)
