"""Signatures of SIF images: `shimrun verify` and `shimrun sign`, the site's image policy and the
provenance record all go through this API.

    report = verify_image(path, trusted_keys(conf_dir, os.environ, include_user=True))
    report.ok, report.signers(), report.reason(), report.to_json()

The byte rules are sylabs/sif's (what Apptainer signs and verifies), docs/sif-signatures.md.
OpenPGP goes through gpg, DSSE through `cryptography`: shim has no cryptography of its own.
"""

from __future__ import annotations

import importlib

# Each name from its module, imported when first used: a planner that only shares digests
# (integrity.shared_digests) must not pay for gpg's and cryptography's modules (~70 ms).
_WHERE = {"verify_image": "check", "verify_file": "check", "TrustedKeys": "keys", "key_files": "keys",
          "trusted_keys": "keys",
          "SCHEMA": "report", "SignatureVerdict": "report", "VerifyReport": "report", "VerifyOptions": "select"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
