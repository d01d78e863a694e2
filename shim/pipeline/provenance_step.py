"""Step 7 of planning (with --provenance or a site's [provenance]): where the records go, and the
facts a record names — the image's digests, the signature verdicts, the plan, the host."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from shim.errors import ShimError
from shim.image.open import ImageRef, image_kind
from shim.plan.model import Plan
from shim.record.format import PROV
from shim.record.model import Input
from shim.site.config import SiteConfig

if TYPE_CHECKING:
    from shim.site.image_policy import PolicyVerdict


class FactsRequest(NamedTuple):
    image: ImageRef
    given: str                      # the image as the command line named it
    command: tuple[str, ...]        # the app as planned
    site: SiteConfig
    conf_dir: Path
    verdict: PolicyVerdict | None   # the site's image policy's verdict (None: no policy)
    host_root: str
    environ: Mapping[str, str]


class Facts(NamedTuple):
    facts: dict
    inputs: tuple[Input, ...]       # the keys a signature check without a policy read


def targets(given: str | None, cwd: str, site: SiteConfig) -> tuple[tuple[int, str], ...]:
    # DIR/ names a directory (the executor writes one file per run into it): the slash is kept,
    # so that a missing one is named as the directory that is missing, not as a file in its parent.
    where = os.path.normpath(os.path.join(cwd, given)) if given else ""
    out = [(PROV["USER"], where + ("/" if given.endswith("/") and where != "/" else ""))] if given else []
    out += [(PROV["SITE"], site_dir) for site_dir in site.provenance_dirs]
    return tuple(out)


def _signatures(req: FactsRequest) -> tuple[dict | None, tuple[Input, ...]]:
    """The signature verdicts a record names: the policy's, or a check with every key the user and
    the site trust (reported, never refusing)."""
    if req.verdict is not None and req.verdict.report is not None:
        return req.verdict.report.to_json(), ()
    if image_kind(req.image) != "sif":
        return None, ()
    # Imported only for a SIF's record: signature checking costs ~25 ms to import.
    from shim.site.image_policy import key_inputs
    from shim.verify import trusted_keys, verify_file

    inputs = tuple(key_inputs(req.conf_dir, req.environ, include_user=True))
    try:
        with req.image.opened.reader() as f:
            keys = trusted_keys(req.conf_dir, req.environ, include_user=True)
            return verify_file(f, req.image.path, keys).to_json(), inputs
    except ShimError as e:
        return {"error": str(e)}, inputs


def facts(req: FactsRequest, plan: Plan) -> Facts:
    from shim.provenance.facts import FactsInput, planned_facts  # only with a provenance record

    signatures, inputs = _signatures(req)
    verdict = req.verdict
    found = planned_facts(FactsInput(image=req.image, given=req.given, plan=plan, site_path=req.site.path,
                                     command=req.command, signatures=signatures,
                                     policy=verdict.to_json() if verdict is not None else None,
                                     host_root=req.host_root, environ=req.environ))
    return Facts(found, inputs)
