"""verify_image: every signature object of a SIF checked against the image's bytes, then whether
what must be covered (select.py) is covered by valid signatures that count.

In three steps, so that object data is read once: decode each signature (gpg / DSSE: is it
good, by which key, what does it sign), plan the digests it needs, hash all of them in one pass
over the objects (integrity.hash_streams), then judge each signature and the image.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import BinaryIO

from shim.errors import ImageError, UsageError
from shim.image.regular import open_regular
from shim.image.sif import SifDescriptor, SifImage, object_chunks, read_sif_file
from shim.verify import report as rp
from shim.verify.dsse import EnvelopeError, parse_envelope, verify_envelope
from shim.verify.integrity import SIF_HASH_TYPES, Stream, hash_streams, new_hash
from shim.verify.keys import PemKey, TrustedKeys, load_public_key
from shim.verify.metadata import GroupView, ImageMetadata, MetadataError, check_metadata, object_streams, parse_metadata
from shim.verify.pgp import GpgVerifier
from shim.verify.select import (
    LEGACY_PREFIX,
    VerifyOptions,
    group_views,
    is_clearsigned,
    is_legacy_plaintext,
    requirements,
    signature_descriptors,
    unmet,
)

MAX_SIGNATURE = 16 << 20   # Apptainer's are about 1-2 KiB
UNKNOWN_KEY = "signed by unknown key"
_HEX = re.compile(rb"[0-9a-fA-F]+")


@dataclass(frozen=True)
class Decoded:
    """A signature object after its cryptographic check."""

    desc: SifDescriptor
    kind: str
    reason: str                  # why the signature is not good by a trusted key; "" when it is
    signers: tuple[str, ...]
    payload: bytes | None        # what it signs; None where that cannot be believed at all

    @property
    def target(self) -> str:
        link = self.desc.link
        return f"{link[0]} {link[1]}" if link else "nothing"


def _entity(d: SifDescriptor) -> str:
    return d.entity or ""


def _decode_pgp(d: SifDescriptor, blob: bytes, gpg: GpgVerifier) -> Decoded:
    r = gpg.verify(blob)
    kind = rp.LEGACY_PGP if is_legacy_plaintext(r.plaintext) else rp.PGP
    entity = _entity(d)
    if r.ok:
        # The descriptor's Entity must be the signer's primary key (Go: errFingerprintMismatch).
        reason = "" if r.primary == entity else (f"the descriptor names signer {entity or '(none)'} but "
                                                  f"{r.primary} signed it")
        return Decoded(d, kind, reason, (r.primary,), r.plaintext)
    # A legacy signature names only a key id: the descriptor's fingerprint says more, if it agrees.
    claimed = entity if entity and r.issuer and entity.endswith(r.issuer.upper()) else r.issuer
    reason = f"{UNKNOWN_KEY} {claimed}" if r.reason.startswith(UNKNOWN_KEY) else r.reason
    signers = (r.primary,) if r.primary else ((claimed,) if claimed else ())
    return Decoded(d, kind, reason, signers, None if reason.startswith("bad signature") else r.plaintext)


def _decode_dsse(d: SifDescriptor, blob: bytes, keys: Sequence[PemKey]) -> Decoded:
    try:
        env = parse_envelope(blob)
    except EnvelopeError as e:
        return Decoded(d, rp.DSSE, f"bad signature: {e}", (), None)
    r = verify_envelope(env, keys)
    signers = r.verified or tuple(k for k in r.claimed if k)
    return Decoded(d, rp.DSSE, r.reason(), signers, env.payload if r.ok or not r.tried else None)


# ---- what each signature signs, and its verdict once the digests are known ---------------

@dataclass(frozen=True)
class ModernPlan:
    dec: Decoded
    img: SifImage
    view: GroupView | None       # the group it is linked to; None: not linked to a group
    exact: bool                  # the signed objects must be the group's objects (not with --id)
    counts: bool

    @cached_property
    def _metadata(self) -> tuple[ImageMetadata | None, str]:
        if self.view is None:
            return None, f"a modern signature must be linked to a group, this one to {self.dec.target}"
        if self.dec.payload is None:
            return None, ""
        try:
            return parse_metadata(self.dec.payload), ""
        except MetadataError as e:
            return None, f"bad signature metadata: {e}"

    def streams(self) -> list[Stream]:
        md, _ = self._metadata
        return object_streams(md, self.view) if md and self.view else []

    def verdict(self, digests: Mapping[Stream, bytes]) -> rp.SignatureVerdict:
        md, md_error = self._metadata
        problems = [p for p in (self.dec.reason, md_error) if p]
        covers: tuple[int, ...] = ()
        match = None
        if md is not None and self.view is not None:
            found = check_metadata(md, self.img, self.view, digests)
            covers, match = found.covered, not found.changed and not found.missing
            if not self.dec.reason:
                problems += found.problems(self.exact)
        return rp.SignatureVerdict(self.dec.desc.id, self.dec.kind, self.dec.target, self.dec.signers, covers,
                                   not problems, "; ".join(problems), self.counts, match)


@dataclass(frozen=True)
class LegacyPlan:
    dec: Decoded
    objects: tuple[int, ...]     # the objects whose data it signs, concatenated in table order
    algorithm: str
    expected: bytes | None
    error: str                   # why it cannot be checked ("" when it can)
    counts: bool

    def streams(self) -> list[Stream]:
        return [Stream(self.algorithm, self.objects)] if self.expected is not None and not self.error else []

    def verdict(self, digests: Mapping[Stream, bytes]) -> rp.SignatureVerdict:
        problems = [p for p in (self.dec.reason, self.error) if p]
        match = None
        if self.expected is not None and not self.error:
            match = digests[Stream(self.algorithm, self.objects)] == self.expected
            if not match and not self.dec.reason:
                what = "object" if len(self.objects) == 1 else "objects"
                problems.append(f"{what} {' '.join(map(str, self.objects))} changed after signing")
        return rp.SignatureVerdict(self.dec.desc.id, self.dec.kind, self.dec.target, self.dec.signers,
                                   self.objects if not self.error else (), not problems, "; ".join(problems),
                                   self.counts, match)


@dataclass(frozen=True)
class FixedPlan:
    fixed: rp.SignatureVerdict

    def streams(self) -> list[Stream]:
        return []

    def verdict(self, _digests: Mapping[Stream, bytes]) -> rp.SignatureVerdict:
        return self.fixed


Plan = ModernPlan | LegacyPlan | FixedPlan


def _legacy_digest(plaintext: bytes, hash_type: int) -> tuple[str, bytes]:
    """"SIFHASH:\\n<hex>" and the descriptor's HashType -> (algorithm, digest). ValueError if malformed."""
    algorithm = SIF_HASH_TYPES.get(hash_type)
    if algorithm is None:
        raise ValueError(f"unknown hash type {hash_type} in the signature descriptor")
    text = plaintext[len(LEGACY_PREFIX):].rstrip(b"\r\n")
    if not _HEX.fullmatch(text) or len(text) != 2 * new_hash(algorithm).digest_size:
        raise ValueError(f"the legacy signature does not hold a {algorithm} digest")
    return algorithm, bytes.fromhex(text.decode())


def _legacy_plan(dec: Decoded, img: SifImage, views: Mapping[int, GroupView], counts: bool) -> LegacyPlan:
    link = dec.desc.link
    objects: tuple[int, ...] = ()
    error = ""
    if link and link[0] == "object":
        objects = (link[1],) if img.descriptor(link[1]) else ()
        error = "" if objects else f"it is linked to object {link[1]}, which the image does not have"
    elif link and link[0] == "group" and link[1] in views:
        objects = tuple(d.id for d in views[link[1]].members)
    else:
        error = f"it is linked to {dec.target}, which the image does not have"
    algorithm, expected = "sha256", None
    if dec.payload is not None and not error:
        try:
            algorithm, expected = _legacy_digest(dec.payload, struct.unpack_from("<i", dec.desc.extra)[0])
        except ValueError as e:
            error = str(e)
    return LegacyPlan(dec, objects, algorithm, expected, error, counts)


def _plan(dec: Decoded, img: SifImage, views: Mapping[int, GroupView], options: VerifyOptions) -> Plan:
    if dec.kind == rp.LEGACY_PGP:
        return _legacy_plan(dec, img, views, options.legacy_insecure)
    if dec.kind in (rp.PGP, rp.DSSE):
        link = dec.desc.link
        view = views.get(link[1], GroupView(link[1], (), 0)) if link and link[0] == "group" else None
        return ModernPlan(dec, img, view, options.object_id is None, True)
    return FixedPlan(rp.SignatureVerdict(dec.desc.id, dec.kind, dec.target, (), (), False, dec.reason))


# ---- the image --------------------------------------------------------------------------

def _check_options(options: VerifyOptions) -> None:
    chosen = [options.group is not None, options.object_id is not None, options.all_objects]
    if sum(chosen) > 1:
        raise UsageError("choose one of --group, --id and --all")
    for value in (options.group, options.object_id):
        if value is not None and not 0 < value < 1 << 28:
            raise UsageError(f"object and group numbers are from 1 to {(1 << 28) - 1}, not {value}")


def _check_ids(img: SifImage) -> None:
    seen: set[int] = set()
    for d in img.descriptors:
        if d.id in seen:
            raise ImageError(f"{img.path}: corrupt SIF: two objects have ID {d.id}",
                             "the image is corrupt: copy or rebuild it")
        seen.add(d.id)


def _signature_data(f: BinaryIO, img: SifImage, d: SifDescriptor) -> bytes | None:
    return b"".join(object_chunks(f, img, d)) if d.size <= MAX_SIGNATURE else None


def _decode_all(f: BinaryIO, img: SifImage, keys: TrustedKeys, pem: Sequence[PemKey]) -> list[Decoded]:
    blobs = [(d, _signature_data(f, img, d)) for d in signature_descriptors(img)]
    pgp = [(d, b) for d, b in blobs if b is not None and is_clearsigned(b)]
    out: dict[int, Decoded] = {}
    if pgp or keys.pgp_keyrings:   # an unusable keyring is an error even where nothing needs it
        with GpgVerifier(keys.pgp_keyrings, keys.error_code) as gpg:
            for d, b in pgp:
                out[d.slot] = _decode_pgp(d, b, gpg)
    for d, b in blobs:
        if d.slot in out:
            continue
        if b is None:
            out[d.slot] = Decoded(d, rp.UNKNOWN, f"signature object of {d.size} bytes is too large", (), None)
        elif b.lstrip().startswith(b"{"):
            out[d.slot] = _decode_dsse(d, b, pem)
        else:
            out[d.slot] = Decoded(d, rp.UNKNOWN, "signature format not recognized", (), None)
    return [out[d.slot] for d, _ in blobs]


DEFAULT_OPTIONS = VerifyOptions()   # every group, modern signatures only (Apptainer's default)


def verify_image(path: str, keys: TrustedKeys, options: VerifyOptions = DEFAULT_OPTIONS) -> rp.VerifyReport:
    """Check every signature of the SIF at `path` with `keys` (all of them trusted) and say whether
    the objects `options` select are covered. ShimError for bad input: not a SIF (65), an unusable
    key (64, or 78 for key-directory files), a --group/--id the image does not have (64)."""
    _check_options(options)
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ImageError(f"{path} is a directory: only SIF images carry signatures",
                         "build a SIF of it (shimrun build OUT.sif DIR) and sign that")
    with open_regular(path) as f:
        return verify_file(f, path, keys, options)


def verify_file(f: BinaryIO, path: str, keys: TrustedKeys, options: VerifyOptions = DEFAULT_OPTIONS) -> rp.VerifyReport:
    """verify_image on a SIF already open (named `path` in messages): every byte judged is read
    from `f`, so a launch checks the very file it mounts."""
    _check_options(options)
    pem = [load_public_key(p, keys.error_code) for p in keys.pem_keys]
    img = read_sif_file(f, path)
    _check_ids(img)
    views = group_views(img)
    reqs = requirements(img, views, options)
    plans = [_plan(dec, img, views, options) for dec in _decode_all(f, img, keys, pem)]
    digests = hash_streams(f, img, {s for p in plans for s in p.streams()})
    verdicts = tuple(p.verdict(digests) for p in plans)
    problems = unmet(img, reqs, verdicts, options)
    return rp.VerifyReport(path, not problems, verdicts, tuple(problems), tuple(r.what for r in reqs),
                           options.legacy_insecure)
