"""The planner's part of a provenance record: everything known before the app starts, as one
JSON object that the launch record carries (the executor adds the run's own part)."""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from shim.provenance import SCHEMA


@dataclass(frozen=True)
class FactsInput:
    image: object                 # shim.image.open.ImageRef
    given: str                    # the image as the command line named it
    plan: object                  # shim.plan.model.Plan
    site_path: str                # the shim.toml used
    command: tuple[str, ...]      # the app and its arguments as planned
    signatures: dict | None       # shim.verify's report (to_json), None for an image without signatures
    policy: dict | None           # the site's image policy verdict, None when the site has none
    host_root: str
    environ: Mapping[str, str]


def planned_facts(i: FactsInput) -> dict:
    from shim import __version__, native
    from shim.image.open import image_kind
    from shim.provenance.host import host_facts
    from shim.provenance.image import image_facts
    from shim.provenance.libraries import library_facts

    plan = i.plan
    image = image_facts(i.image.path, i.given, i.image.arch, image_kind(i.image), i.image.via)
    image["signatures"] = i.signatures
    return {
        "schema": SCHEMA,
        "shim": {"version": __version__, "build": native.build_id()},
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "image": image,
        "command": list(i.command),
        "plan": {"profiles": list(plan.profiles), "decisions": library_facts(plan.decisions, i.host_root),
                 "diagnostics": [asdict(d) for d in plan.diagnostics], "binds": [asdict(b) for b in plan.binds],
                 "env": [asdict(e) for e in plan.env]},
        "host": host_facts(i.host_root, i.environ),
        "site": {"config": i.site_path, "image_policy": i.policy},
    }


def facts_json(facts: dict) -> str:
    """Compact, one line, ASCII: the record carries it as a NUL-terminated string."""
    return json.dumps(facts, separators=(",", ":"), sort_keys=False, ensure_ascii=True)
