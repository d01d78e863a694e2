"""Property-based fuzzing (hypothesis) of what an OCI source hands shim: index and manifest JSON,
image configs, layer tar headers (the flattener), and whole layouts built as a user builds them;
seeded with real documents and with the hostile ones of tests/hostile.py (issue 21).

The properties, for every case: the outcome is a result or a ShimError whose exit code is one of
the documented ones (never 70), whose message is one line with no control character, bounded in
length; a result holds to what its users rely on (every digest checked, a config a launch can
encode, a tar whose names stay inside the root); and a failed build leaves no file behind."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import shutil
import signal
import subprocess
import tarfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import hostile
import zstandard
from error_line import one_error_line
from fuzzing import WORK, mutated
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.cli.main import main as shimrun
from shim.errors import LINE_LIMIT, ExitCode, ShimError, escaped
from shim.oci import digest as digests
from shim.oci.flatten import Flattener, FlattenOptions
from shim.oci.manifest import checked_config, config_and_layers, resolve_manifest
from shim.oci.model import Descriptor, Layer, ResolvedImage, descriptor

DOCUMENTED = {int(c) for c in ExitCode} - {int(ExitCode.INTERNAL)}


def _one_line(e: ShimError) -> None:
    text = str(e)
    assert int(e.code) in DOCUMENTED, text
    assert "\n" not in text and escaped(text) == text, repr(text)
    assert len(text) < LINE_LIMIT, len(text)


# ---- index and manifest JSON ----

_SMALL = hostile.Image.make([hostile.layer_tar([hostile.entry("a", b"a")])])
_DOCS = {hostile.digest_of(b.data): b.data for b in (_SMALL.config, *_SMALL.layers)}
_DOCS[hostile.digest_of(_SMALL.manifest_bytes())] = _SMALL.manifest_bytes()


def _index(entries: list[dict]) -> bytes:
    return json.dumps(hostile.index_doc(entries)).encode()


def _manifest_seeds() -> list[bytes]:
    good = _SMALL.manifest_doc()
    lying = [{**good, "layers": [{**good["layers"][0], **change}]} for change in (
        {"digest": hostile.path_digest("/var/tmp/victim/canary")}, {"size": 1 << 40}, {"size": -1},
        {"digest": good["layers"][0]["digest"].upper()}, {"digest": "md5:" + "0" * 32}, {"size": True})]
    entry = hostile.platform_entry(_SMALL, "amd64")
    forged = [{**entry, "platform": {"os": "linux", "architecture": "x\n\x1b]0;t\x07"}}] * 20
    return [json.dumps(d).encode() for d in (good, *lying)] + [
        _index([entry]), _index([hostile.platform_entry(_SMALL, "arm64", "v8"), entry]), _index(forged),
        _index([{**entry, "digest": hostile.path_digest("../../../victim/important")}])]


def _fetch(desc: Descriptor) -> bytes:
    if desc.digest not in _DOCS:
        raise ShimError(ExitCode.NO_SUCH_IMAGE, f"no blob {desc.digest[:19]}")
    return _DOCS[desc.digest]


@given(mutated(_manifest_seeds(), focus=1024))
def test_index_and_manifest_json(data: bytes) -> None:
    top = Descriptor("", hostile.digest_of(data), len(data))
    _DOCS[top.digest] = data
    try:
        desc, manifest = resolve_manifest(top, _fetch, "docker://fuzz/x:1", "amd64")
        config_desc, config, layers = config_and_layers(manifest, _fetch, "docker://fuzz/x:1")
    except ShimError as e:
        _one_line(e)
        return
    finally:
        del _DOCS[top.digest]
    assert all(digests.valid(d) for d in (desc.digest, config_desc.digest, *(la.blob.digest for la in layers),
                                           *(la.diff_id for la in layers)))


@given(st.dictionaries(st.sampled_from(["digest", "size", "mediaType", "platform", "annotations"]),
                       st.one_of(st.text(max_size=80), st.integers(), st.none(), st.booleans(),
                                 st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3))))
def test_descriptor(obj: dict) -> None:
    try:
        d = descriptor(obj, "fuzz")
    except ShimError as e:
        _one_line(e)
        return
    assert digests.valid(d.digest) and 0 <= d.size < 1 << 63


# ---- image configs ----

def _config_seeds() -> list[bytes]:
    ids = [hostile.digest_of(b"a")]
    plain = json.dumps(hostile.config_doc(ids, Entrypoint=["/bin/echo", "x"], WorkingDir="/w", Labels={"a": "b"}))
    small = {k: v for k, v in hostile.HOSTILE_CONFIGS.items() if k != "Env (count)"}
    return [plain.encode(), *(hostile.hostile_config(k, ids) for k in small)]


@given(mutated(_config_seeds(), focus=512))
def test_image_config(data: bytes) -> None:
    from shim.container.environment import EnvOptions, env_rules
    from shim.oci.config import apptainer_files, env_pairs, runscript_words, working_dir
    from shim.record.encode import env_fields

    try:
        config = checked_config(data, "docker://fuzz/x:1")
    except ShimError as e:
        _one_line(e)
        return
    # Accepted: a launch can write it into a SIF and encode it into a record.
    for f in apptainer_files(config, "docker://fuzz/x:1", ""):
        assert isinstance(f.data, bytes)
    runscript_words(config)
    working_dir(config)
    env_fields(env_rules({}, EnvOptions(home="/h", image_env=env_pairs(config))))


# ---- layer tar headers: the flattener ----

def _tar_seeds() -> list[bytes]:
    e = hostile.entry
    pax = tarfile.TarInfo("p" * 300)
    pax.pax_headers = {"path": "x/y", "linkpath": "z" * 200}
    return [
        hostile.layer_tar([e("d", kind=tarfile.DIRTYPE), e("d/f", b"data"), e("d/l", kind=tarfile.SYMTYPE, link="f"),
                           e("d/h", kind=tarfile.LNKTYPE, link="d/f"), e(".wh.gone"), e("d/.wh..wh..opq")]),
        hostile.layer_tar([e("lib", kind=tarfile.SYMTYPE, link="/etc"), e("lib/x", b"x")]),
        hostile.layer_tar([e("../../etc/passwd", b"x"), e("/abs", b"y"), e("dev/null", kind=tarfile.CHRTYPE)]),
        hostile.layer_tar([(pax, b""), e("a" * 200 + "/b", b"long")]),
        hostile.empty_files_tar(40),
    ]


_TARS = _tar_seeds()
_COMPRESSED = [gzip.compress(t) for t in _TARS[:2]] + [zstandard.ZstdCompressor().compress(_TARS[0]),
                                                      lzma.compress(_TARS[1]), bz2.compress(_TARS[0])]


def _image_of(data: bytes) -> ResolvedImage:
    """A one-layer image of `data` (a tar, or a compressed one whose diff_id is what it
    decompresses to, when it does)."""
    plain = data
    for unpack in (gzip.decompress, zstandard.decompress, lzma.decompress, bz2.decompress):
        with contextlib.suppress(Exception):
            plain = unpack(data)
            break
    blob = hostile.Blob(data, hostile.MT_LAYER)
    diff_id = hostile.digest_of(plain)
    desc = Descriptor(blob.media_type, blob.digest, len(blob.data))
    return ResolvedImage("fuzz", "", {}, "", (Layer(desc, diff_id, 1),),
                         lambda _d: contextlib.nullcontext(io.BytesIO(blob.data)))


@given(st.one_of(mutated(_TARS, focus=4096), mutated(_COMPRESSED, focus=256)), st.sampled_from([5, 10_000]))
def test_layer_tar_headers(tar: bytes, max_entries: int) -> None:
    flat = Flattener(_image_of(tar), FlattenOptions(max_bytes=1 << 20, max_entries=max_entries))
    out = io.BytesIO()
    try:
        flat.plan()
        flat.write(out)
    except ShimError as e:
        _one_line(e)
        assert e.code == ExitCode.IMAGE
        return
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        for m in tf.getmembers():
            assert not m.name.startswith("/") and ".." not in m.name.split("/"), m.name
            assert not (m.ischr() or m.isblk()), m.name


# ---- whole layouts, built as a user builds them ----

def _layout_seeds() -> list[bytes]:
    return [_SMALL.config.data, *(hostile.hostile_config(k) for k in ("Env[1] (NUL)", "Labels (not a string)"))]


@settings(max_examples=max(int(settings().max_examples / 8), 1))   # each accepted case runs mksquashfs
@given(mutated(_layout_seeds(), focus=512), st.booleans())
def test_build_from_a_layout_leaves_nothing_behind(config: bytes, tagged: bool) -> None:
    """A layout with a mutated config (stored under its own digest, so the parsers see it), its
    manifest listed directly or through an index: `shimrun build` writes OUT or fails in one
    line, and leaves no partial file either way."""
    case = WORK / "layout-case"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir()
    image = hostile.Image(list(_SMALL.layers), hostile.Blob(config, hostile.MT_CONFIG))
    entries = [hostile.tagged(image, "1")] if tagged else [hostile.platform_entry(image, "amd64")]
    hostile.write_layout(case / "layout", [image], entries)
    out = case / "out.sif"
    sigterm = signal.getsignal(signal.SIGTERM)  # `build` sets its own, for its process: not for pytest's
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
            code = shimrun(["build", str(out), f"oci:{case / 'layout'}"])
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert code in DOCUMENTED | {0}, err.getvalue()
    if code:
        one_error_line(subprocess.CompletedProcess([], code, "", err.getvalue()), ExitCode(code))
        assert not out.exists()
    leftover = [p.name for p in Path(case).iterdir() if p.name not in ("layout", "out.sif")]
    assert leftover == [], leftover
