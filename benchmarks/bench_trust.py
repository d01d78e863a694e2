"""What trust and provenance cost a launch: a warm `shimrun IMG.sif /bin/true` with no image
policy, with a policy that requires a signature from a trusted key (the image signed by `shimrun
sign` with an ed25519 key), and with `--provenance DIR`; each also planned every time
(SHIMRUN_NO_RECORD_CACHE=1), where the signature check and the provenance facts are paid.
Interleaved, as an ordinary user. Writes results/trust.md.

With SHIM_BEFORE=PATH (the front-end of an earlier build, e.g. installed with
SHIM_PREFIX=/opt/shim-before from the commit before a change), the policy cases are measured with
it too, in the same run, and the table says how the build under test compares (issue #20: within
5 %).

Usage (as root, after scripts/install.sh): /opt/shim/venv/bin/python benchmarks/bench_trust.py [RUNS]
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench_launch import prepare
from common import (
    argv_int,
    bench_user,
    shimrun_path,
    table,
    target_cell,
    timed_runs,
    wait_quiet,
    work_dir,
    write_results,
)

PLAIN, POLICY, PROV = "warm, no image policy", "warm, policy: signed by a trusted key", "warm, --provenance DIR"
PLANNED = "planned, no image policy", "planned, policy: signed by a trusted key", "planned, --provenance DIR"
TARGET = 1.05
BEFORE_WARM, BEFORE_PLANNED = "before: warm, policy: signed by a trusted key", \
    "before: planned, policy: signed by a trusted key"


def ed25519_key(work: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, public = work / "bench-signer.pem", work / "bench-signer.pub.pem"
    if not private.exists():
        key = Ed25519PrivateKey.generate()
        private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def confs(work: Path, public: Path) -> tuple[Path, Path]:
    plain, policy = work / "conf-plain", work / "conf-policy"
    for conf in (plain, policy):
        (conf / "keys").mkdir(parents=True, exist_ok=True)
        (conf / "shim.toml").write_text("[launch]\nbinds = []\n")
    (policy / "shim.toml").write_text("[launch]\nbinds = []\n\n[images]\nallow_unsigned = false\n")
    shutil.copy(public, policy / "keys" / "bench.pem")
    for p in (work, *work.rglob("conf-*"), *(q for c in (plain, policy) for q in c.rglob("*"))):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return plain, policy


def signed_copy(shimrun: str, sif: Path, private: Path, work: Path) -> Path:
    signed = work / "debian-signed.sif"
    if not signed.exists():
        shutil.copy(sif, signed)
        subprocess.run([shimrun, "sign", "--key", str(private), str(signed)], check=True, capture_output=True)
        signed.chmod(0o644)
    return signed


def main() -> None:
    runs = argv_int(1, 100)
    work = work_dir()
    _rootfs, sif, sqfs = prepare(work)
    shimrun = shimrun_path()
    private, public = ed25519_key(work)
    plain, policy = confs(work, public)
    signed = signed_copy(shimrun, sif, private, work)
    records = work / "provenance"
    shutil.rmtree(records, ignore_errors=True)
    records.mkdir()
    uid, gid, _home, _name = bench_user()
    os.chown(records, uid, gid)
    cold = ["env", "SHIMRUN_NO_RECORD_CACHE=1"]
    base = {PLAIN: [shimrun, "--conf", str(plain), str(signed), "/bin/true"],
            POLICY: [shimrun, "--conf", str(policy), str(signed), "/bin/true"],
            PROV: [shimrun, "--conf", str(plain), "--provenance", str(records), str(signed), "/bin/true"]}
    commands = dict(base)
    commands.update({cold_name: cold + base[warm] for cold_name, warm in zip(PLANNED, base, strict=True)})
    before = os.environ.get("SHIM_BEFORE")
    if before:
        commands[BEFORE_WARM] = [before, *base[POLICY][1:]]
        commands[BEFORE_PLANNED] = cold + commands[BEFORE_WARM]
    if shutil.which("ch-run"):
        commands["ch-run IMG.sqfs"] = ["ch-run", str(sqfs), "--", "/bin/true"]
    quiet = wait_quiet()
    samples = timed_runs(commands, runs)
    written = len(list(records.iterdir()))
    by_name = {s.name: s.median * 1e3 for s in samples}
    rows = ["| target (issues #14, #20) | without | with | ratio | result |", "|---|---:|---:|---:|---|"]
    for what, case in (("warm launch with the image policy on within 5 % of without", POLICY),
                       ("warm launch with --provenance within 5 % of without", PROV)):
        ratio = by_name[case] / by_name[PLAIN]
        rows.append(f"| {what} | {by_name[PLAIN]:.2f} ms | {by_name[case]:.2f} ms | {ratio:.3f}× "
                    f"| {target_cell(ratio, TARGET)} |")
    if before:
        for what, old, new in (("warm launch, policy on, within 5 % of the build before", BEFORE_WARM, POLICY),
                               ("planned launch, policy on, within 5 % of the build before", BEFORE_PLANNED,
                                PLANNED[1])):
            ratio = by_name[new] / by_name[old]
            rows.append(f"| {what} | {by_name[old]:.2f} ms | {by_name[new]:.2f} ms | {ratio:.3f}× "
                        f"| {target_cell(ratio, TARGET)} |")
    for cold_name in PLANNED[1:]:
        rows.append(f"| (measured) {cold_name} vs {PLANNED[0]} | {by_name[PLANNED[0]]:.1f} ms "
                    f"| {by_name[cold_name]:.1f} ms | {by_name[cold_name] / by_name[PLANNED[0]]:.2f}× | |")
    notes = [(f"{runs} launches of each case (after 3 warm-up rounds), interleaved, as an ordinary user; wall time "
             "from fork to exit of `shimrun`. The image: a Debian bookworm minbase SIF built by `shimrun build`, "
             "signed with `shimrun sign --key` (ed25519, DSSE); the policy's conf has `[images] allow_unsigned = "
             "false` and the public key in `keys/`. \"Planned\": SHIMRUN_NO_RECORD_CACHE=1, Python plans every "
             "launch (the signature check and the provenance facts included)."),
             f"Provenance records written during the run: {written} (one per --provenance launch).", quiet]
    if before:
        notes.insert(1, f"\"before\": {before}, the build before this change, on the same image, conf and key.")
    sections = [("Launch of /bin/true", table(samples, PLAIN)), ("Targets", rows), ("Notes", notes)]
    out = write_results("trust", "Image policy and provenance: launch cost", sections)
    print(out.read_text())


if __name__ == "__main__":
    main()
