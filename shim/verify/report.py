"""Verdicts: one per signature object, and one for the image; as lines and as JSON
(schema "shim-verify/1": add keys, never change the meaning of one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA = "shim-verify/1"
PGP, DSSE, LEGACY_PGP, UNKNOWN = "pgp", "dsse", "legacy-pgp", "unknown"
LEGACY_NOTE = "legacy signatures cover object data only, not the header or descriptors"


@dataclass(frozen=True)
class SignatureVerdict:
    id: int                        # the signature's object ID
    kind: str                      # PGP, DSSE, LEGACY_PGP or UNKNOWN
    target: str                    # what it is linked to: "group 1", "object 2"
    signers: tuple[str, ...]       # valid: the keys that verified it (PGP primary fingerprint, DSSE
                                   # keyids); otherwise the keys it names, where it names any
    covers: tuple[int, ...]        # the objects of the image it signs
    valid: bool
    reason: str = ""               # why it is not valid
    counts: bool = True            # whether a valid one makes objects verified (legacy: --legacy-insecure)
    digests_match: bool | None = None  # the signed digests match the image; None: not checked

    def line(self) -> str:
        covers = " ".join(map(str, self.covers))
        head = f"signature {self.id} ({self.kind}, {self.target}" + (f", objects {covers})" if covers else ")")
        who = ", ".join(self.signers)
        if self.valid:
            text = f"{head}: valid, signed by {who}"
            return text if self.counts else f"{text}; not counted without --legacy-insecure: {LEGACY_NOTE}"
        text = f"{head}: not valid: {self.reason}"
        if self.digests_match and self.reason.startswith("signed by unknown key"):
            text += " (the digests it signs match the image)"
        elif who and not self.reason.startswith("signed by unknown key"):
            text += f" (signer {who})"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "target": self.target, "signers": list(self.signers),
                "objects": list(self.covers), "valid": self.valid, "reason": self.reason, "counts": self.counts,
                "digests_match": self.digests_match}


@dataclass(frozen=True)
class VerifyReport:
    image: str
    ok: bool                                   # every object that must be is covered by a valid,
                                               # counted signature from a trusted key
    signatures: tuple[SignatureVerdict, ...]
    problems: tuple[str, ...] = ()             # why not ok, one per uncovered group/object
    checked: tuple[str, ...] = ()              # what had to be covered: "group 1", "object 2"
    legacy_insecure: bool = False

    def signers(self) -> tuple[str, ...]:
        """The keys of the valid signatures that count, sorted, each once."""
        return tuple(sorted({s for v in self.signatures if v.valid and v.counts for s in v.signers}))

    def reason(self) -> str:
        return "" if self.ok else (self.problems[0] if self.problems else "not verified")

    def verdict_line(self) -> str:
        if self.ok:
            what = ", ".join(self.checked)
            line = f"verified: {what} of {self.image} signed by {', '.join(self.signers())}"
            legacy = any(v.valid and v.counts and v.kind == LEGACY_PGP for v in self.signatures)
            return f"{line} ({LEGACY_NOTE})" if legacy else line
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"not verified: {self.reason()}{more}"

    def lines(self) -> list[str]:
        return [v.line() for v in self.signatures] + [self.verdict_line()]

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "image": self.image, "ok": self.ok, "reason": self.reason(),
                "problems": list(self.problems), "checked": list(self.checked), "signers": list(self.signers()),
                "legacy_insecure": self.legacy_insecure, "signatures": [v.to_json() for v in self.signatures]}
