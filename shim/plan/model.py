"""The plan as data: every decision and diagnostic with a reason a user can act on.

`shimrun check --json` prints Plan.to_dict(); its keys are a stable interface (README, "check")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

INJECT, SKIP, REFUSE = "inject", "skip", "refuse"
ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Decision:
    library: str          # the name the container asks for (SONAME), or the file name
    host_path: str
    container_path: str   # where it is placed ("" when not injected)
    decision: str         # inject | skip | refuse
    reason: str
    profile: str = ""


@dataclass(frozen=True)
class Diagnostic:
    code: str             # stable, e.g. MPI-ABI-MISMATCH, GLIBC-TOO-OLD
    severity: str         # error | warning | info
    message: str          # what was checked, with the values on both sides
    hint: str = ""        # for the user
    admin_hint: str = ""  # for the sysadmin (profile file and key)


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
    env_set: dict[str, str] = field(default_factory=dict)
    env_prepend: dict[str, str] = field(default_factory=dict)
    env_append: dict[str, str] = field(default_factory=dict)
    env_unset: list[str] = field(default_factory=list)

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
            "env": {"set": self.env_set, "prepend": self.env_prepend, "append": self.env_append,
                    "unset": self.env_unset},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        env = data.get("env", {})
        return cls(image=data["image"], profiles=list(data.get("profiles", [])),
                   decisions=[Decision(**d) for d in data.get("decisions", [])],
                   diagnostics=[Diagnostic(**d) for d in data.get("diagnostics", [])],
                   binds=[BindSpec(**b) for b in data.get("binds", [])],
                   env_set=dict(env.get("set", {})), env_prepend=dict(env.get("prepend", {})),
                   env_append=dict(env.get("append", {})), env_unset=list(env.get("unset", [])))
