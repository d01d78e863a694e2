"""Text from outside (a registry, an image's names and links) made fit for one terminal line.

Control characters (C0, DEL, C1, line and paragraph separators, bidirectional and other format
characters) are written as escapes (\\n, \\x1b, \\u202e), so a registry cannot forge a line of
shimrun's own, move the cursor or retitle the terminal; a long text is cut with a count of what
was left out, and so is a long list. Every error line goes through `one_line` at the end as well.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

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
