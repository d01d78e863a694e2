"""Offline stand-ins for the Docker Hub images the CWL v1.2 conformance suite pulls, built from
cached recipes and placed where cwltool looks before it runs `singularity pull docker://...`.

There is no Docker Hub here, so each image the suite names is built from a recipe instead:

    docker.io/debian:stable-slim  Debian 12 minbase                     Cmd bash
    docker.io/python:3-slim       Debian 12 minbase + python3,          Cmd python3
                                  /usr/local/bin/python (the real image has its Python there)
    docker.io/bash:4.4            Debian 12 minbase, bash also at       Entrypoint docker-entrypoint.sh,
                                  /usr/local/bin/bash                   Cmd bash (the real image's)
    docker.io/alpine:latest       Debian's static busybox and its       Cmd /bin/sh
                                  applets, nothing else

They are stand-ins: the same commands at the same paths, not the same bits (Debian's bash 5.2 for
bash 4.4, busybox for Alpine's userland). Each carries /.singularity.d/runscript and the Docker
Env script as `singularity pull` writes them (from the image's Entrypoint, Cmd and Env), written
by shim's own OCI code, so `singularity run` (cwltool's verb) behaves as with a pulled image.

Rootfs and SIF are cached like every test image (tests/images.py: keyed by the recipe's hash,
built once under a lock); the SIF is then linked into cwltool's cache directory under the name
cwl-utils' SingularityImagePuller gives a pulled image (`docker.io_s_debian:stable-slim.sif`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import images

from shim.oci.config import ENV_SCRIPT, RUNSCRIPT, env_script, runscript

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX = Path("/bin/busybox")

# The bash image's own entrypoint (docker-library/bash): options alone run bash with them.
BASH_ENTRYPOINT = """#!/usr/bin/env bash
set -Eeuo pipefail
# first arg is `-f` or `--some-option`, or there are no args: docker run bash -c 'echo hi'
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
	exec bash "$@"
fi
exec "$@"
"""


@dataclass(frozen=True)
class StandIn:
    """One image of the suite: its reference, its OCI execution config, how its root is made."""

    ref: str                       # as the suite's dockerPull names it
    config: dict                   # Env, Entrypoint, Cmd (what `singularity pull` turns into files)
    packages: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()    # further mmdebstrap customize hooks
    busybox: bool = False          # a busybox-only root instead of Debian


def _file_hook(path: str, text: str, mode: str = "0755") -> str:
    """A customize hook writing `text` to `path` in the root."""
    assert "\nSHIM_EOF\n" not in text
    return (f'mkdir -p "$1{os.path.dirname(path)}" && cat > "$1{path}" <<\'SHIM_EOF\'\n{text}SHIM_EOF\n'
            f'chmod {mode} "$1{path}"')


def _apptainer_files(config: dict) -> dict[str, str]:
    return {ENV_SCRIPT: env_script(config), RUNSCRIPT: runscript(config)}


STAND_INS: tuple[StandIn, ...] = (
    StandIn("docker.io/debian:stable-slim", {"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": ["bash"]}),
    StandIn("docker.io/python:3-slim",
            {"Env": [f"PATH={DEFAULT_PATH}", "LANG=C.UTF-8"], "Cmd": ["python3"]},
            packages=("python3",),
            hooks=('ln -s /usr/bin/python3 "$1/usr/local/bin/python"',)),
    StandIn("docker.io/bash:4.4",
            {"Env": [f"PATH={DEFAULT_PATH}"], "Entrypoint": ["docker-entrypoint.sh"], "Cmd": ["bash"]},
            hooks=('ln -s /bin/bash "$1/usr/local/bin/bash"',
                   _file_hook("/usr/local/bin/docker-entrypoint.sh", BASH_ENTRYPOINT))),
    StandIn("docker.io/alpine:latest", {"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": ["/bin/sh"]}, busybox=True),
)


def _slug(ref: str) -> str:
    """docker.io/python:3-slim -> cwl-python-3-slim (a recipe name)."""
    return "cwl-" + ref.split("/", 1)[1].replace(":", "-").replace("/", "-")


def recipe(image: StandIn) -> images.Recipe:
    """The mmdebstrap recipe of a Debian-based stand-in (its hash keys the cache)."""
    files = [_file_hook(path, text) for path, text in _apptainer_files(image.config).items()]
    return images.Recipe(name=_slug(image.ref), suite="bookworm", variant="minbase", packages=image.packages,
                         customize=(*image.hooks, *files))


def _busybox_key(image: StandIn) -> str:
    h = hashlib.sha256(BUSYBOX.read_bytes())
    h.update(json.dumps(image.config, sort_keys=True).encode())
    h.update(str(images.IMAGES_VERSION).encode())
    return h.hexdigest()[:16]


def _busybox_root(image: StandIn) -> Path:
    """CACHE/cwl-alpine-latest-<key>/rootfs: /bin/busybox with a link per applet, /etc basics."""
    def make(tmp: Path) -> None:
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "etc", "tmp", "root", "home", "proc",
                  "sys", "dev", "var/tmp", "run"):
            (tmp / d).mkdir(parents=True, exist_ok=True)
        shutil.copy(BUSYBOX, tmp / "bin/busybox")
        applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
        for name in applets:
            if name != "busybox" and not (tmp / "bin" / name).exists():
                (tmp / "bin" / name).symlink_to("busybox")
        (tmp / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        (tmp / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
        (tmp / "etc/os-release").write_text('NAME="busybox stand-in for docker.io/alpine:latest"\nID=busybox\n')
        for path, text in _apptainer_files(image.config).items():
            target = tmp / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        subprocess.run(["chmod", "-R", "a+rX", str(tmp)], check=True)
        (tmp / "tmp").chmod(0o1777)
        for path in _apptainer_files(image.config):
            (tmp / path.lstrip("/")).chmod(0o755)

    d = images.cache_root() / f"{_slug(image.ref)}-{_busybox_key(image)}"
    images._mkdir_world(d)
    return images.cached(d / "rootfs", make)


def build(image: StandIn, shimrun: str) -> Path:
    """The stand-in's SIF in the test cache, built (once) with `shimrun build` from its root."""
    if not image.busybox:
        return images.build_sif(recipe(image))
    root = _busybox_root(image)

    def make(tmp: Path) -> None:
        done = subprocess.run([shimrun, "build", "--deterministic", str(tmp), str(root)], capture_output=True,
                              text=True, check=False, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"shimrun build {root} failed ({done.returncode}): {done.stderr or done.stdout}")
        tmp.chmod(0o644)

    return images.cached(root.parent / f"image-{images._writer_key()}.sif", make)


def pulled_name(ref: str) -> str:
    """The file name cwl-utils' SingularityImagePuller gives `singularity pull docker://REF`'s
    image (Apptainer >= 3: .sif; '_' escaped as '___', '/' as '_s_'; no tag means :latest)."""
    if ":" not in ref.rsplit("/", 1)[-1]:
        ref += ":latest"
    return ref.replace("_", "___").replace("/", "_s_") + ".sif"


def place(cache_dir: Path, shimrun: str, refs: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Build (or reuse) the stand-ins and put each in `cache_dir` (CWL_SINGULARITY_CACHE) under
    its pulled name, hard-linked when on the same file system, world-readable."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    placed = {}
    for image in STAND_INS:
        if refs is not None and image.ref not in refs:
            continue
        sif = build(image, shimrun)
        dest = cache_dir / pulled_name(image.ref)
        if dest.exists():
            dest.unlink()
        try:
            os.link(sif, dest)
        except OSError:
            shutil.copyfile(sif, dest)
            dest.chmod(0o644)
        placed[image.ref] = dest
    return placed


if __name__ == "__main__":  # python3 tests/cwl_images.py CACHE_DIR: build and place every stand-in
    import sys

    shimrun = os.environ.get("SHIMRUN") or shutil.which("shimrun") or "/opt/shim/venv/bin/shimrun"
    for ref, path in place(Path(sys.argv[1]), shimrun).items():
        print(f"{ref} -> {path}", flush=True)
