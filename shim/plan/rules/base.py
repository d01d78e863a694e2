"""What a kind of profile adds to the generic planner (core.py): hooks called at fixed points,
each a no-op here. A rule keeps its findings in job.state and refuses through job.refuse."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from shim.plan.job import OfferedLib, ProfileJob


class Rule:
    kind: ClassVar[str] = ""
    symbols_code: ClassVar[str] = "SYMBOLS-MISSING"   # the code of a symbol-coverage refusal

    def start(self, job: ProfileJob) -> None:
        """Before any library: checks of the profile as a whole (may refuse)."""

    def take(self, job: ProfileJob, lib: OfferedLib) -> bool:
        """True when the rule decided about `lib` itself."""
        return False

    def without_target(self, job: ProfileJob, lib: OfferedLib, names: Sequence[str]) -> str:
        """The image has none of `names`: why `lib` is injected anyway (it is dlopened), or ""
        to skip it as unused. May refuse instead."""
        return ""

    def unused(self, job: ProfileJob, lib: OfferedLib, names: Sequence[str]) -> str:
        return f"nothing in the image uses {' or '.join(names)}"

    def check_target(self, job: ProfileJob, lib: OfferedLib, name: str, target: str) -> bool:
        """May `lib` stand in for the image's `target` (found for `name`)? False: refused."""
        return True

    def note(self, job: ProfileJob, lib: OfferedLib) -> str:
        """Text added to an inject decision's reason."""
        return ""

    def finish(self, job: ProfileJob) -> None:
        """After every library, when nothing was refused (may refuse)."""
