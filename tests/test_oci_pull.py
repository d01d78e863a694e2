"""OCI and Docker images in, as a user gets them: pulled from a real registry (the CNCF
distribution registry on localhost, plain HTTP and TLS with basic auth), from `docker save` and
OCI archives written by skopeo, from layout directories; the file trees compared with umoci's
unpacking of the same image; every bad input one line, its exit code, and nothing left behind."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hostile
import oci
import pytest
from dirimage import busybox_dir
from error_line import error_line_after_steps
from hostile import entry as _entry
from hostile import layer_tar as _layer_tar
from oci_checks import blobs, leftovers

from shim.errors import ExitCode

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="registries and users are set up as root")


def env_for(user_dir: Path, **extra: str) -> dict[str, str]:
    return {"SHIMRUN_CACHE": str(user_dir / "cache"), **extra}


def pull(shim, user_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return shim.run(["pull", *args], cwd=user_dir, env=env_for(user_dir, **env), timeout=300)


def sif_tree(sif: Path, dest: Path) -> list[tuple]:
    return oci.tree_listing(oci.sif_rootfs(sif, dest))


def without_dev(listing: list[tuple]) -> list[tuple]:
    """/dev is the host's in every launch: shim drops the image's device nodes, an unprivileged
    umoci leaves empty files in their place."""
    return [e for e in listing if e[0] != "dev" and not e[0].startswith("dev/")]


# ---- the acceptance path ----

def test_pull_from_registry_then_run_entrypoint_env_and_workdir(shim, registry, app_layout, user_dir):
    registry.push(app_layout, "sci/app:1")
    r = pull(shim, user_dir, "--no-https", f"docker://{registry.host}/sci/app:1")
    assert r.returncode == 0, r.stderr
    sif = user_dir / "app_1.sif"
    assert sif.is_file()
    run = shim.run(["run", sif], cwd=user_dir, env=env_for(user_dir))
    assert run.returncode == 0, run.stderr
    assert "entry args: default-arg" in run.stdout           # Entrypoint + Cmd
    assert "greeting: hello from the image" in run.stdout    # Env
    assert "pwd: /work" in run.stdout                        # WorkingDir
    given = shim.run(["run", sif, "one", "two"], cwd=user_dir, env=env_for(user_dir))
    assert "entry args: one two" in given.stdout, given.stderr    # arguments replace Cmd
    # The plain form still runs a command; the image's Env applies there too.
    env = shim.run([sif, "/bin/sh", "-c", 'echo "$GREETING|$SPACED"'], cwd=user_dir, env=env_for(user_dir))
    assert env.stdout.strip() == "hello from the image|a b  c", env.stderr
    # The image's Env ranks above the host's variables (as its environment scripts do); --env above it.
    host = shim.run([sif, "/bin/sh", "-c", 'echo "$GREETING"'], cwd=user_dir, env=env_for(user_dir, GREETING="host"))
    assert host.stdout.strip() == "hello from the image"
    given_env = shim.run(["--env", "GREETING=mine", sif, "/bin/sh", "-c", 'echo "$GREETING"'], cwd=user_dir,
                         env=env_for(user_dir))
    assert given_env.stdout.strip() == "mine"
    assert leftovers(user_dir) == []


def test_inspect_shows_source_and_digest(shim, registry, app_layout, user_dir):
    registry.push(app_layout, "sci/app:1")
    assert pull(shim, user_dir, "--no-https", f"docker://{registry.host}/sci/app:1").returncode == 0
    r = shim.run(["inspect", "--json", user_dir / "app_1.sif"], cwd=user_dir)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    text = json.dumps(doc)
    assert f"docker://{registry.host}/sci/app:1" in text
    assert app_layout.manifest_digest in text


def test_an_image_without_a_shell_keeps_its_environment(shim, noshell_layout, user_dir):
    out = user_dir / "noshell.sif"
    r = shim.run(["build", out, f"oci:{noshell_layout.path}:1"], cwd=user_dir, env=env_for(user_dir))
    assert r.returncode == 0, r.stderr
    run = shim.run(["run", out], cwd=user_dir, env=env_for(user_dir))
    assert run.returncode == 0, run.stderr
    assert "GREETING=no shell here" in run.stdout.splitlines()
    # Its PATH, with the default directories it lacks appended (as after its Env script, by the shell).
    assert "PATH=/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin" in run.stdout.splitlines()


def test_three_routes_and_umoci_give_the_same_tree(shim, app_layout_gzip, user_dir, tmp_path):
    """docker-archive (legacy and Docker >= 25), oci-archive and oci: of one image: the same files,
    modes, sizes, contents and links, and the same as umoci unpacks (device nodes aside: shim
    drops them, an unprivileged umoci cannot make them)."""
    layout = app_layout_gzip
    archives = {
        "docker-archive": oci.docker_archive(layout, layout.tag, user_dir / "legacy.tar"),
        "docker25": oci.docker25_archive(layout, layout.tag, user_dir / "docker25.tar"),
        "oci-archive": oci.oci_archive(layout, layout.tag, user_dir / "oci.tar"),
    }
    for a in archives.values():
        os.chmod(a, 0o644)
    sources = {"docker-archive": f"docker-archive:{archives['docker-archive']}",
               "docker25": f"docker-archive:{archives['docker25']}",
               "oci-archive": f"oci-archive:{archives['oci-archive']}:{layout.tag}",
               "oci": f"oci:{layout.path}:{layout.tag}"}
    reference = without_dev(oci.tree_listing(oci.umoci_rootfs(layout, layout.tag, tmp_path / "umoci")))
    assert any(e[0] == "opt/old/c" for e in reference) and not any(e[0] == "opt/old/a" for e in reference)
    for name, src in sources.items():
        out = user_dir / f"{name}.sif"
        r = shim.run(["build", out, src], cwd=user_dir, env=env_for(user_dir))
        assert r.returncode == 0, f"{name}: {r.stderr}"
        assert without_dev(sif_tree(out, tmp_path / name)) == reference, name


def test_debian_image_tree_matches_umoci(shim, debian_layout, user_dir, tmp_path):
    out = user_dir / "debian.sif"
    r = shim.run(["build", out, f"oci:{debian_layout.path}:{debian_layout.tag}"], cwd=user_dir,
                 env=env_for(user_dir), timeout=300)
    assert r.returncode == 0, r.stderr
    ours = without_dev(sif_tree(out, tmp_path / "ours"))
    theirs = without_dev(oci.tree_listing(oci.umoci_rootfs(debian_layout, debian_layout.tag, tmp_path / "u")))
    assert ours == theirs
    run = shim.run(["run", out], cwd=user_dir, env=env_for(user_dir))
    assert run.returncode == 0 and "debian-app" in run.stdout, run.stderr


def test_pull_deterministic_twice_is_byte_identical(shim, registry, app_layout, user_dir):
    registry.push(app_layout, "sci/app:1")
    ref = f"docker://{registry.host}/sci/app:1"
    a = pull(shim, user_dir, "--no-https", "--deterministic", "a.sif", ref)
    b = pull(shim, user_dir, "--no-https", "--deterministic", "b.sif", ref)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    digest = [hashlib.sha256((user_dir / n).read_bytes()).hexdigest() for n in ("a.sif", "b.sif")]
    assert digest[0] == digest[1]
    # As a paper cites it: by the manifest digest.
    pinned = f"docker://{registry.host}/sci/app@{app_layout.manifest_digest}"
    c = pull(shim, user_dir, "--no-https", "--deterministic", "c.sif", pinned)
    d = pull(shim, user_dir, "--no-https", "--deterministic", "d.sif", pinned)
    assert c.returncode == 0 and d.returncode == 0, c.stderr + d.stderr
    assert (user_dir / "c.sif").read_bytes() == (user_dir / "d.sif").read_bytes()


def test_tls_registry_with_basic_auth(shim, tls_registry, app_layout, user_dir):
    tls_registry.push(app_layout, "sci/app:1")
    ref = f"docker://{tls_registry.host}/sci/app:1"
    creds = {"SHIMRUN_DOCKER_USERNAME": tls_registry.username, "SHIMRUN_DOCKER_PASSWORD": tls_registry.password}
    ok = pull(shim, user_dir, "--ca-file", str(tls_registry.ca_file), ref, **creds)
    assert ok.returncode == 0, ok.stderr
    # Apptainer's variables and a Docker auth file work too.
    ok2 = pull(shim, user_dir, "--ca-file", str(tls_registry.ca_file), "--name", "b.sif", ref,
               APPTAINER_DOCKER_USERNAME=tls_registry.username, APPTAINER_DOCKER_PASSWORD=tls_registry.password)
    assert ok2.returncode == 0, ok2.stderr
    authfile = user_dir / "auth.json"
    token = __import__("base64").b64encode(f"{tls_registry.username}:{tls_registry.password}".encode()).decode()
    authfile.write_text(json.dumps({"auths": {tls_registry.host: {"auth": token}}}))
    ok3 = pull(shim, user_dir, "--ca-file", str(tls_registry.ca_file), "--authfile", str(authfile), "c.sif", ref)
    assert ok3.returncode == 0, ok3.stderr
    # Without the CA: one line naming the problem and the fix.
    untrusted = pull(shim, user_dir, "d.sif", ref, **creds)
    error_line_after_steps(untrusted, ExitCode.UNREACHABLE, "TLS", "--ca-file")
    wrong = pull(shim, user_dir, "--ca-file", str(tls_registry.ca_file), "e.sif", ref,
                 SHIMRUN_DOCKER_USERNAME=tls_registry.username, SHIMRUN_DOCKER_PASSWORD="wrong")
    error_line_after_steps(wrong, ExitCode.AUTH, "credentials")
    assert not (user_dir / "d.sif").exists() and not (user_dir / "e.sif").exists()
    assert leftovers(user_dir) == []


def test_index_takes_this_hosts_platform_or_says_which_it_has(shim, registry, multi_layout, user_dir):
    registry.push(multi_layout, "sci/multi:multi")
    registry.push(multi_layout.with_tag("arm64-only"), "sci/multi:arm64-only")
    r = pull(shim, user_dir, "--no-https", f"docker://{registry.host}/sci/multi:multi")
    assert r.returncode == 0, r.stderr
    info = json.loads(shim.run(["inspect", "--json", user_dir / "multi_multi.sif"]).stdout)
    assert "amd64" in json.dumps(info)
    arm = pull(shim, user_dir, "--no-https", "--arch", "arm64", "arm.sif", f"docker://{registry.host}/sci/multi:multi")
    assert arm.returncode == 0, arm.stderr
    assert "arm64" in json.dumps(json.loads(shim.run(["inspect", "--json", user_dir / "arm.sif"]).stdout))
    only = pull(shim, user_dir, "--no-https", f"docker://{registry.host}/sci/multi:arm64-only")
    error_line_after_steps(only, ExitCode.ARCH, "linux/arm64", "--arch")
    assert not (user_dir / "multi_arm64-only.sif").exists() and leftovers(user_dir) == []


def _blob_gets(registry, digest: str, since: int) -> int:
    """How many times the registry served blob `digest` since its log was `since` bytes long."""
    with open(registry.log, "rb") as f:
        f.seek(since)
        return sum(1 for line in f.read().decode(errors="replace").splitlines()
                   if f"blobs/{digest}" in line and "GET" in line and "response completed" in line)


def test_sixteen_pulls_at_once_share_the_blob_cache(shim, registry, app_layout, user_dir):
    registry.push(app_layout, "sci/app:1")
    ref = f"docker://{registry.host}/sci/app:1"
    since = registry.log.stat().st_size
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: pull(shim, user_dir, "--no-https", f"p{i}.sif", ref), range(16)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    stored = blobs(user_dir)
    layer_digests = {d["digest"].split(":")[1] for d in app_layout.manifest["layers"]}
    config = app_layout.manifest["config"]["digest"]
    assert layer_digests | {config.split(":")[1]} <= set(stored)  # the image config is a cached blob too
    assert _blob_gets(registry, config, since) == 1, registry.log_tail()
    for name in stored:
        data = (user_dir / "cache/blobs/sha256" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == name
    assert leftovers(user_dir) == []
    listed = shim.run(["cache", "list", "--json"], env=env_for(user_dir))
    assert {b["digest"].split(":")[1] for b in json.loads(listed.stdout)["blobs"]} == set(stored)
    cleaned = shim.run(["cache", "clean"], env=env_for(user_dir))
    assert cleaned.returncode == 0 and blobs(user_dir) == {}


def test_pull_keeps_an_existing_file_without_force(shim, app_layout, user_dir):
    src = f"oci:{app_layout.path}:1"
    default = f"{app_layout.path.name}_1.sif"  # as Apptainer names it: the last component, then the tag
    (user_dir / default).write_text("mine")
    r = pull(shim, user_dir, src)
    error_line_after_steps(r, ExitCode.USAGE, "already exists", "--force")
    assert (user_dir / default).read_text() == "mine"
    assert pull(shim, user_dir, "--force", src).returncode == 0
    assert (user_dir / default).stat().st_size > 4096


# ---- bad input: one line, its exit code, nothing left ----

def test_a_blob_altered_in_the_registry_is_refused(shim, registry, app_layout, user_dir):
    registry.push(app_layout, "sci/damaged:1")
    layer = app_layout.manifest["layers"][0]["digest"]
    data = registry.blob_file(layer)
    good = data.read_bytes()
    raw = bytearray(good)
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))  # blobs are stored once for all repositories: put it back after
    try:
        r = pull(shim, user_dir, "--no-https", f"docker://{registry.host}/sci/damaged:1")
    finally:
        data.write_bytes(good)
    error_line_after_steps(r, ExitCode.IMAGE, layer[:19], "digest")
    assert not (user_dir / "damaged_1.sif").exists()
    assert layer.split(":")[1] not in blobs(user_dir)
    assert leftovers(user_dir) == []


def test_registry_errors(shim, registry, app_layout, user_dir):
    registry.push(app_layout, "sci/app:1")
    missing = pull(shim, user_dir, "--no-https", f"docker://{registry.host}/sci/app:nope")
    error_line_after_steps(missing, ExitCode.NO_SUCH_IMAGE, "sci/app:nope", "404")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = pull(shim, user_dir, "--no-https", f"docker://127.0.0.1:{port}/sci/app:1")
    error_line_after_steps(down, ExitCode.UNREACHABLE, f"127.0.0.1:{port}")
    assert leftovers(user_dir) == [] and not list(user_dir.glob("*.sif"))


def test_a_truncated_archive_is_refused(shim, app_layout, user_dir):
    full = oci.oci_archive(app_layout, app_layout.tag, user_dir / "full.tar")
    cut = user_dir / "cut.tar"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    os.chmod(cut, 0o644)
    r = shim.run(["build", user_dir / "cut.sif", f"oci-archive:{cut}"], cwd=user_dir, env=env_for(user_dir))
    error_line_after_steps(r, ExitCode.IMAGE, "cut.tar")
    assert not (user_dir / "cut.sif").exists() and leftovers(user_dir) == []


def _hostile_layout(dest: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """An OCI layout whose one layer (after a sane busybox one) holds `members`."""
    image = hostile.Image.make([hostile.busybox_tar(), _layer_tar(members)])
    return hostile.write_layout(dest, [image], [hostile.tagged(image, "1")])


HOSTILE = {
    "dotdot": ([_entry("../../etc/passwd", b"pwned\n")], "outside the root"),
    "absolute": ([_entry("/etc/passwd", b"pwned\n")], "absolute"),
    "symlink": ([_entry("lib", kind=tarfile.SYMTYPE, link="/etc"), _entry("lib/x", b"pwned\n")], "symlink"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_layer_is_refused_naming_layer_and_member(shim, user_dir, case):
    members, why = HOSTILE[case]
    layout = _hostile_layout(user_dir / f"layout-{case}", members)
    r = shim.run(["build", user_dir / "h.sif", f"oci:{layout}:1"], cwd=user_dir, env=env_for(user_dir))
    error_line_after_steps(r, ExitCode.IMAGE, "layer 2", members[-1][0].name, why)
    assert not (user_dir / "h.sif").exists() and leftovers(user_dir) == []


def test_a_layer_past_the_size_cap_is_refused(shim, app_layout, user_dir):
    r = shim.run(["build", "--max-size", "100K", user_dir / "big.sif", f"oci:{app_layout.path}:1"], cwd=user_dir,
                 env=env_for(user_dir))
    error_line_after_steps(r, ExitCode.IMAGE, "size cap", "--max-size")
    env = shim.run(["build", user_dir / "big.sif", f"oci:{app_layout.path}:1"], cwd=user_dir,
                   env=env_for(user_dir, SHIMRUN_PULL_MAX_SIZE="100K"))
    error_line_after_steps(env, ExitCode.IMAGE, "size cap")
    assert not (user_dir / "big.sif").exists() and leftovers(user_dir) == []


def test_source_syntax_errors_are_usage_errors(shim, user_dir):
    for bad in ("docker://UPPER/case", "docker://x:bad tag", "oci:", "docker://a@sha256:123"):
        error_line_after_steps(pull(shim, user_dir, bad), ExitCode.USAGE)
    error_line_after_steps(pull(shim, user_dir, "oci-archive:/nonexistent.tar"), ExitCode.USAGE, "/nonexistent.tar")
    shutil.rmtree(user_dir / "cache", ignore_errors=True)
    assert leftovers(user_dir) == []


def test_an_interrupted_pull_leaves_nothing(shim, debian_layout, user_dir):
    """SIGTERM (a job's time limit, scancel) while the layers stream into mksquashfs: no OUT, no
    partial file, no work directory, no helper process."""
    import time

    from leftovers import user_processes, wait_until

    out = user_dir / "debian.sif"
    proc = shim.popen(["build", out, f"oci:{debian_layout.path}:{debian_layout.tag}"], cwd=user_dir,
                      env=env_for(user_dir))
    assert wait_until(lambda: any(".build." in p.name for p in user_dir.iterdir()) or proc.poll() is not None,
                      timeout=60, step=0.01)
    time.sleep(0.2)
    proc.terminate()
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not out.exists() and leftovers(user_dir) == []
    assert wait_until(lambda: "mksquashfs" not in user_processes(shim.user.uid).values(), timeout=10)


def test_progress_one_rule_for_pull_and_build(shim, registry, app_layout, user_dir):
    """Not a terminal: one line per step, a download's once it is done, no live counts; --quiet:
    nothing at all; a terminal: the live count."""
    registry.push(app_layout, "sci/app:1")
    ref = f"docker://{registry.host}/sci/app:1"
    plain = pull(shim, user_dir, "--no-https", "a.sif", ref)
    lines = plain.stderr.splitlines()
    assert plain.returncode == 0 and "\r" not in plain.stderr, plain.stderr
    assert len([ln for ln in lines if re.fullmatch(r"shimrun: layer \d/3 .*: \d+\.\d MiB", ln)]) == 3, lines
    assert "shimrun: creating squashfs (zstd)" in lines and lines[-1].startswith("shimrun: wrote a.sif"), lines
    quiet = pull(shim, user_dir, "--no-https", "-q", "q.sif", ref, SHIMRUN_CACHE=str(user_dir / "q-cache"))
    assert (quiet.returncode, quiet.stderr) == (0, ""), quiet.stderr
    root = busybox_dir(user_dir / "root")
    built = shim.run(["build", "b.sif", root], cwd=user_dir)
    assert built.returncode == 0 and built.stderr.splitlines()[-1].startswith("shimrun: wrote b.sif"), built.stderr
    built = shim.run(["build", "--quiet", "c.sif", root], cwd=user_dir)
    assert (built.returncode, built.stderr) == (0, ""), built.stderr
    # script(1) gives the pull a pseudo-terminal as its stderr.
    line = f"{shim.shimrun} pull --no-https t.sif {ref}"
    fresh = env_for(user_dir, SHIMRUN_CACHE=str(user_dir / "fresh-cache"))  # so that it downloads
    tty = subprocess.run(
        ["script", "-qec", line, "/dev/null"], check=False, cwd=user_dir, env=shim.env(fresh),
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, user=shim.user.uid,
        group=shim.user.gid, extra_groups=[])
    assert tty.returncode == 0, tty.stdout + tty.stderr
    assert "layer 1/3" in tty.stdout and " / " in tty.stdout and "MiB" in tty.stdout, tty.stdout


def test_run_in_a_shared_container_gets_the_runscript(shim, app_layout, user_dir):
    """Ranks started together (SHIMRUN_SHARE=1: one container per parent) each get the runscript
    with their own arguments, in the image's WorkingDir, whether they lead or join."""
    out = user_dir / "app.sif"
    assert shim.run(["build", out, f"oci:{app_layout.path}:1"], cwd=user_dir, env=env_for(user_dir)).returncode == 0
    line = " & ".join(f"SHIMRUN_SHARE=1 {shim.shimrun} run {out} rank{i}" for i in range(4)) + " & wait"
    r = shim.sh(line, cwd=user_dir, env=env_for(user_dir))
    assert r.returncode == 0, r.stderr
    assert sorted(ln for ln in r.stdout.splitlines() if ln.startswith("entry args:")) == \
        [f"entry args: rank{i}" for i in range(4)]
    assert r.stdout.count("pwd: /work") == 4


def test_the_blob_cache_keeps_to_its_cap(shim, app_layout, noshell_layout, registry, user_dir):
    registry.push(app_layout, "sci/app:1")
    registry.push(noshell_layout, "sci/noshell:1")
    cap = {"SHIMRUN_CACHE_MAX": "1K"}
    assert pull(shim, user_dir, "--no-https", f"docker://{registry.host}/sci/app:1", **cap).returncode == 0
    app_blobs = {d["digest"].split(":")[1] for d in app_layout.manifest["layers"]}
    assert app_blobs <= set(blobs(user_dir))      # the pull's own blobs stay, past the cap
    assert pull(shim, user_dir, "--no-https", f"docker://{registry.host}/sci/noshell:1", **cap).returncode == 0
    left = set(blobs(user_dir))
    assert not (app_blobs & left)                 # the earlier pull's went
    assert {d["digest"].split(":")[1] for d in noshell_layout.manifest["layers"]} <= left


def test_bearer_tokens_as_public_registries_hand_them_out(shim, token_registry, app_layout, user_dir):
    """A registry with token auth (a JWT signed by the test's CA): public repositories are pulled
    with an anonymous token, private ones with a token got with the user's credentials."""
    token_registry.push(app_layout, "public/app:1")
    token_registry.push(app_layout, "private/app:1")
    host = token_registry.host
    anonymous = pull(shim, user_dir, "--no-https", "pub.sif", f"docker://{host}/public/app:1")
    assert anonymous.returncode == 0, anonymous.stderr + token_registry.log_tail()
    refused = pull(shim, user_dir, "--no-https", "priv.sif", f"docker://{host}/private/app:1")
    error_line_after_steps(refused, ExitCode.AUTH, "private/app", "SHIMRUN_DOCKER_USERNAME")
    creds = {"SHIMRUN_DOCKER_USERNAME": token_registry.username, "SHIMRUN_DOCKER_PASSWORD": token_registry.password}
    ok = pull(shim, user_dir, "--no-https", "priv.sif", f"docker://{host}/private/app:1", **creds)
    assert ok.returncode == 0, ok.stderr + token_registry.log_tail()
    wrong = pull(shim, user_dir, "--no-https", "w.sif", f"docker://{host}/private/app:1",
                 SHIMRUN_DOCKER_USERNAME=token_registry.username, SHIMRUN_DOCKER_PASSWORD="nope")
    error_line_after_steps(wrong, ExitCode.AUTH, "credentials")
    run = shim.run(["run", user_dir / "pub.sif"], cwd=user_dir, env=env_for(user_dir))
    assert "greeting: hello from the image" in run.stdout, run.stderr
    assert leftovers(user_dir) == [] and not (user_dir / "w.sif").exists()


def test_an_output_directory_the_user_cannot_write_is_one_line(shim, app_layout, user_dir, world_dir):
    """(It was an internal error: PermissionError from the build directory beside OUT.)"""
    out = world_dir / "app.sif"  # world_dir is root's, 0755
    for cache in ("cache", ""):  # with a blob cache, and without one (the temporary one goes beside OUT)
        r = shim.run(["build", out, f"oci:{app_layout.path}:1"], cwd=user_dir,
                     env={"SHIMRUN_CACHE": str(user_dir / cache) if cache else ""})
        error_line_after_steps(r, ExitCode.USAGE, str(world_dir), "Permission denied")
    assert not out.exists()
