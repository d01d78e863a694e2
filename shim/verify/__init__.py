"""Signatures of SIF images: `shimrun verify` and `shimrun sign`, the site's image policy and the
provenance record all go through this API.

    report = verify_image(path, trusted_keys(conf_dir, os.environ, include_user=True))
    report.ok, report.signers(), report.reason(), report.to_json()

The byte rules are sylabs/sif's (what Apptainer signs and verifies), docs/sif-signatures.md.
OpenPGP goes through gpg, DSSE through `cryptography`: shim has no cryptography of its own.
"""

from __future__ import annotations

from shim.verify.check import verify_image
from shim.verify.keys import TrustedKeys, key_files, trusted_keys
from shim.verify.report import SCHEMA, SignatureVerdict, VerifyReport
from shim.verify.select import VerifyOptions

__all__ = ["SCHEMA", "SignatureVerdict", "TrustedKeys", "VerifyOptions", "VerifyReport", "key_files",
           "trusted_keys", "verify_image"]
