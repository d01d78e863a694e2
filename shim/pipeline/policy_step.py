"""Step 3 of planning: the site's image policy on the opened image, before anything is mounted;
a refused image gets a record that only refuses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from shim import native
from shim.errors import ShimError
from shim.image.open import ImageRef
from shim.pipeline.stage import STAGE_DIR
from shim.record.format import IMG
from shim.record.model import EnvRules, Image, Input, LaunchRecord
from shim.site.config import SiteConfig

if TYPE_CHECKING:
    from shim.site.image_policy import PolicyVerdict


class Judgement(NamedTuple):
    verdict: PolicyVerdict | None   # None: the site has no image policy
    inputs: tuple[Input, ...]       # what the verdict rests on (keys, the policy's files)


def judge(site: SiteConfig, image: ImageRef, environ: Mapping[str, str]) -> Judgement:
    """Every [images] that applies, on the opened image."""
    if not site.images_restricted:
        return Judgement(None, ())
    # Imported only under a policy: signature checking (cryptography, OpenPGP) costs ~25 ms to import.
    from shim.site.image_policy import evaluate_all, site_policy_inputs

    inputs = tuple(site_policy_inputs(site, environ))
    return Judgement(evaluate_all(site, image, environ), inputs)


def refusal_record(image: ImageRef, error: ShimError, key: str, inputs: tuple[Input, ...]) -> LaunchRecord:
    """A record that only refuses: cached like any, so a warm launch of a refused image is refused
    again without a look at its signatures, and nothing is mounted."""
    code = int(error.code)
    return LaunchRecord(version=native.build_id(), key=key, image=Image(IMG["DIR"], image.path), stage=STAGE_DIR,
                        command="true", env=EnvRules((), ()), refuse=(code, str(error)), inputs=inputs,
                        image_file=image.opened.identity())
