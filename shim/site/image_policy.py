"""The site's image policy ([images] in shim.toml): which images may run, decided before anything
is mounted, on the image as it was opened once (shim.image.handle): where it lies is read from
its descriptor, its signatures are checked on the bytes read through it, and the executor mounts
that same descriptor. Each rule that refuses says which rule and why, in one line (exit 79).

Several [images] tables may apply (the system directory's, and one a user names with --conf or
SHIMRUN_CONF): the image must pass each, checked with that directory's own keys. The launch
record caches the verdict with the image's identity, the configurations and the keys as its
inputs: a changed image, policy or key is a new verdict; a warm launch checks no signature but
runs only on the very file the verdict was for (IMAGE_FILE)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shim.errors import ExitCode, ShimError
from shim.image.handle import OpenedImage, others_can_write
from shim.site.config import ImagePolicy, SiteConfig

if TYPE_CHECKING:
    from shim.image.open import ImageRef


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
    path: str                     # the image, resolved (from its descriptor)
    kind: str                     # sif | squashfs | simg | dir (shim.image.open.image_kind)
    arch: str                     # the image's architecture ("unknown" when it does not say)
    conf_dir: Path                # whose keys/ the signatures are checked with
    environ: Mapping[str, str]
    opened: OpenedImage | None = None   # the image's descriptor: what is read, judged and mounted


_ADMIN = "ask the site's administrators (their shim.toml, [images])"
# A legacy Singularity 2 image is a bare squashfs behind a launch line: judged exactly as one
# (no signature, not a SIF), only named for what the user gave.
_NOT_SIF = {"squashfs": "a bare squashfs file", "simg": "a legacy Singularity 2 image (a bare squashfs file)"}


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def _signatures(policy: ImagePolicy, i: PolicyInput) -> PolicyVerdict:
    from shim.verify import VerifyOptions, trusted_keys, verify_file, verify_image

    keys = trusted_keys(i.conf_dir, i.environ, include_user=False)
    # with legacy signatures allowed, still every object of a group (not only the partition, as
    # Apptainer's --legacy-insecure alone checks): a site's policy covers what the image carries
    legacy = policy.allow_legacy_signatures
    options = VerifyOptions(legacy_insecure=legacy, all_objects=legacy)
    if i.opened is None:
        report = verify_image(i.path, keys, options)
    else:
        with i.opened.reader() as f:
            report = verify_file(f, i.path, keys, options)
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
        what = "a directory (sandbox)" if i.kind == "dir" else _NOT_SIF.get(i.kind, "a bare squashfs file")
        return PolicyVerdict(False, "allow_directories", f"it is {what}; only SIF images may run here",
                             "build a SIF of it: shimrun build OUT.sif " + i.path)
    if i.arch not in ("unknown", host_arch()) and not policy.allow_foreign_arch:
        return PolicyVerdict(False, "allow_foreign_arch", f"it is an {i.arch} image and this node is {host_arch()}: "
                             "emulated images may not run here", f"use an {host_arch()} build of the image")
    if policy.needs_signature:
        if i.kind != "sif":
            what = "a directory" if i.kind == "dir" else _NOT_SIF.get(i.kind, "a bare squashfs file")
            return PolicyVerdict(False, "allow_unsigned", f"it is {what}, which carries no signature; this site runs "
                                 "only signed SIFs",
                                 "build a SIF (shimrun build) and sign it (shimrun sign)")
        writable = _writable(policy, i)
        return writable if writable is not None else _signatures(policy, i)
    return PolicyVerdict(True)


def _writable(policy: ImagePolicy, i: PolicyInput) -> PolicyVerdict | None:
    """A refusal when someone besides the user (or root) could rewrite the signed file in place."""
    if policy.allow_writable or i.opened is None:
        return None
    why = others_can_write(i.opened, os.getuid())
    if not why:
        return None
    return PolicyVerdict(False, "allow_writable", f"{why}: a signature does not protect a file another user can "
                         "rewrite after it was checked",
                         f"copy it to a file only you can write (cp {i.path} ~/…; chmod go-w), or {_ADMIN}")


def evaluate_all(site: SiteConfig, image: ImageRef, environ: Mapping[str, str]) -> PolicyVerdict | None:
    """Every [images] that applies, in order; the first refusal, else the last verdict (the one
    that checked signatures, if any did). None when no table restricts anything."""
    from shim.image.open import image_kind

    verdict = None
    for layer in site.policies:
        if not layer.images.restricts:
            continue
        given = PolicyInput(image.path, image_kind(image), image.arch, layer.conf_dir, environ, image.opened)
        verdict = evaluate(layer.images, given)
        if not verdict.allowed:
            return verdict
    return verdict


def site_policy_inputs(site: SiteConfig, environ: Mapping[str, str]) -> list:
    """The key files of every directory whose [images] applies."""
    return [i for layer in site.policies if layer.images.restricts
            for i in key_inputs(layer.conf_dir, environ, include_user=False)]


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
