"""The site's image policy ([images] in shim.toml): which images may run, decided before anything
is mounted. Each rule that refuses says which rule and why, in one line (exit 79). The launch
record caches the verdict with the image's identity, the configuration and the site's keys as
its inputs: a changed image, policy or key is a new verdict; a warm launch checks no signature."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shim.errors import ExitCode, ShimError
from shim.site.config import ImagePolicy


@dataclass(frozen=True)
class PolicyVerdict:
    allowed: bool
    rule: str = ""                # the [images] key that refused it
    why: str = ""
    hint: str = ""
    report: object | None = None  # shim.verify's VerifyReport, when signatures were checked

    def error(self, image: str) -> ShimError:
        return ShimError(ExitCode.UNTRUSTED, f"the site's image policy does not allow {image}: images.{self.rule}: "
                         f"{self.why}", self.hint)

    def to_json(self) -> dict:
        return {"allowed": self.allowed, "rule": self.rule or None, "why": self.why or None}


@dataclass(frozen=True)
class PolicyInput:
    path: str                     # the image, resolved
    kind: str                     # sif | squashfs | dir
    arch: str                     # the image's architecture ("unknown" when it does not say)
    conf_dir: Path
    environ: Mapping[str, str]


_ADMIN = "ask the site's administrators (their shim.toml, [images])"


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def _signatures(policy: ImagePolicy, i: PolicyInput) -> PolicyVerdict:
    from shim.verify import VerifyOptions, trusted_keys, verify_image

    keys = trusted_keys(i.conf_dir, i.environ, include_user=False)
    # with legacy signatures allowed, still every object of a group (not only the partition, as
    # Apptainer's --legacy-insecure alone checks): a site's policy covers what the image carries
    legacy = policy.allow_legacy_signatures
    report = verify_image(i.path, keys, VerifyOptions(legacy_insecure=legacy, all_objects=legacy))
    if not report.ok:
        return PolicyVerdict(False, "allow_unsigned", f"it must carry a valid signature from a key the site trusts "
                             f"({i.conf_dir / 'keys'}): {report.reason()}",
                             f"shimrun verify {i.path} shows each signature; {_ADMIN}", report)
    if policy.signers and not set(report.signers()) & set(policy.signers):
        return PolicyVerdict(False, "signers", f"it is signed by {', '.join(report.signers())}, none of the site's "
                             f"signers ({', '.join(policy.signers)})", _ADMIN, report)
    return PolicyVerdict(True, report=report)


def evaluate(policy: ImagePolicy, i: PolicyInput) -> PolicyVerdict:
    """The first rule that refuses the image, or allowed."""
    from shim.image.arch import host_arch

    if policy.paths and not _under(i.path, policy.paths):
        return PolicyVerdict(False, "paths", f"it is not under {', '.join(policy.paths)}",
                             f"use an image from there; {_ADMIN}")
    if i.kind != "sif" and not policy.allow_directories:
        what = "a directory (sandbox)" if i.kind == "dir" else "a bare squashfs file"
        return PolicyVerdict(False, "allow_directories", f"it is {what}; only SIF images may run here",
                             "build a SIF of it: shimrun build OUT.sif " + i.path)
    if i.arch not in ("unknown", host_arch()) and not policy.allow_foreign_arch:
        return PolicyVerdict(False, "allow_foreign_arch", f"it is an {i.arch} image and this node is {host_arch()}: "
                             "emulated images may not run here", f"use an {host_arch()} build of the image")
    if policy.needs_signature:
        if i.kind != "sif":
            what = "a directory" if i.kind == "dir" else "a bare squashfs file"
            return PolicyVerdict(False, "allow_unsigned", f"it is {what}, which carries no signature; this site runs "
                                 "only signed SIFs",
                                 "build a SIF (shimrun build) and sign it (shimrun sign)")
        return _signatures(policy, i)
    return PolicyVerdict(True)


def policy_inputs(i: PolicyInput) -> list:
    """What a cached verdict depends on besides the image and shim.toml: the site's key files."""
    return key_inputs(i.conf_dir, i.environ, include_user=False)


def key_inputs(conf_dir: Path, environ: Mapping[str, str], *, include_user: bool) -> list:
    """The launch record's inputs for the trusted keys: each key directory's listing (a new key
    is a new verdict) and each key file."""
    from shim.record.format import CHECK, IDENTITY
    from shim.record.snapshot import file_input, glob_input
    from shim.verify import key_files

    out = []
    for path in key_files(conf_dir, environ, include_user=include_user):
        if os.path.isdir(path) or not os.path.exists(path):
            out.append(glob_input(os.path.join(path, "*")))
            out.append(file_input(path, CHECK["EXISTS"] | CHECK["TYPE"]))
        else:
            out.append(file_input(path, IDENTITY | CHECK["FOLLOW"]))
    return out
