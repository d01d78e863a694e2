"""Sign a SIF the way sylabs/sif (Apptainer's `sign`) does, so that Apptainer verifies it: one
signature object per object group, in no group itself, linked to the group (LinkedID
0xf0000000|group), HashType SHA-256, the signed metadata of §1 of docs/sif-signatures.md, and

* OpenPGP: the metadata clear-signed by gpg; Entity = the key's primary fingerprint;
* PEM private key: a DSSE envelope with one signature; Entity all zero.

Every chosen group is signed in one change of the file (sif_append): all or nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shim.errors import UsageError
from shim.image.sif import DATA_SIGNATURE, GROUP_MASK
from shim.image.sif_append import NewObject, SifUpdate, check_room
from shim.verify.dsse import sign_envelope
from shim.verify.integrity import SIF_HASH_SHA256, hash_streams
from shim.verify.keys import PrivateKey, keyid_of
from shim.verify.metadata import build_metadata, build_streams
from shim.verify.pgp import SecretKey, clearsign
from shim.verify.select import group_views

ENTITY_SIZE = 20


@dataclass(frozen=True)
class PgpSigner:
    key: SecretKey
    environ: Mapping[str, str]

    @property
    def name(self) -> str:
        return self.key.fingerprint

    @property
    def entity(self) -> bytes:
        return bytes.fromhex(self.key.fingerprint)

    def sign(self, message: bytes) -> bytes:
        return clearsign(message, self.key, self.environ)


@dataclass(frozen=True)
class PemSigner:
    key: PrivateKey

    @property
    def name(self) -> str:
        return keyid_of(self.key.public_key())

    @property
    def entity(self) -> bytes:
        return bytes(ENTITY_SIZE)   # DSSE signatures name no OpenPGP entity

    def sign(self, message: bytes) -> bytes:
        return sign_envelope(message, self.key)


Signer = PgpSigner | PemSigner


@dataclass(frozen=True)
class Signed:
    group: int
    object_id: int     # the new signature object
    signer: str


def sign_image(path: str, signer: Signer, groups: Sequence[int] = ()) -> list[Signed]:
    """Add a signature of each of `groups` (default: every group of the image) by `signer`.
    UsageError for a group the image does not have; ImageError when it is no SIF or has too few
    free descriptor slots (then nothing is signed and the file is unchanged)."""
    with SifUpdate(path) as u:
        img = u.img
        views = group_views(img)
        if not views:
            raise UsageError(f"{path} has no object groups: there is nothing to sign")
        chosen = list(dict.fromkeys(groups)) or list(views)
        unknown = [g for g in chosen if g not in views]
        if unknown:
            raise UsageError(f"{path} has no object group {unknown[0]} (its groups: {', '.join(map(str, views))})",
                             "name one of its groups, or leave --group-id out to sign them all")
        check_room(img, len(chosen))   # before gpg asks for a passphrase
        digests = hash_streams(u.file, img, {s for g in chosen for s in build_streams(views[g])})
        extra = struct.pack("<i", SIF_HASH_SHA256) + signer.entity
        objects = [NewObject(DATA_SIGNATURE, signer.sign(build_metadata(img, views[g], digests)), GROUP_MASK,
                             GROUP_MASK | g, extra) for g in chosen]
        ids = u.append(objects)
    return [Signed(g, i, signer.name) for g, i in zip(chosen, ids, strict=True)]
