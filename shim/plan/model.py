"""The plan as data: every decision and diagnostic with a reason a user can act on.

`shimrun check --json` prints Plan.to_dict(); its keys are a stable interface (README, "check")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from shim.model import ERROR, REFUSE, WARNING, Decision, Diagnostic, EnvEdit


@dataclass(frozen=True)
class BindSpec:
    src: str
    dst: str
    read_only: bool = True
    device: bool = False  # device nodes stay usable (nosuid only)


@dataclass
class Plan:
    image: str
    profiles: list[str] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    binds: list[BindSpec] = field(default_factory=list)
    env: list[EnvEdit] = field(default_factory=list)   # the profiles' edits, in profile order
    links: list[tuple[str, str]] = field(default_factory=list)   # (target, path): CDI create-symlinks hooks

    def refusals(self) -> list[Decision]:
        return [d for d in self.decisions if d.decision == REFUSE]

    def has_warnings(self) -> bool:
        return any(d.severity == WARNING for d in self.diagnostics)

    def has_errors(self) -> bool:
        return any(d.severity == ERROR for d in self.diagnostics)

    def to_dict(self) -> dict:
        return {
            "image": self.image,
            "profiles": list(self.profiles),
            "decisions": [asdict(d) for d in self.decisions],
            "diagnostics": [asdict(d) for d in self.diagnostics],
            "binds": [asdict(b) for b in self.binds],
            "env": [asdict(e) for e in self.env],
            "links": [list(link) for link in self.links],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(image=data["image"], profiles=list(data.get("profiles", [])),
                   decisions=[Decision(**d) for d in data.get("decisions", [])],
                   diagnostics=[Diagnostic(**d) for d in data.get("diagnostics", [])],
                   binds=[BindSpec(**b) for b in data.get("binds", [])],
                   env=[EnvEdit(**e) for e in data.get("env", [])],
                   links=[(t, p) for t, p in data.get("links", [])])
