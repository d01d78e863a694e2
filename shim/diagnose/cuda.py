"""CUDA versions against NVIDIA drivers: NVIDIA's driver table (shim/knowledge/cuda_drivers.json, from the
CUDA Toolkit Release Notes) and an evaluator of NVIDIA_REQUIRE_CUDA that explains every term.

NVIDIA_REQUIRE_* follows libnvidia-container's DSL (src/dsl.c, cli/configure.c): terms separated
by spaces are OR-ed, predicates in a term separated by commas are AND-ed; a predicate is KEY OP
VALUE with KEY in cuda (the driver's CUDA version), driver (the driver version), arch (the GPU's
compute capability), brand (tesla, geforce, nvidia, ...) and OP in = != < <= > >=. Versions
compare numerically component by component, missing trailing components counting as 0; brands
compare without case and only with = and !=. An empty requirement is satisfied.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from shim.knowledge.tables import table
from shim.knowledge.version import Version, cmp_version, parse_version, version_text


def cuda_str(v: Version) -> str:
    return version_text(v)


def cuda_from_nvml(value: int | None) -> Version | None:
    """NVML's CUDA driver version (12040) -> (12, 4)."""
    if not value:
        return None
    return (value // 1000, (value % 1000) // 10)


# ---- NVIDIA's table ----

@dataclass(frozen=True)
class ToolkitDriver:
    release: str       # "12.2 Update 2"
    cuda: Version      # (12, 2)
    driver: Version    # (535, 104, 5)
    driver_text: str   # "535.104.05" as NVIDIA writes it


@dataclass(frozen=True)
class DriverTable:
    source: str
    minor_compat: dict[int, tuple[Version, str]]   # major -> lowest driver (parsed, text)
    toolkits: tuple[ToolkitDriver, ...]

    def releases(self, cuda: Version) -> list[ToolkitDriver]:
        """The releases of CUDA major.minor `cuda`, oldest (GA) first."""
        mm = cuda[:2]
        return sorted((t for t in self.toolkits if t.cuda[:2] == mm), key=lambda t: t.driver)

    def toolkit_driver(self, cuda: Version) -> ToolkitDriver | None:
        """The lowest driver NVIDIA lists for CUDA major.minor (its GA release)."""
        rel = self.releases(cuda)
        return rel[0] if rel else None

    def minor_compat_driver(self, major: int) -> tuple[Version, str] | None:
        return self.minor_compat.get(major)

    def cuda_of_driver(self, driver: Version) -> Version | None:
        """The highest CUDA major.minor whose release driver `driver` reaches (what the
        driver supports without compatibility packages), None below the table."""
        ok = [t.cuda[:2] for t in self.toolkits if cmp_version(driver, t.driver) >= 0]
        return max(ok) if ok else None


def _table_from(data: dict[str, Any]) -> DriverTable:
    toolkits = []
    for row in data["toolkit_drivers"]:
        cuda, driver = parse_version(row["cuda"]), parse_version(row["driver"])
        if cuda is None or driver is None:
            raise ValueError(f"cuda_drivers.json: bad row {row!r}")
        toolkits.append(ToolkitDriver(str(row["release"]), cuda, driver, str(row["driver"])))
    compat = {}
    for major, driver_text in data["minor_version_compat"].items():
        v = parse_version(driver_text)
        if v is None:
            raise ValueError(f"cuda_drivers.json: bad minor_version_compat {major}: {driver_text!r}")
        compat[int(major)] = (v, str(driver_text))
    return DriverTable(str(data.get("source", "")), compat, tuple(toolkits))


@functools.cache
def driver_table() -> DriverTable:
    """The table shipped in shim/knowledge/cuda_drivers.json (read once)."""
    return _table_from(table("cuda_drivers"))


# ---- NVIDIA_REQUIRE_* ----

_OPERATORS = ("=", "!=", "<", "<=", ">", ">=")  # libnvidia-container accepts exactly these
_OP_CHARS = "<>=!"
KEYS = ("cuda", "driver", "arch", "brand")


@dataclass(frozen=True)
class PredicateResult:
    text: str               # "driver>=470"
    key: str
    op: str
    value: str
    host: str | None        # the host's value; None when unknown to shim
    result: bool | None     # None: undecided (host value unknown) or invalid
    error: str | None = None

    def explain(self) -> str:
        if self.error:
            return f"{self.text}: invalid ({self.error})"
        if self.host is None:
            return f"{self.text}: {self.key} unknown here (undecided)"
        return f"{self.key} {self.host} {self.op} {self.value}: {'yes' if self.result else 'no'}"


@dataclass(frozen=True)
class TermResult:
    text: str
    predicates: tuple[PredicateResult, ...]
    result: bool | None

    def explain(self) -> str:
        verdict = {True: "satisfied", False: "not satisfied", None: "undecided"}[self.result]
        return f"[{self.text}] {verdict} (" + "; ".join(p.explain() for p in self.predicates) + ")"


@dataclass(frozen=True)
class RequireResult:
    expr: str
    terms: tuple[TermResult, ...]
    satisfied: bool | None          # None: undecided (some host value unknown)
    invalid: str | None = None      # why libnvidia-container would reject the expression

    def explain(self) -> str:
        if not self.terms:
            return "empty requirement: satisfied"
        return " OR ".join(t.explain() for t in self.terms)


def _compare(host: str, op: str, value: str, key: str) -> bool:
    if key == "brand":
        if op not in ("=", "!="):
            raise ValueError(f"brand compares only with = and !=, not {op}")
        return (host.lower() == value.lower()) == (op == "=")
    hv, rv = parse_version(host), parse_version(value)
    if rv is None:
        raise ValueError(f"{value!r} is not a version")
    if hv is None:
        raise ValueError(f"the host's {key} {host!r} is not a version")
    c = cmp_version(hv, rv)
    return {"=": c == 0, "!=": c != 0, "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[op]


def _predicate(text: str, host: dict[str, str | None]) -> PredicateResult:
    # As dsl.c splits it: the key up to the first operator character, then the whole run of
    # operator characters (which must be one operator: "==" is invalid), then the value.
    i = next((k for k, c in enumerate(text) if c in _OP_CHARS), len(text))
    key, rest = text[:i], text[i:]
    j = len(rest) - len(rest.lstrip(_OP_CHARS))
    op, value = rest[:j], rest[j:]
    error = None
    if not key:
        error = "no key"
    elif op not in _OPERATORS:
        error = f"unknown operator {op!r}" if op else "no operator"
    elif not value:
        error = "no value"
    elif key not in KEYS:
        error = f"unknown key {key!r} (known: {', '.join(KEYS)})"
    if error:
        return PredicateResult(text, key, op, value, None, None, error)
    hv = host.get(key)
    if hv is None:
        # Validate the value even when it cannot be compared: the runtime would reject it.
        if key != "brand" and parse_version(value) is None:
            return PredicateResult(text, key, op, value, None, None, f"{value!r} is not a version")
        if key == "brand" and op not in ("=", "!="):
            return PredicateResult(text, key, op, value, None, None, "brand compares only with = and !=")
        return PredicateResult(text, key, op, value, None, None)
    try:
        return PredicateResult(text, key, op, value, hv, _compare(hv, op, value, key))
    except ValueError as e:
        return PredicateResult(text, key, op, value, hv, None, str(e))


def _all(results: list[bool | None]) -> bool | None:
    if any(r is False for r in results):
        return False
    return None if any(r is None for r in results) else True


def _any(results: list[bool | None]) -> bool | None:
    if any(r is True for r in results):
        return True
    return None if any(r is None for r in results) else False


def evaluate_require(expr: str, cuda: str | None, driver: str | None, arch: str | None = None,
                     brand: str | None = None) -> RequireResult:
    """Evaluate an NVIDIA_REQUIRE_* expression against the host's values (None: unknown, which
    leaves the predicates on it undecided). Every term is evaluated, for the explanation."""
    host = {"cuda": cuda, "driver": driver, "arch": arch, "brand": brand}
    terms: list[TermResult] = []
    for term in expr.split():
        preds = tuple(_predicate(p, host) for p in term.split(",") if p)
        if preds:
            terms.append(TermResult(term, preds, _all([p.result for p in preds])))
    if not terms:
        return RequireResult(expr, (), True)
    satisfied = _any([t.result for t in terms])
    invalid = None
    if satisfied is not True:
        bad = [p for t in terms for p in t.predicates if p.error]
        if bad:
            invalid = f"{bad[0].text}: {bad[0].error}"
    return RequireResult(expr, tuple(terms), satisfied, invalid)
