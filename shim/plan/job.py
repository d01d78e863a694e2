"""One profile being planned: what it offers, what it would do, and its refusals, collected
before the profile is accepted or refused as a whole (never a half-injected stack)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from shim.elf.facts import ElfFacts
from shim.model import INJECT, REFUSE, SKIP, WARNING, Decision, Diagnostic
from shim.plan.context import PlanContext
from shim.plan.model import BindSpec
from shim.site.profile_model import Profile

INJECT_DIR = "/.shim/inject"  # injected host libraries: one directory per profile


@dataclass(frozen=True)
class OfferedLib:
    """One host library a profile offers (one per file, however many names matched it)."""

    host_path: str            # in host terms, as the profile named it
    entry: str                # the profile entry that named it, for the admin hint
    facts: ElfFacts | None    # None: not an ELF file
    soname: str               # its DT_SONAME, else its file name
    table: str = "provides.libraries"   # the profile's key that named it, for the admin hint


@dataclass
class Work:
    decisions: list[Decision] = field(default_factory=list)
    binds: list[BindSpec] = field(default_factory=list)
    refusals: list[Diagnostic] = field(default_factory=list)
    cache: dict[str, str] = field(default_factory=dict)      # SONAME -> container path, for ld.so.cache
    injected: dict[str, str] = field(default_factory=dict)   # container path placed -> host file
    # Refusals of one program each (programs.py): the program is not bound, the profile stands.
    withheld: list[Diagnostic] = field(default_factory=list)


@dataclass
class ProfileJob:
    ctx: PlanContext
    profile: Profile
    requested: bool                          # asked for by name (--profile)
    libs: list[OfferedLib] = field(default_factory=list)
    work: Work = field(default_factory=Work)
    state: Any = None                        # the kind's rule keeps its own findings here
    fallback: str = "the image's own libraries are used"   # what happens instead, said by a refusal

    def offered(self, soname: str) -> OfferedLib | None:
        """The profile's own library of that SONAME, if it offers one."""
        return next((lib for lib in self.libs if lib.soname == soname and lib.facts is not None), None)

    @property
    def placed_dir(self) -> str:
        return f"{INJECT_DIR}/{self.profile.name}"

    def placed_at(self, lib: OfferedLib) -> str:
        """Where the library goes in the container: its own directory of the profile's, or where
        a CDI spec's mount says (its containerPath)."""
        return dict(self.profile.placed).get(lib.host_path) or f"{self.placed_dir}/{os.path.basename(lib.host_path)}"

    def key(self, lib: OfferedLib | None = None, table: str = "") -> str:
        """Where the admin fixes it: the profile file and key (and entry)."""
        table = table or (lib.table if lib else "provides.libraries")
        return f"{self.profile.file}: {table}" + (f" ({lib.entry})" if lib else "")

    def decide(self, name: str, lib: OfferedLib | str, where: str, decision: tuple[str, str]) -> None:
        """decision: (INJECT or SKIP, reason)."""
        host_path = lib.host_path if isinstance(lib, OfferedLib) else lib
        self.work.decisions.append(Decision(name, host_path, where, decision[0], decision[1], self.profile.name))

    def skip(self, name: str, lib: OfferedLib | str, where: str, reason: str) -> None:
        self.decide(name, lib, where, (SKIP, reason))

    def inject(self, name: str, lib: OfferedLib | str, where: str, reason: str) -> None:
        self.decide(name, lib, where, (INJECT, reason))

    def refuse(self, code: str, subject: tuple[str, str, str], message: str, hint: str, key: str = "") -> None:
        """subject: (library, host path, container path) the refusal is about."""
        library, host_path, where = subject
        self.work.decisions.append(Decision(library, host_path, where, REFUSE, f"{code}: {message}",
                                            self.profile.name))
        self.work.refusals.append(Diagnostic(code, WARNING, message, f"{hint}; {self.fallback}",
                                             key or self.key()))

    @property
    def refused(self) -> bool:
        return bool(self.work.refusals)


def subject(lib: OfferedLib, where: str = "") -> tuple[str, str, str]:
    return lib.soname, lib.host_path, where
