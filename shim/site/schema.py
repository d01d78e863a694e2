"""The one reader of shim's TOML files (shim.toml and the injection profiles): a schema as data
(table -> key -> Field), the file read into a dict, and the checks every such file gets: unknown
tables and keys, with the known name a typo most likely meant, and values of the wrong type.

What it finds are values (Finding, UnreadableToml); each file's loader words them for its readers
(shim.toml stops at the first, a profile collects them all). Non-goal: the meaning of a value
(an absolute path, a known diagnostic code): that is the loader's.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

# TOML type -> (the Python type tomllib reads it as, words for messages). "strings": an array
# of strings; "string-table": a table of string values (their items are checked by item_problems).
# "size": bytes as an integer, or a string the loader reads ("20G", "50%").
TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "string": (str, "a string"), "strings": (list, "an array of strings"), "boolean": (bool, "a boolean"),
    "integer": (int, "an integer"), "string-table": (dict, "a table of strings"),
    "size": ((int, str), "a size (an integer of bytes, or a string such as \"20G\")"),
}


class Field(NamedTuple):
    type: str           # a key of TYPES
    example: str = ""   # a line for the fix, e.g. 'kind = "mpi"'

    def accepts(self, value: Any) -> bool:
        return isinstance(value, TYPES[self.type][0])

    @property
    def words(self) -> str:
        return TYPES[self.type][1]

    @property
    def python_name(self) -> str:
        kinds = TYPES[self.type][0]
        return " or ".join(k.__name__ for k in kinds) if isinstance(kinds, tuple) else kinds.__name__


Schema = Mapping[str, Mapping[str, Field]]

# What a Finding is about.
UNKNOWN_TABLE, OUTSIDE_TABLE, NOT_A_TABLE, UNKNOWN_KEY, WRONG_TYPE = (
    "unknown table", "outside any table", "not a table", "unknown key", "wrong type")


class Finding(NamedTuple):
    what: str            # one of the five above
    table: str
    key: str = ""        # UNKNOWN_KEY, WRONG_TYPE
    value: Any = None    # the value found (NOT_A_TABLE, OUTSIDE_TABLE, WRONG_TYPE, UNKNOWN_KEY)


class UnreadableToml(Exception):
    """The file is not TOML shim can read. reason: read | utf8 | nesting | syntax; detail: the
    OS error's text (read) or the TOML parser's message (syntax); line: where (syntax), or 0."""

    def __init__(self, reason: str, detail: str = "", line: int = 0) -> None:
        super().__init__(detail or reason)
        self.reason, self.detail, self.line = reason, detail, line

    @property
    def syntax_message(self) -> str:
        """The parser's message without its "(at line N, column M)"."""
        return re.sub(r"\s*\(at line.*\)$", "", self.detail)


def read_toml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UnreadableToml("read", e.strerror or str(e)) from None
    except UnicodeDecodeError:
        raise UnreadableToml("utf8") from None
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise UnreadableToml("nesting") from None
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        raise UnreadableToml("syntax", str(e), int(m.group(1)) if m else 0) from None


def owners(schema: Schema) -> dict[str, str]:
    """Key -> the table it belongs in."""
    return {key: table for table, keys in schema.items() for key in keys}


def findings(data: Mapping[str, Any], schema: Schema, types: bool = True,
             allowed: Iterable[tuple[str, str]] = ()) -> list[Finding]:
    """Unknown tables and keys, tables that are not tables and (types) values of the wrong type,
    in the file's order. allowed: (table, key) pairs the loader words itself (removed keys)."""
    allowed = set(allowed)
    owner = owners(schema)
    out = []
    for table, section in data.items():
        if table not in schema:
            out.append(Finding(OUTSIDE_TABLE if not isinstance(section, dict) and table in owner else UNKNOWN_TABLE,
                               table, value=section))
            continue
        if not isinstance(section, dict):
            out.append(Finding(NOT_A_TABLE, table, value=section))
            continue
        for key, value in section.items():
            field = schema[table].get(key)
            if field is None:
                if (table, key) not in allowed:
                    out.append(Finding(UNKNOWN_KEY, table, key, value))
            elif types and not field.accepts(value):
                out.append(Finding(WRONG_TYPE, table, key, value))
    return out


Problem = tuple[str, str, str]   # (dotted key, message, fix)


def typed_value(data: Mapping[str, Any], schema: Schema, table: str, key: str) -> tuple[Any, list[Problem]]:
    """(data[table][key] if present and of its schema type else None, problems as (dotted key,
    message, fix)). Arrays of strings and tables of strings keep only their string items."""
    section = data.get(table)
    if not isinstance(section, dict) or key not in section:
        return None, []
    value, field, dotted = section[key], schema[table][key], f"{table}.{key}"
    if not field.accepts(value):
        return None, [(dotted, f"must be {field.words}, not {toml_type(value)}", f"write it as {field.example}")]
    if field.type == "strings":
        return item_problems(dotted, value, field.example)
    if field.type == "string-table":
        good_t: dict[str, str] = {}
        problems: list[Problem] = []
        for name, item in value.items():
            if not isinstance(item, str):
                problems.append((f"{dotted}.{name}", f"must be a string, not {toml_type(item)}",
                                 f'quote it: {name} = "{item}"'))
            else:
                good_t[name] = item
        return good_t, problems
    return value, []


def item_problems(dotted: str, value: list[Any], example: str) -> tuple[list[str], list[Problem]]:
    """The non-empty strings of an array of strings, and a problem for each other item."""
    good: list[str] = []
    problems: list[Problem] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            problems.append((f"{dotted}[{i}]", f"must be a string, not {toml_type(item)}", f"quote it, e.g. {example}"))
        elif not item.strip():
            problems.append((f"{dotted}[{i}]", "is empty", "remove it or fill it in"))
        else:
            good.append(item)
    return good, problems


def table(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """data[name] when it is a table, else an empty one."""
    section = data.get(name)
    return section if isinstance(section, dict) else {}


def closest(word: str, known: Iterable[str]) -> list[str]:
    """The known word a typo most likely meant: difflib's pick, else one it abbreviates (env)."""
    import difflib  # only for an error's hint: ~0.5 ms of every launch's start-up otherwise

    known = list(known)
    return (difflib.get_close_matches(word, known, n=1)
            or [k for k in known if len(k) >= 3 and word.lower().startswith(k)][:1])


# The TOML words for a value tomllib read, first match wins (a bool is also an int).
_VALUE_WORDS = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
                (list, "an array"), (dict, "a table"))


def toml_type(value: Any) -> str:
    return next((words for kind, words in _VALUE_WORDS if isinstance(value, kind)), "a date/time")
