"""Property-based fuzzing (hypothesis) of every parser of untrusted bytes or text: the SIF header
and descriptors, the squashfs superblock check, the ld.so.cache reader, the ELF facts and .dynsym
readers, shim.toml (its [images] tables too) and profiles, --bind and --env strings, provenance
records given to `check --against`, the `apptainer`/`singularity` command lines, and `shimrun
inspect` as a user runs it. Each target asserts what a user sees (tests/fuzzing.py: outcome): a
result that holds what the parser promises, or shim's own error of a documented exit code in one
line; never another exception (a traceback, exit 70), nothing left behind, never a hang.

The suite runs the "suite" profile (a bounded budget); scripts/fuzz.sh runs the "fuzz" profile
(HYPOTHESIS_PROFILE=fuzz, over 100,000 cases in all) and writes benchmarks/results/fuzz.md."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import signed_sifs
from conftest import GOLDEN
from fuzzing import WORK, mutated, one_line, outcome
from fuzzing import file_case as _file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from signed_sifs import ALL_KEYS

from shim.cli.main import INTERNAL_ERROR
from shim.cli.main import main as shimrun
from shim.container.binds import parse_bind
from shim.container.environment import EnvOptions, compose
from shim.elf.facts import dynamic_symbols, elf_facts
from shim.elf.ldcache import parse_ld_cache
from shim.errors import ExitCode, ShimError
from shim.image.sif import primary_partition, read_sif, sif_to_dict
from shim.image.squashfs import read_superblock
from shim.plan.profiles import lint_files
from shim.record.format import NO_RECORD_CACHE
from shim.site.config import load_site_config

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
    img = outcome(read_sif, path)
    if img is None:
        return
    assert all(d.offset >= 0 and d.offset + d.size <= len(data) for d in img.descriptors)
    json.dumps(sif_to_dict(img))
    part = outcome(primary_partition, img)
    assert part is None or (part.is_primary and part.offset + part.size <= len(data))


# The signed golden SIFs: the signature objects, the signed JSON and its digests are untrusted too.
_SIGNED = [p.read_bytes() for p in sorted(signed_sifs.SIFS.glob("*-signed-*.sif")) if p.stat().st_size < 65536]
_SIGNED_FOCUS = 48 * 1024   # the descriptors and the signatures, which sit after the small partitions


@settings(max_examples=int(settings().max_examples / 4) or 1)   # each PGP case runs gpg
@given(mutated(_SIGNED, focus=_SIGNED_FOCUS), st.booleans())
def test_signature_verification(data: bytes, legacy: bool) -> None:
    from shim.verify import VerifyOptions, verify_image

    keys = ALL_KEYS
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
    limit = size if size > 0 else len(data)
    sb = outcome(read_superblock, path, 0, limit)
    assert sb is None or 0 < sb.bytes_used <= limit


_LD_CACHES = [Path("/etc/ld.so.cache").read_bytes()[:1 << 16]]


@given(st.one_of(mutated(_LD_CACHES, focus=4096), st.binary(max_size=512)))
def test_ld_so_cache_reader(data: bytes) -> None:
    cache = outcome(parse_ld_cache, data)  # never refuses: a damaged cache is an empty one with a reason
    assert cache is not None
    assert cache.problem is None or (one_line(cache.problem) and not cache.entries)
    for entry in cache.entries:  # what it finds is what it lists (entries of legacy hwcaps are skipped)
        found = cache.lookup(entry.key)
        assert found is None or found in {e.value for e in cache.entries if e.key == entry.key}, entry
        if not entry.hwcap and entry.hwcaps_subdir is None:
            assert found is not None, entry


_ELF_BYTES = [p.read_bytes() for p in ELVES]


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated(_ELF_BYTES, focus=4096))
def test_elf_facts_and_dynsym_readers(data: bytes) -> None:
    path = _file(data, "case.elf")
    facts = outcome(elf_facts, path)
    assert facts is None or (facts.elf_class in (32, 64) and all(isinstance(n, str) for n in facts.needed)
                             and (facts.isa_level is None or 1 <= facts.isa_level <= 4))
    symbols = outcome(dynamic_symbols, path)
    assert symbols is None or all(isinstance(n, str) for n in symbols.defined | symbols.undefined)


_TOML_TEXT = [(REPO / "conf" / "shim.toml").read_bytes(), b'[policy.codes]\nGPU-ABSENT = "info"\n',
              b'[launch]\nbinds = ["/a:/b:ro"]\n']


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _load_conf(data: bytes):
    conf = WORK / "conf"
    conf.mkdir(exist_ok=True)
    (conf / "shim.toml").write_bytes(data)
    return outcome(load_site_config, str(conf))


@given(st.one_of(mutated(_TOML_TEXT, focus=512), st.text(max_size=300).map(str.encode)))
def test_site_configuration(data: bytes) -> None:
    site = _load_conf(data)
    if site is not None:
        assert all(isinstance(b, str) for b in site.binds) and site.refusal in ("warn", "error")
        assert not site.provenance_dir or site.provenance_dir.startswith("/")


_IMAGE_KEYS = ["paths", "signers", "allow_unsigned", "allow_directories", "allow_foreign_arch",
               "allow_legacy_signatures", "allow_writable", "trust", "path"]
_TOML_VALUES = st.one_of(st.booleans(), st.integers(-3, 3), st.text(max_size=12),
                         st.lists(st.one_of(st.text(max_size=12), st.sampled_from(["/apps", "rel", "", "/a/../b"])),
                                  max_size=3))


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(json.dumps(x) for x in v) + "]"
    return json.dumps(v)


@given(st.dictionaries(st.sampled_from(_IMAGE_KEYS), _TOML_VALUES, max_size=5))
def test_images_tables(table: dict) -> None:
    text = "[images]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items())
    site = _load_conf(text.encode("utf-8", "surrogatepass"))
    if site is None:
        return
    images = site.images
    assert all(p.startswith("/") and p == os.path.normpath(p) for p in images.paths)
    assert all(s and (s.startswith("SHA256:") or s == s.upper()) for s in images.signers)
    assert images.needs_signature == (not images.allow_unsigned or bool(images.signers))


_PROFILES = [p.read_bytes() for p in EXAMPLES]


@given(mutated(_PROFILES, focus=2048))
def test_profile_lint(data: bytes) -> None:
    path = _file(data, "case.toml")
    problems = outcome(lint_files, [path], host_root=str(WORK))
    assert problems is not None  # lint reports problems, it does not refuse
    for problem in problems:
        assert one_line(str(problem)) and problem.file == str(path), str(problem)


_BIND_WORDS = st.sampled_from(["/", "/tmp", "a", "..", ":", "ro", "rw", "x:y", "/data", "", "::", "/a/../b"])


@given(st.one_of(st.text(max_size=60), st.lists(_BIND_WORDS, max_size=5).map("".join)))
def test_bind_strings(spec: str) -> None:
    bind = outcome(parse_bind, spec, "--bind", "/tmp")
    if bind is not None:
        assert bind.src.startswith("/") and bind.dst.startswith("/") and bind.dst != "/"
        assert os.path.exists(bind.src) and bind.dst == os.path.normpath(bind.dst)


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
    assert code in (0, ExitCode.IMAGE), err.getvalue()


def test_a_descriptor_time_no_calendar_holds_is_shown_as_a_number() -> None:
    """Found by scripts/fuzz.sh: `inspect` of a SIF whose descriptor time was damaged stopped
    with a traceback (year out of range)."""
    from shim.cli.inspect_cmd import format_time

    assert format_time(-(2**62)) == f"{-(2**62)} (seconds since 1970: out of range)"
    assert format_time(0) == "1970-01-01 00:00:00 +0000 UTC"


def _provenance_record() -> dict:
    """A real record: the installed shimrun's, of a launch of the golden busybox image."""
    import subprocess

    from conftest import shimrun_path

    image, record = WORK / "prov-busybox.sif", WORK / "prov-record.json"
    image.write_bytes((GOLDEN / "apptainer" / "busybox_amd64.sif").read_bytes())
    r = subprocess.run([shimrun_path(), "--provenance", str(record), str(image), "true"], capture_output=True,
                       text=True, check=False, stdin=subprocess.DEVNULL,
                       env={**os.environ, NO_RECORD_CACHE: "1"})
    assert r.returncode == 0, r.stderr
    doc = json.loads(record.read_text())
    image.unlink()
    record.unlink()
    return doc


_RECORD = _provenance_record()
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2, 2**40) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=3), max_leaves=6)


def _paths(doc: object, at: tuple = ()) -> list[tuple]:
    """Every place in a JSON document: the key paths to each value."""
    out = [at]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*at, i))
    return out


_RECORD_PATHS = _paths(_RECORD)


@st.composite
def _mutated_record(draw) -> bytes:
    """The real record with values somewhere in it replaced by other JSON (or the bytes damaged)."""
    doc = json.loads(json.dumps(_RECORD))
    for at in draw(st.lists(st.sampled_from(_RECORD_PATHS[1:]), max_size=4)):
        parent = doc
        try:
            for key in at[:-1]:
                parent = parent[key]
            parent[at[-1]] = draw(_JSON)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed this place
    raw = json.dumps(doc).encode()
    return draw(st.one_of(st.just(raw), mutated([raw], focus=len(raw))))


@given(_mutated_record())
def test_provenance_records_given_to_check_against(data: bytes) -> None:
    from shim.cli.check_cmd import read_record
    from shim.provenance.compare import differences

    doc = outcome(read_record, str(_file(data, "record.json")))
    if doc is None:
        return
    found = outcome(differences, doc, _RECORD)
    assert found is not None  # a record read is compared, never refused halfway
    assert all(one_line(d.line()) for d in found), [d.line() for d in found]


def _compat_words() -> list[str]:
    from shim.compat.options import ACTION_OPTIONS, PULL_OPTIONS

    names = [n for o in (*ACTION_OPTIONS, *PULL_OPTIONS) for n in o.names]
    return [*names, "exec", "run", "shell", "pull", "build", "inspect", "verify", "sign", "cache", "version", "help",
            "--debug", "-q", "--quiet", "-s", "--silent", "--nocolor", "-c", "--config=x", "IMG.sif", "docker://a",
            "/bin/true", "--", "", "-", "=", "a,b:c", "--bind=/x:/y", "oci-archive:x.tar"]


@given(st.lists(st.one_of(st.sampled_from(_compat_words()), st.text(max_size=10)), max_size=8),
       st.sampled_from(["apptainer", "singularity"]))
def test_apptainer_command_lines(words: list[str], prog: str) -> None:
    """What shim's `apptainer` makes of a command line: a shimrun command line to exec, its own
    answer (version, help), or one line refusing it (exit 64) — never a traceback."""
    from unittest import mock

    from shim.compat import apptainer

    execed: list[list[str]] = []

    def capture(argv: list[str], environ: object) -> int:
        execed.append(argv)
        return 0

    with mock.patch.object(apptainer, "_exec", capture), redirect_stdout(io.StringIO()), \
            redirect_stderr(io.StringIO()):
        try:
            code = apptainer.main(words, prog, {"PATH": "/usr/bin"})
        except apptainer.CompatError as e:
            assert one_line(str(e)), repr(str(e))
            return
    assert code in (0, ExitCode.USAGE), code
    for argv in execed:
        assert argv and all(isinstance(w, str) for w in argv)
