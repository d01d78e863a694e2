"""Errors as values with an exit-code class, rendered as one line by the CLI; and the rule for text
from outside in such a line (`shown`, `listed`, `one_line`: escaped and bounded).

Exit codes (documented in README.md, "Exit codes"):
  the app's own status      the app ran; shimrun exits with what the app returned (signal N -> 128+N)
  64 USAGE                   bad command line or option value
  65 IMAGE                   not a SIF, truncated or corrupt image, no primary partition, unsupported fs; an OCI
                             blob, digest, layer or config value refused (mismatch, not the grammar, a cap)
  67 REFUSED                 an injection was refused (or a warning) and --strict or the site makes it fatal
  66 ARCH                    the image's architecture cannot run on this host
  68 NO_SUCH_IMAGE           the source has no such image: unknown tag or repository (404), no tag in an archive
  69 HOST                    the host lacks what shim needs (user namespaces, FUSE and no fallback)
  70 INTERNAL                a bug in shim (an exception shim did not expect)
  71 LAUNCH                  namespace / mount / pivot_root set-up failed
  75 UNREACHABLE             the registry cannot be reached (not listening, DNS, TLS, a 5xx), broke off what
                             it sent, or was too slow (the pull's deadlines): try again later
  77 AUTH                    the registry refused the credentials (401/403), or asks for them where shim
                             sends none (a redirect's host, a token service that is not https)
  78 CONFIG                  the site configuration or a profile is invalid
  79 UNTRUSTED               the image's signatures do not verify, or the site's image policy does not let it run
  126 NOT_EXECUTABLE         the command exists in the image but cannot be executed
  127 NOT_FOUND              the command is not found in the image
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
    ExitCode.LAUNCH: "launch", ExitCode.UNREACHABLE: "registry unreachable", ExitCode.AUTH: "registry credentials",
    ExitCode.CONFIG: "configuration", ExitCode.UNTRUSTED: "untrusted", ExitCode.NOT_EXECUTABLE: "not executable",
    ExitCode.NOT_FOUND: "not found"}

# How a command that cannot be started is reported, by the C executor (generated into
# csrc/gen/codes.h), the image's shell (the action script) and `check IMAGE COMMAND` alike.
# printf formats: the command, then the PATH searched / the system's reason.
EXEC_NOT_FOUND = "%s: command not found in the image (PATH=%s)"
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
