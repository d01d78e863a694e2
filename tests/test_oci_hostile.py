"""A registry is hostile until its bytes are checked (issue 21): `shimrun pull` as an ordinary user
against small HTTP servers on 127.0.0.1 (tests/hostile_server.py) that lie in every way issue 21
found, each request's headers logged. Every case ends in one line and its documented exit code,
with nothing written but in the blob cache (no SIF, no partial file, the user's other files
intact), and credentials sent to their registry and that registry's own token service only.

The network limits are set small (SHIMRUN_PULL_TIMEOUT and friends) so that the slow servers
fail in seconds, as they would in minutes with the defaults."""

from __future__ import annotations

import base64
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import oci
import pytest
from error_line import error_line_after_steps
from hostile import (
    HOSTILE_CONFIGS,
    MT_CONFIG,
    MT_MANIFEST,
    Blob,
    Image,
    busybox_tar,
    digest_of,
    empty_files_tar,
    entry,
    files_under,
    hostile_config,
    index_doc,
    layer,
    layer_tar,
    path_digest,
    platform_entry,
    serve,
)
from hostile_server import challenge, chunked_cut, drip, endless, held, raw_response, redirect, reply, servers
from oci_checks import leftovers

from shim.errors import ExitCode
from shim.oci.digest import valid

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="users are set up as root")

FAST = {"SHIMRUN_PULL_TIMEOUT": "2", "SHIMRUN_PULL_BLOB_DEADLINE": "20", "SHIMRUN_PULL_DEADLINE": "60"}
CREDS = ("sci", "secret-of-A")
BASIC = "Basic " + base64.b64encode(":".join(CREDS).encode()).decode()
CRED_ENV = {"SHIMRUN_DOCKER_USERNAME": CREDS[0], "SHIMRUN_DOCKER_PASSWORD": CREDS[1]}


@dataclass
class Box:
    """A user's directory around a pull: work/ (where out.sif goes), cache/, and files the pull
    must leave alone: victim/ beside the cache, and a short-named directory in /var/tmp."""

    root: Path
    work: Path
    cache: Path
    victim: Path
    outside: Path
    before: set[str]

    def untouched(self) -> None:
        assert not (self.work / "out.sif").exists()
        assert leftovers(self.root) == []
        for new in files_under(self.root) - self.before:
            parts = new.split("/")
            assert parts[:2] == ["cache", "blobs"] and len(parts) == 4, new
            assert len(parts[3]) in (64, 128) and all(c in "0123456789abcdef" for c in parts[3]), new
        for d in (self.victim, self.outside):
            assert sorted(p.name for p in d.iterdir()) == ["canary", "important"], d
            assert (d / "canary").read_text() == "still here\n"


@pytest.fixture
def box(user_dir: Path, user) -> Box:
    outside = Path(tempfile.mkdtemp(prefix="v.", dir="/var/tmp"))
    dirs = {name: user_dir / name for name in ("work", "victim")}
    for d in (*dirs.values(), outside):
        d.mkdir(exist_ok=True)
        for name in ("canary", "important"):
            (d / name).write_text("still here\n")
        for p in (d, *d.iterdir()):
            os.chown(p, user.uid, user.gid)
    yield Box(user_dir, dirs["work"], user_dir / "cache", dirs["victim"], outside, files_under(user_dir))
    shutil.rmtree(outside, ignore_errors=True)


def pull(shim, box: Box, ref: str, *opts: str, **env: str):
    started = time.monotonic()
    args = ["pull", *opts, "out.sif", ref] if "--no-https" in opts or "--ca-file" in opts else \
        ["pull", "--no-https", *opts, "out.sif", ref]
    r = shim.run(args, cwd=box.work, env={"SHIMRUN_CACHE": str(box.cache), **FAST, **env}, timeout=120)
    r.elapsed = time.monotonic() - started
    return r


def small_image(**section) -> Image:
    return Image.make([layer_tar([entry("hello.txt", b"hello from a small image\n")])], **section)


# ---- the honest case: the servers work, so every refusal below is the lie's doing ----

def test_an_honest_server_with_credentials_and_a_token_service_is_pulled(shim, box):
    with servers("A", "D") as (a, d):
        image = Image.make()
        serve(a, image)
        a.gate = ("Bearer token-from-D", f'Bearer realm="{d.url("/token")}",service="A"')
        d.routes["/token"] = reply(b'{"token": "token-from-D"}')
        r = pull(shim, box, f"docker://{a.host}/sci/app:1", **CRED_ENV)
        assert r.returncode == 0, r.stderr
    assert d.authorizations() == [BASIC]                 # the realm that A named got the password
    assert set(a.authorizations()) == {"Bearer token-from-D"}
    run = shim.run([box.work / "out.sif", "/bin/echo", "ran"], cwd=box.work, env={"SHIMRUN_CACHE": str(box.cache)})
    assert run.stdout.strip() == "ran", run.stderr


# ---- 1: a digest is algorithm:hex, or nothing is done with it ----

def _bad_digest(image: Image, where: str, box: Box) -> None:
    if where == "layer (absolute path)":
        image.layers[0].digest, image.layers[0].size = path_digest(f"{box.outside}/canary"), 1
    elif where == "layer (lock file through ..)":
        image.layers[0].digest = path_digest("../../../victim/important")
    elif where == "layer (upper case)":
        image.layers[0].digest = image.layers[0].digest.upper().replace("SHA256", "sha256")
    elif where == "config":
        image.config.digest = path_digest(f"{box.outside}/important")
    elif where == "diff_id":
        doc = json.loads(image.config.data)
        doc["rootfs"]["diff_ids"][0] = path_digest(f"{box.outside}/canary")
        image.config = Blob(json.dumps(doc).encode(), MT_CONFIG)


@pytest.mark.parametrize("where", ["layer (absolute path)", "layer (lock file through ..)", "layer (upper case)",
                                   "config", "diff_id"])
def test_a_digest_that_is_a_path_is_refused_before_any_file_is_touched(shim, box, where):
    with servers("A") as (a,):
        image = small_image()
        _bad_digest(image, where, box)
        serve(a, image)
        r = pull(shim, box, f"docker://{a.host}/sci/app:1")
    error_line_after_steps(r, ExitCode.IMAGE, "is not a digest", "sha256:")
    asked = [s.path.split("/blobs/", 1)[1] for s in a.log if "/blobs/" in s.path]
    assert all(valid(d) for d in asked), asked  # nothing was asked for by the bad digest
    box.untouched()


def test_an_index_entry_or_a_digest_header_that_is_not_a_digest_is_refused(shim, box):
    with servers("A") as (a,):
        image = small_image()
        serve(a, image)
        entry_ = {**platform_entry(image, "amd64"), "digest": path_digest(f"{box.outside}/canary")}
        a.routes["/v2/sci/app/manifests/idx"] = reply(json.dumps(index_doc([entry_])).encode(),
                                                      content_type="application/vnd.oci.image.index.v1+json")
        a.routes["/v2/sci/app/manifests/hdr"] = reply(image.manifest_bytes(), content_type=MT_MANIFEST,
                                                      headers={"Docker-Content-Digest": "sha256:../../x"})
        idx = pull(shim, box, f"docker://{a.host}/sci/app:idx")
        hdr = pull(shim, box, f"docker://{a.host}/sci/app:hdr")
    error_line_after_steps(idx, ExitCode.IMAGE, "manifests[0]", "is not a digest")
    error_line_after_steps(hdr, ExitCode.IMAGE, "Docker-Content-Digest", "is not a digest")
    box.untouched()


def test_sha512_digests_are_taken(shim, box):
    with servers("A") as (a,):
        image = small_image()
        for blob in (image.config, *image.layers):
            blob.digest = digest_of(blob.data, "sha512")
        serve(a, image)
        r = pull(shim, box, f"docker://{a.host}/sci/app:1")
    assert r.returncode == 0, r.stderr
    assert (box.cache / "blobs" / "sha512" / image.layers[0].digest.split(":")[1]).is_file()


# ---- 2: the config is verified on its full bytes ----

@pytest.mark.parametrize("pinned", [False, True])
def test_a_config_of_the_right_size_with_other_bytes_is_refused(shim, box, pinned):
    with servers("A") as (a,):
        image = Image.make(Entrypoint=["/bin/echo", "honest"])
        digest = serve(a, image)
        evil = image.config.data.replace(b"honest", b"pwned!")
        assert len(evil) == len(image.config.data)
        a.routes[f"/v2/sci/app/blobs/{image.config.digest}"] = reply(evil)
        ref = f"docker://{a.host}/sci/app" + (f"@{digest}" if pinned else ":1")
        r = pull(shim, box, ref, *(["--deterministic"] if pinned else []))
    error_line_after_steps(r, ExitCode.IMAGE, image.config.digest[:19], "digest")
    box.untouched()


# ---- 3, 4, 5: where credentials may go ----

@pytest.mark.parametrize("given", ["environment", "auth file"])
def test_credentials_never_follow_a_redirect_to_another_host(shim, box, user, given):
    authfile = box.root / "auth.json"
    with servers("A", "C", "D") as (a, c, d):
        authfile.write_text(json.dumps({"auths": {a.host: {"auth": base64.b64encode(b"sci:secret-of-A").decode()}}}))
        os.chown(authfile, user.uid, user.gid)
        image = small_image()
        serve(a, image)
        a.gate = (BASIC, 'Basic realm="A"')
        a.routes[f"/v2/sci/app/blobs/{image.config.digest}"] = redirect(c.url("/storage/config"))
        c.routes["/storage/config"] = challenge(f'Bearer realm="{d.url("/token")}",service="C"')
        d.routes["/token"] = reply(b'{"token": "stolen"}')
        opts = ["--authfile", str(authfile)] if given == "auth file" else []
        r = pull(shim, box, f"docker://{a.host}/sci/app:1", *opts, **(CRED_ENV if given == "environment" else {}))
    error_line_after_steps(r, ExitCode.AUTH, a.host, c.host)
    assert d.log == [] and c.authorizations() == []
    assert a.authorizations() and set(a.authorizations()) == {BASIC}
    assert [s.path for s in c.log] == ["/storage/config"]
    authfile.unlink()
    box.untouched()


@pytest.mark.parametrize("realm", ["file", "ftp", "data"])
def test_a_token_realm_that_is_not_http_is_never_opened(shim, box, user, realm):
    secret = box.root / "secret.json"
    secret.write_text('{"token": "TOKEN-FROM-A-FILE"}')
    os.chown(secret, user.uid, user.gid)
    url = {"file": f"file://{secret}#", "ftp": "ftp://127.0.0.1:1/token",
           "data": 'data:,{"token":"TOKEN-FROM-DATA"}'}[realm]
    with servers("A") as (a,):
        serve(a, small_image())
        a.gate = ("Bearer never", f'Bearer realm="{url}"')
        r = pull(shim, box, f"docker://{a.host}/sci/app:1", **CRED_ENV)
    error_line_after_steps(r, ExitCode.AUTH, "token service", "https://")
    assert a.authorizations() == []
    secret.unlink()
    box.untouched()


@pytest.mark.parametrize("where", ["file", "loop"])
def test_a_redirect_to_another_scheme_or_in_a_loop_is_not_followed(shim, box, where):
    with servers("A") as (a,):
        image = small_image()
        serve(a, image)
        path = f"/v2/sci/app/blobs/{image.config.digest}"
        a.routes[path] = redirect(f"file://{box.victim}/canary" if where == "file" else a.url(path))
        r = pull(shim, box, f"docker://{a.host}/sci/app:1")
    error_line_after_steps(r, ExitCode.UNREACHABLE, a.host,
                           "only http:// and https://" if where == "file" else "5 times")
    box.untouched()


@pytest.fixture(scope="session")
def tls() -> oci.Tls:
    d = Path(tempfile.mkdtemp(prefix="shim-hostile-tls.", dir="/var/tmp"))
    d.chmod(0o755)
    yield oci.make_tls(d / "tls")
    shutil.rmtree(d, ignore_errors=True)


def test_a_registry_over_tls_cannot_have_the_password_sent_in_clear(shim, box, tls):
    with servers("A", cert=(str(tls.cert), str(tls.key))) as (a,), servers("D") as (d,):
        serve(a, small_image())
        a.gate = ("Bearer t", f'Bearer realm="{d.url("/token")}",service="A"')
        d.routes["/token"] = reply(b'{"token": "t"}')
        r = pull(shim, box, f"docker://{a.host}/sci/app:1", "--ca-file", str(tls.ca_file), **CRED_ENV)
    error_line_after_steps(r, ExitCode.AUTH, "token service", "not https://")
    assert d.log == []
    box.untouched()


def test_a_plain_http_realm_must_be_on_the_registrys_own_host(shim, box):
    with servers("A", "D") as (a, d):
        serve(a, small_image())
        other = d.url("/token").replace("127.0.0.1", "localhost")
        a.gate = ("Bearer t", f'Bearer realm="{other}",service="A"')
        d.routes["/token"] = reply(b'{"token": "t"}')
        r = pull(shim, box, f"docker://{a.host}/sci/app:1", **CRED_ENV)
    error_line_after_steps(r, ExitCode.AUTH, "token service", "own host")
    assert d.log == []
    box.untouched()


# ---- 6, 7: reads cut short, servers too slow ----

@pytest.mark.parametrize("how", ["content-length longer than the body", "chunked body cut"])
def test_a_manifest_cut_short_is_a_network_error(shim, box, how):
    with servers("A") as (a,):
        body = small_image().manifest_bytes()
        cut = held(body[:40], len(body)) if how.startswith("content") else chunked_cut(body[:40])
        a.routes["/v2/sci/app/manifests/1"] = cut
        r = pull(shim, box, f"docker://{a.host}/sci/app:1")
    error_line_after_steps(r, ExitCode.UNREACHABLE, a.host, "manifest")
    assert r.elapsed < 20
    box.untouched()


@pytest.mark.parametrize("part", ["status line", "manifest body", "layer body"])
def test_a_server_dripping_bytes_is_stopped_by_the_minimum_rate(shim, box, part):
    with servers("A") as (a,):
        image = small_image()
        serve(a, image)
        if part == "layer body":
            raw = raw_response(image.layers[0].data)
            a.routes[f"/v2/sci/app/blobs/{image.layers[0].digest}"] = drip(raw, 0.3, len(raw) - 100)
        else:
            raw = raw_response(image.manifest_bytes(), MT_MANIFEST)
            a.routes["/v2/sci/app/manifests/1"] = drip(raw, 0.3, 0 if part == "status line" else len(raw) - 100)
        r = pull(shim, box, f"docker://{a.host}/sci/app:1", SHIMRUN_PULL_TIMEOUT="1")
    error_line_after_steps(r, ExitCode.UNREACHABLE, a.host, "too slow", "bytes/s")
    assert r.elapsed < 15
    box.untouched()


@pytest.mark.parametrize("deadline", ["SHIMRUN_PULL_DEADLINE", "SHIMRUN_PULL_BLOB_DEADLINE"], ids=["pull", "blob"])
def test_a_drip_fast_enough_for_the_rate_ends_at_the_deadline(shim, box, deadline):
    """The rate is measured over 60 s here, so only the deadline can stop the drip: the pull's
    (the blob's own, at a rate of 1 byte/s, would be minutes), or the blob's (its size adds
    nothing at 10,000 bytes/s)."""
    rate = "1" if deadline == "SHIMRUN_PULL_DEADLINE" else "10000"
    limits = {"SHIMRUN_PULL_TIMEOUT": "60", "SHIMRUN_PULL_MIN_RATE": rate, deadline: "3"}
    with servers("A") as (a,):
        image = small_image()
        serve(a, image)
        raw = raw_response(image.layers[0].data)
        a.routes[f"/v2/sci/app/blobs/{image.layers[0].digest}"] = drip(raw, 0.1)  # 10 bytes/s: above 1
        r = pull(shim, box, f"docker://{a.host}/sci/app:1", **limits)
    error_line_after_steps(r, ExitCode.UNREACHABLE, a.host, deadline)
    assert r.elapsed < 20
    box.untouched()


# ---- 8: what a registry says reaches the terminal escaped and bounded ----

FORGED = "x\nshimrun: wrote /home/you/important.sif\x1b]0;owned\x07\x1b[2J"


def test_fifteen_thousand_forged_platforms_give_one_short_line(shim, box):
    with servers("A") as (a,):
        image = small_image()
        entries = [{**platform_entry(image, f"{FORGED if i == 0 else 'p'}{i}"), "digest": digest_of(str(i).encode())}
                   for i in range(15000)]
        a.routes["/v2/sci/app/manifests/1"] = reply(json.dumps(index_doc(entries)).encode(),
                                                    content_type="application/vnd.oci.image.index.v1+json")
        r = pull(shim, box, f"docker://{a.host}/sci/app:1")
    line = error_line_after_steps(r, ExitCode.ARCH, "linux/x\\nshimrun: wrote", "\\x1b]0;owned", "more characters)",
                          "linux/p1,",
                          "and 14992 more")
    assert len(line) < 2000
    box.untouched()


def test_a_registry_error_message_is_escaped(shim, box):
    with servers("A") as (a,):
        errors = {"errors": [{"code": "EVIL\n\x1b[31m", "message": FORGED}]}
        a.routes["/v2/sci/app/manifests/1"] = reply(json.dumps(errors).encode(), 500, content_type="application/json")
        r = pull(shim, box, f"docker://{a.host}/sci/app:1")
    error_line_after_steps(r, ExitCode.UNREACHABLE, "HTTP 500 EVIL\\n\\x1b[31m", "shimrun: wrote")
    box.untouched()


def test_a_symlink_target_in_a_refusal_is_escaped(shim, box):
    with servers("A") as (a,):
        members = [entry("lib", kind=tarfile.SYMTYPE, link=f"{FORGED}/etc"), entry("lib/x", b"x")]
        serve(a, Image.make([layer_tar(members)]))
        r = pull(shim, box, f"docker://{a.host}/sci/app:1")
    error_line_after_steps(r, ExitCode.IMAGE, "symlink", "\\x1b]0;owned")
    box.untouched()


# ---- 9, 10: downloads, decompression and entries are bounded ----

def test_zeros_after_the_tars_end_count_against_the_size_cap(shim, box):
    tar = layer_tar([entry("a", b"a")]) + b"\0" * (40 << 20)
    with servers("A") as (a,):
        serve(a, Image.make([tar]))
        capped = pull(shim, box, f"docker://{a.host}/sci/app:1", "--max-size", "1M")
        error_line_after_steps(capped, ExitCode.IMAGE, "layer 1", "decompresses past the size cap", "--max-size")
        assert capped.elapsed < 30
        box.untouched()
        whole = pull(shim, box, f"docker://{a.host}/sci/app:1")  # without the cap: a (dull) image
    assert whole.returncode == 0, whole.stderr


@pytest.mark.parametrize("cap", [["--max-size", "1M"], []])
def test_a_layer_declaring_a_tebibyte_is_not_downloaded(shim, box, cap):
    with servers("A") as (a,):
        image = small_image()
        image.layers[0].size = 1 << 40
        serve(a, image)
        a.routes[f"/v2/sci/app/blobs/{image.layers[0].digest}"] = endless([0])
        r = pull(shim, box, f"docker://{a.host}/sci/app:1", *cap)
    error_line_after_steps(r, ExitCode.IMAGE, "declares 1099511627776 bytes", "size cap")
    assert not any(image.layers[0].digest in s.path for s in a.log)
    box.untouched()


def test_a_blob_longer_than_it_declares_is_stopped(shim, box):
    sent = [0]
    with servers("A") as (a,):
        image = small_image()
        serve(a, image)
        a.routes[f"/v2/sci/app/blobs/{image.layers[0].digest}"] = endless(sent)
        r = pull(shim, box, f"docker://{a.host}/sci/app:1")
    error_line_after_steps(r, ExitCode.IMAGE, image.layers[0].digest[:19])
    assert r.elapsed < 20
    box.untouched()


def test_the_sites_entry_cap_stops_a_layer_of_many_files(shim, box, world_dir):
    conf = Path(tempfile.mkdtemp(prefix="conf.", dir=world_dir))
    conf.chmod(0o755)
    (conf / "shim.toml").write_text("[pull]\nmax_entries = 1000\n")
    (conf / "shim.toml").chmod(0o644)
    with servers("A") as (a,):
        serve(a, Image.make([empty_files_tar(3000)]))
        capped = pull(shim, box, f"docker://{a.host}/sci/app:1", SHIMRUN_CONF=str(conf))
        error_line_after_steps(capped, ExitCode.IMAGE, "1000 entries", "max_entries")
        box.untouched()
        uncapped = pull(shim, box, f"docker://{a.host}/sci/app:1")
    assert uncapped.returncode == 0, uncapped.stderr


def test_memory_does_not_grow_with_the_entries_read():
    """100,000 members of one name (a tree of one file): what the flattener keeps stays small
    (tarfile alone would keep every member's header: tens of MiB)."""
    import contextlib
    import io
    import tracemalloc

    from shim.oci.flatten import Flattener, FlattenOptions
    from shim.oci.model import Descriptor, Layer, ResolvedImage

    one = tarfile.TarInfo("same").tobuf(tarfile.USTAR_FORMAT)
    tar = one * 100_000 + b"\0" * 1024
    blob, diff_id = layer(tar, compress=False)
    desc = Descriptor(blob.media_type, blob.digest, len(blob.data))
    image = ResolvedImage("test", "", {}, "", (Layer(desc, diff_id, 1),),
                          lambda _d: contextlib.nullcontext(io.BytesIO(blob.data)))
    flat = Flattener(image, FlattenOptions(max_bytes=1 << 30))
    tracemalloc.start()
    flat.plan()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert flat.opts.entries == 100_000
    assert peak < 8 << 20, f"{peak} bytes at the peak"


# ---- 11: config values a launch could not use ----

@pytest.mark.parametrize("field", sorted(HOSTILE_CONFIGS))
def test_config_values_a_launch_cannot_use_are_refused_at_pull(shim, box, field):
    with servers("A") as (a,):
        image = Image.make([layer_tar([entry("a", b"a")])])
        image.config = Blob(hostile_config(field), MT_CONFIG)
        serve(a, image)
        r = pull(shim, box, f"docker://{a.host}/sci/app:1")
    error_line_after_steps(r, ExitCode.IMAGE, "config " + field.split(" ")[0])
    box.untouched()


def test_a_stored_config_with_a_nul_is_one_line_at_launch(shim, box):
    """A SIF whose oci-config.json another tool wrote with a NUL in the Env: each launch says so
    in one line (it used to stop with an internal error)."""
    with servers("A") as (a,):
        serve(a, Image.make([busybox_tar()], Env=["PATH=/bin", "A=12345678"]))
        assert pull(shim, box, f"docker://{a.host}/sci/app:1").returncode == 0
    sif = box.work / "out.sif"
    data = sif.read_bytes()
    assert data.count(b'"A=12345678"') == 1
    sif.write_bytes(data.replace(b'"A=12345678"', b'"A=\\u0000xy"'))
    r = shim.run([sif, "/bin/echo", "hi"], cwd=box.work, env={"SHIMRUN_CACHE": str(box.cache)})
    error_line_after_steps(r, ExitCode.IMAGE, "config Env[1]", "NUL")
