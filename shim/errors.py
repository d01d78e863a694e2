"""Errors as values with an exit-code class, rendered as one line by the CLI.

Exit codes (documented in README.md, "Exit codes"):
  the app's own status      the app ran; shimrun exits with what the app returned (signal N -> 128+N)
  64 USAGE                   bad command line or option value
  65 IMAGE                   not a SIF, truncated or corrupt image, no primary partition, unsupported fs
  67 REFUSED                 an injection was refused (or a warning) and --strict or the site makes it fatal
  66 ARCH                    the image's architecture cannot run on this host
  68 NO_SUCH_IMAGE           the source has no such image: unknown tag or repository (404), no tag in an archive
  69 HOST                    the host lacks what shim needs (user namespaces, FUSE and no fallback)
  70 INTERNAL                a bug in shim (an exception shim did not expect)
  71 LAUNCH                  namespace / mount / pivot_root set-up failed
  75 UNREACHABLE             the registry cannot be reached (not listening, DNS, TLS, a 5xx): try again later
  77 AUTH                    the registry refused the credentials (401/403)
  78 CONFIG                  the site configuration or a profile is invalid
  79 UNTRUSTED               the image's signatures do not verify, or the site's image policy does not let it run
  126 NOT_EXECUTABLE         the command exists in the image but cannot be executed
  127 NOT_FOUND              the command is not found in the image
"""

from __future__ import annotations

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


# Control characters (C0, DEL, C1) as escapes: a line shim prints stays one line, and text from an
# image, a registry or a command line can neither forge a line nor drive the terminal. Bytes that
# are not UTF-8 (kept as surrogates) are shown as \xNN too.
_ESCAPES = {**{c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))},
            ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
            **{0xDC80 + b: f"\\x{0x80 + b:02x}" for b in range(0x80)}}


def printable(text: str) -> str:
    """`text` with every control character escaped: safe to print as (part of) one line."""
    return text.translate(_ESCAPES)


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
    line, whatever the message quotes (printable)."""

    code: ExitCode
    message: str
    hint: str = ""

    def __str__(self) -> str:
        return printable(f"{self.message} ({self.hint})" if self.hint else self.message)


class UsageError(ShimError):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(ExitCode.USAGE, message, hint)


class ImageError(ShimError):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(ExitCode.IMAGE, message, hint)
