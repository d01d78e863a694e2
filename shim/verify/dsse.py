"""DSSE envelopes, as sylabs/sif writes them with sigstore signers (docs/sif-signatures.md §3):

    {"payloadType":"application/vnd.sylabs.sif-metadata+json","payload":<base64 metadata>,
     "signatures":[{"keyid":"SHA256:...","sig":<base64>},...]}

Every signature signs PAE(payloadType, payload) = "DSSEv1 <len> <type> <len> <payload>". The
algorithm follows the key, as Apptainer loads a PEM key: Ed25519 (pure), RSA PKCS#1 v1.5 with
SHA-256, ECDSA with SHA-256 (DER). The envelope is valid when any one signature verifies with
any trusted key (sigstore's threshold of 1): a second, broken signature does not spoil it.
A signature whose keyid names another key is not tried with that key; an empty keyid, with all.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from shim.verify.keys import PemKey, PrivateKey, PublicKey, keyid_of

PAYLOAD_TYPE = "application/vnd.sylabs.sif-metadata+json"


class EnvelopeError(ValueError):
    """Not a DSSE envelope of SIF metadata."""


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


# Per key type: verify(key, sig, message) raising InvalidSignature, and sign(key, message).
_VERIFY: dict[type, Callable[[PublicKey, bytes, bytes], None]] = {
    ed25519.Ed25519PublicKey: lambda k, s, m: k.verify(s, m),
    rsa.RSAPublicKey: lambda k, s, m: k.verify(s, m, padding.PKCS1v15(), hashes.SHA256()),
    ec.EllipticCurvePublicKey: lambda k, s, m: k.verify(s, m, ec.ECDSA(hashes.SHA256())),
}
_SIGN: dict[type, Callable[[PrivateKey, bytes], bytes]] = {
    ed25519.Ed25519PrivateKey: lambda k, m: k.sign(m),
    rsa.RSAPrivateKey: lambda k, m: k.sign(m, padding.PKCS1v15(), hashes.SHA256()),
    ec.EllipticCurvePrivateKey: lambda k, m: k.sign(m, ec.ECDSA(hashes.SHA256())),
}


def _table_entry(table: dict[type, Callable], key: object) -> Callable:
    return next(fn for kind, fn in table.items() if isinstance(key, kind))


def _b64(text: object) -> bytes:
    """Standard base64 first, then URL-safe (as go-securesystemslib decodes)."""
    if not isinstance(text, str) or not text.isascii():
        raise EnvelopeError("a base64 field of the envelope is not an ASCII string")
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(text.encode(), altchars=altchars, validate=True)
        except binascii.Error:
            continue
    raise EnvelopeError("a base64 field of the envelope does not decode")


@dataclass(frozen=True)
class Envelope:
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]   # (keyid, signature)


def is_envelope(blob: bytes) -> bool:
    try:
        doc = json.loads(blob)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("payloadType") == PAYLOAD_TYPE


def parse_envelope(blob: bytes) -> Envelope:
    try:
        doc = json.loads(blob)
    except (ValueError, RecursionError):
        raise EnvelopeError("the signature is not JSON") from None
    if not isinstance(doc, dict) or doc.get("payloadType") != PAYLOAD_TYPE:
        raise EnvelopeError(f"the envelope's payloadType is not {PAYLOAD_TYPE}")
    sigs = doc.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise EnvelopeError("the envelope has no signatures")
    out = []
    for s in sigs:
        keyid = s.get("keyid", "") if isinstance(s, dict) else None
        if not isinstance(keyid, str):
            raise EnvelopeError("a signature of the envelope has no string keyid")
        out.append((keyid, _b64(s.get("sig"))))
    return Envelope(_b64(doc.get("payload")), tuple(out))


@dataclass(frozen=True)
class DsseResult:
    verified: tuple[str, ...]    # keyids of the trusted keys that verified a signature
    claimed: tuple[str, ...]     # the keyids the envelope names (for "unknown key")
    tried: bool                  # some trusted key was a candidate for some signature

    @property
    def ok(self) -> bool:
        return bool(self.verified)

    def reason(self) -> str:
        if self.ok:
            return ""
        if self.tried:
            return "bad signature"
        named = ", ".join(k for k in self.claimed if k) or "(no keyid)"
        return f"signed by unknown key {named}"


def verify_envelope(env: Envelope, keys: Sequence[PemKey]) -> DsseResult:
    message = pae(PAYLOAD_TYPE, env.payload)
    verified: list[str] = []
    tried = False
    remaining = list(keys)   # each key verifies at most one signature (sigstore's rule)
    for keyid, sig in env.signatures:
        for k in remaining:
            if keyid and keyid != k.keyid:
                continue
            tried = True
            try:
                _table_entry(_VERIFY, k.key)(k.key, sig, message)
            except InvalidSignature:
                continue
            verified.append(k.keyid)
            remaining.remove(k)
            break
    return DsseResult(tuple(verified), tuple(k for k, _ in env.signatures), tried)


def sign_envelope(payload: bytes, key: PrivateKey) -> bytes:
    """An envelope with one signature by `key`, byte for byte as sylabs/sif writes one."""
    sig = _table_entry(_SIGN, key)(key, pae(PAYLOAD_TYPE, payload))
    doc = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
           "signatures": [{"keyid": keyid_of(key.public_key()), "sig": base64.b64encode(sig).decode()}]}
    return json.dumps(doc, separators=(",", ":")).encode()
