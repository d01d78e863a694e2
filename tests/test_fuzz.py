"""Property-based fuzzing (hypothesis) of every parser of untrusted bytes or text: the SIF header
and descriptors, the squashfs superblock check, the ld.so.cache reader, the ELF facts and .dynsym
readers, shim.toml and profiles, --bind and --env strings, and `shimrun inspect` as a user runs
it. The property is always the same: a result, or shim's own error with a line for the user;
never another exception (a traceback, exit 70) and never a hang.

The suite runs the "suite" profile (a bounded budget); scripts/fuzz.sh runs the "fuzz" profile
(HYPOTHESIS_PROFILE=fuzz, over 100,000 cases in all) and writes benchmarks/results/fuzz.md."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout, suppress
from pathlib import Path

from conftest import GOLDEN
from fuzzing import WORK, mutated
from fuzzing import file_case as _file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shim.cli.main import INTERNAL_ERROR
from shim.cli.main import main as shimrun
from shim.elf.facts import dynamic_symbols, elf_facts
from shim.elf.ldcache import parse_ld_cache
from shim.errors import ShimError
from shim.image.sif import primary_partition, read_sif, sif_to_dict
from shim.image.squashfs import read_superblock
from shim.launch.binds import parse_bind
from shim.launch.environment import EnvOptions, compose
from shim.site.config import load_site_config
from shim.site.profiles import lint_files

REPO = Path(__file__).resolve().parents[1]
SIFS = sorted(p for p in GOLDEN.rglob("*.sif"))
EXAMPLES = sorted((REPO / "conf" / "profiles" / "examples").glob("*.toml"))
# Small real ELF files of this machine: a program, a library with versions, the loader.
ELVES = [Path(p) for p in ("/bin/true", "/lib/x86_64-linux-gnu/libz.so.1", "/lib64/ld-linux-x86-64.so.2")
         if Path(p).exists()]

_SIF_BYTES = [p.read_bytes()[:1 << 20] for p in SIFS[:12]]


@given(mutated(_SIF_BYTES))
def test_sif_reader(data: bytes) -> None:
    path = _file(data, "case.sif")
    try:
        img = read_sif(path)
    except ShimError:
        return
    sif_to_dict(img)
    with suppress(ShimError):
        primary_partition(img)


# The signed golden SIFs: the signature objects, the signed JSON and its digests are untrusted too.
_SIGNED = [p.read_bytes() for p in sorted((GOLDEN / "sylabs-sif").glob("*-signed-*.sif")) if p.stat().st_size < 65536]
_SIGNED_FOCUS = 48 * 1024   # the descriptors and the signatures, which sit after the small partitions


@settings(max_examples=int(settings().max_examples / 4) or 1)   # each PGP case runs gpg
@given(mutated(_SIGNED, focus=_SIGNED_FOCUS), st.booleans())
def test_signature_verification(data: bytes, legacy: bool) -> None:
    from shim.verify import TrustedKeys, VerifyOptions, verify_image

    keys = TrustedKeys(pgp_keyrings=(str(GOLDEN / "keys" / "pgp-public.asc"),),
                       pem_keys=tuple(str(GOLDEN / "keys" / f"{k}-public.pem") for k in ("ed25519", "rsa", "ecdsa")))
    path = _file(data, "signed.sif")
    try:
        report = verify_image(str(path), keys, VerifyOptions(legacy_insecure=legacy))
    except ShimError:
        return
    assert report.ok or report.reason()  # a verdict, and a reason when it is not ok
    report.to_json()


def _superblocks() -> list[bytes]:
    out = []
    for p in SIFS:
        try:
            part = primary_partition(read_sif(p))
        except ShimError:
            continue
        with open(p, "rb") as f:
            f.seek(part.offset)
            out.append(f.read(4096))
        if len(out) >= 4:
            break
    return out


@given(mutated(_superblocks(), focus=96), st.integers(-8, 1 << 20))
def test_squashfs_superblock_check(data: bytes, size: int) -> None:
    path = _file(data, "case.sqfs")
    with suppress(ShimError):
        read_superblock(path, 0, size if size > 0 else len(data))


_LD_CACHES = [Path("/etc/ld.so.cache").read_bytes()[:1 << 16]]


@given(st.one_of(mutated(_LD_CACHES, focus=4096), st.binary(max_size=512)))
def test_ld_so_cache_reader(data: bytes) -> None:
    cache = parse_ld_cache(data)  # never raises: a damaged cache is an empty one with a reason
    for entry in cache.entries:
        cache.lookup(entry.key)


_ELF_BYTES = [p.read_bytes() for p in ELVES]


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated(_ELF_BYTES, focus=4096))
def test_elf_facts_and_dynsym_readers(data: bytes) -> None:
    path = _file(data, "case.elf")
    for reader in (elf_facts, dynamic_symbols):
        with suppress(ShimError):
            reader(path)


_TOML_TEXT = [(REPO / "conf" / "shim.toml").read_bytes(), b'[policy.codes]\nGPU-ABSENT = "info"\n',
              b'[launch]\nbinds = ["/a:/b:ro"]\n']


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


@given(st.one_of(mutated(_TOML_TEXT, focus=512), st.text(max_size=300).map(str.encode)))
def test_site_configuration(data: bytes) -> None:
    conf = WORK / "conf"
    conf.mkdir(exist_ok=True)
    (conf / "shim.toml").write_bytes(data)
    with suppress(ShimError):
        load_site_config(str(conf))


_PROFILES = [p.read_bytes() for p in EXAMPLES]


@given(mutated(_PROFILES, focus=2048))
def test_profile_lint(data: bytes) -> None:
    path = _file(data, "case.toml")
    for problem in lint_files([path], host_root=str(WORK)):
        str(problem)


_BIND_WORDS = st.sampled_from(["/", "/tmp", "a", "..", ":", "ro", "rw", "x:y", "/data", "", "::", "/a/../b"])


@given(st.one_of(st.text(max_size=60), st.lists(_BIND_WORDS, max_size=5).map("".join)))
def test_bind_strings(spec: str) -> None:
    with suppress(ShimError):
        parse_bind(spec, "--bind", "/tmp")


_NAMES = st.text(st.characters(codec="utf-8"), max_size=12)


@given(st.dictionaries(_NAMES, st.text(max_size=20), max_size=6), st.lists(st.text(max_size=30), max_size=4),
       st.booleans())
def test_env_strings(host: dict[str, str], pairs: list[str], cleanenv: bool) -> None:
    try:
        env = compose({k: v for k, v in host.items() if k and "=" not in k and "\0" not in k + v},
                      EnvOptions(cleanenv=cleanenv, env_pairs=tuple(pairs), home="/home/u"))
    except ShimError:
        return
    assert env.direct["HOME"] == "/home/u" and "PATH" in env.direct


@settings(max_examples=int(settings().max_examples / 3) or 1)
@given(mutated(_SIF_BYTES[:4]), st.booleans())
def test_inspect_as_a_user_runs_it(data: bytes, as_json: bool) -> None:
    path = _file(data, "inspect.sif")
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
        code = shimrun(["inspect", str(path), *(["--json"] if as_json else [])])
    assert code != INTERNAL_ERROR, err.getvalue()
    assert code in (0, 65), err.getvalue()


def test_a_descriptor_time_no_calendar_holds_is_shown_as_a_number() -> None:
    """Found by scripts/fuzz.sh: `inspect` of a SIF whose descriptor time was damaged stopped
    with a traceback (year out of range)."""
    from shim.cli.inspect_cmd import format_time

    assert format_time(-(2**62)) == f"{-(2**62)} (seconds since 1970: out of range)"
    assert format_time(0) == "1970-01-01 00:00:00 +0000 UTC"
