"""Which objects must be signed, and which signatures can speak for them.

Signatures (docs/sif-signatures.md §1-2):
* modern (PGP clear-signed JSON or a DSSE envelope): in no group, linked to a group; one covers
  every object of that group, of any type, exactly as the group was when it was signed;
* legacy (Singularity < 3.6, clear-signed "SIFHASH:\\n<hex>"): linked to one object (its data
  only) or to a group (the data of its objects, concatenated); nothing else is covered.

What must be covered (Apptainer's selection, sylabs/sif pkg/integrity/verify.go):
* default: every object group, each by a valid modern signature (legacy ones do not count);
  --group N: that group; --id N: that object, through a modern signature of its group whose
  other objects may differ (the one place where the signed set need not match the group);
  --all: as the default (Apptainer uses it only with --legacy-insecure).
* --legacy-insecure: the primary partition alone (as Apptainer); with --all every non-signature
  object in a group; with --group N / --id N those objects. Legacy and modern signatures count.
* always: a non-signature object in no group cannot be signed, so the image does not verify.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shim.errors import UsageError
from shim.image.sif import DATA_SIGNATURE, SifDescriptor, SifImage
from shim.verify.metadata import GroupView
from shim.verify.report import SignatureVerdict

LEGACY_PREFIX = b"SIFHASH:\n"
CLEARSIGN_HEADER = b"-----BEGIN PGP SIGNED MESSAGE-----"


@dataclass(frozen=True)
class VerifyOptions:
    """What must be covered (module docstring); at most one of group, object_id, all_objects."""

    legacy_insecure: bool = False
    group: int | None = None
    object_id: int | None = None
    all_objects: bool = False


@dataclass(frozen=True)
class Requirement:
    """Objects that must all be covered by valid signatures that count in this mode."""

    what: str                  # "group 1", "object 2": how a failure names it
    objects: tuple[int, ...]
    group: int | None          # the group whose modern signatures speak for it


def group_views(img: SifImage) -> dict[int, GroupView]:
    members: dict[int, list[SifDescriptor]] = {}
    for d in img.descriptors:
        if d.group is not None:
            members.setdefault(d.group, []).append(d)
    return {g: GroupView(g, tuple(ds), min(d.id for d in ds)) for g, ds in sorted(members.items())}


def signature_descriptors(img: SifImage) -> list[SifDescriptor]:
    return [d for d in img.descriptors if d.data_type == DATA_SIGNATURE]


def is_clearsigned(blob: bytes) -> bool:
    return any(line.rstrip(b"\r") == CLEARSIGN_HEADER for line in blob.split(b"\n"))


def is_legacy_plaintext(plaintext: bytes) -> bool:
    return plaintext.startswith(LEGACY_PREFIX)


def ungrouped_objects(img: SifImage) -> list[SifDescriptor]:
    """Non-signature objects in no group: nothing can sign them (Go: errNonGroupedObject)."""
    return [d for d in img.descriptors if d.group is None and d.data_type != DATA_SIGNATURE]


def requirements(img: SifImage, views: dict[int, GroupView], options: VerifyOptions) -> list[Requirement]:
    """What must be covered for the image to verify, in the order failures are reported.
    UsageError when --group/--id names something the image does not have."""
    if options.group is not None and options.group not in views:
        have = ", ".join(map(str, views)) or "none"
        raise UsageError(f"{img.path} has no object group {options.group} (its groups: {have})",
                         "name one of its groups, or leave --group out to verify them all")
    if options.object_id is not None:
        target = img.descriptor(options.object_id)
        if target is None:
            have = ", ".join(str(d.id) for d in img.descriptors) or "none"
            raise UsageError(f"{img.path} has no object {options.object_id} (its objects: {have})",
                             "name one of its objects (shimrun inspect IMAGE lists them)")
        return [Requirement(f"object {target.id}", (target.id,), target.group)]
    if options.group is not None:
        view = views[options.group]
        return [_group_requirement(view, options.legacy_insecure)]
    if not options.legacy_insecure:
        return [_group_requirement(view, False) for view in views.values()]
    if options.all_objects:
        return [Requirement(f"object {d.id}", (d.id,), d.group) for view in views.values()
                for d in view.members if d.data_type != DATA_SIGNATURE]
    prims = [d for d in img.descriptors if d.is_primary]
    return [Requirement(f"object {d.id}", (d.id,), d.group) for d in prims[:1]]


def _group_requirement(view: GroupView, legacy: bool) -> Requirement:
    # A legacy signature cannot cover a signature object of the group (it would sign itself),
    # so with --legacy-insecure only the group's other objects are required.
    ids = tuple(d.id for d in view.members if not (legacy and d.data_type == DATA_SIGNATURE))
    return Requirement(f"group {view.group}", ids, view.group)


# ---- is it covered? ----------------------------------------------------------------------

def _covered(verdicts: Sequence[SignatureVerdict]) -> set[int]:
    return {i for v in verdicts if v.valid and v.counts for i in v.covers}


def _relevant(req: Requirement, v: SignatureVerdict) -> bool:
    """Does `v` speak for (part of) `req`: linked to its group or its objects, or covering one?"""
    linked = {f"object {i}" for i in req.objects} | ({f"group {req.group}"} if req.group is not None else set())
    return v.target in linked or bool(set(v.covers) & set(req.objects))


def _unmet(req: Requirement, verdicts: Sequence[SignatureVerdict], any_signature: bool) -> str:
    """"" when `req` is covered, else one line why not, naming the group or object."""
    missing = [i for i in req.objects if i not in _covered(verdicts)]
    if not missing:
        return ""
    candidates = [v for v in verdicts if _relevant(req, v)]
    counted = [v for v in candidates if v.counts]
    failed = [v for v in counted if not v.valid]
    if failed and not any(v.valid for v in counted):
        # the most telling failure first: a trusted key's (the object changed, the key expired)
        # rather than another signer's whom nobody here trusts
        telling = next((v for v in failed if not v.reason.startswith("signed by unknown key")), failed[0])
        return f"{req.what}: {telling.reason}"
    if counted:  # valid signatures that leave some of it out
        return f"object {missing[0]} not signed" + (f" ({req.what})" if req.what != f"object {missing[0]}" else "")
    plain = f"{req.what} has no signature" if req.what.startswith("group") else f"{req.what} not signed"
    if candidates:
        return f"{plain} that counts: legacy signatures count only with --legacy-insecure"
    return plain if any_signature else f"{plain}: the image is not signed"


def unmet(img: SifImage, reqs: Sequence[Requirement], verdicts: Sequence[SignatureVerdict],
          options: VerifyOptions) -> list[str]:
    """Why the image does not verify, one line per uncovered group or object; [] when it does."""
    out = [f"object {d.id} ({d.type_name}) is in no object group, so no signature can cover it"
           for d in ungrouped_objects(img)]
    if not reqs:
        out.append("the image has no primary partition to verify" if options.legacy_insecure
                   else "the image has no object groups: nothing in it is signed")
    any_signature = bool(signature_descriptors(img))
    return out + [p for req in reqs if (p := _unmet(req, verdicts, any_signature))]
