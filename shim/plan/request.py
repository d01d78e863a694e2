"""What the planner is asked: everything a plan is computed from, as one value."""

from __future__ import annotations

from dataclasses import dataclass, field

from shim.host.model import HostView
from shim.model import WARNING
from shim.site.profile_model import ProfileSet


@dataclass(frozen=True)
class PlanRequest:
    root: str                                  # where this process sees the image's root (mounted)
    image: str                                 # the image's path, for the plan and the cache key
    profiles: ProfileSet | None                # None: the site has no profiles
    requested: tuple[str, ...] = ()            # --profile NAME...
    no_profiles: bool = False
    command: tuple[str, ...] = ()              # the app (its first word is what is analysed)
    path: str = ""                             # the container PATH the app is looked up in
    host: HostView = field(default_factory=HostView)
    refusal_severity: str = WARNING            # what a refusal becomes (the site's policy.refusal)
    image_dir: str = ""                        # a directory image's own path: what it read is revalidated

    @property
    def app(self) -> str | None:
        return self.command[0] if self.command else None
