"""How the container's root filesystem is provided: a squashfuse mount (per launch, or kept), or a
node-local copy unpacked once (shim/launch/unpack.py) into a private local directory, keyed by the
partition's digest; which one, shim/launch/serve.py decides."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from shim.cachefiles import cache_root
from shim.errors import ExitCode, ShimError
from shim.image.open import ImageRef
from shim.launch.serve import (
    DIR,
    KEPT,
    UNPACK,
    ServeDecision,
    ServeFacts,
    Target,
    asked_mode,
    cap_bytes,
    decide_serve,
    fs_type_of,
    is_network_fs,
    local_target,
    read_mountinfo,
    squashfs_size,
)
from shim.launch.staging import Staged, drop_staged, stage_mode, staged_copy, staged_dir, staging_reason
from shim.launch.unpack import Stage, known_digest, unpacked_root
from shim.site.serve_config import ServeSettings

FUSE_DEVICE = "/dev/fuse"
SQUASHFUSE_NAMES = ("squashfuse_ll", "squashfuse")


@dataclass(frozen=True)
class RootfsSource:
    kind: str               # "squashfs" (mounted by the C core with `squashfuse`), "kept" (the same,
                            # joined from the user's kept mount: shim/launch/kept.py) or "dir"
    path: str
    offset: int = 0
    squashfuse: str = ""


def fuse_problem(env: Mapping[str, str] = os.environ) -> str | None:
    """Why an unprivileged squashfuse mount cannot work here, or None if it can."""
    if env.get("SHIMRUN_NO_FUSE"):
        return "SHIMRUN_NO_FUSE is set"
    if not any(shutil.which(n) for n in SQUASHFUSE_NAMES):
        return "squashfuse is not installed"
    if not os.path.exists(FUSE_DEVICE):
        return f"{FUSE_DEVICE} does not exist"
    if not os.access(FUSE_DEVICE, os.R_OK | os.W_OK):
        return f"{FUSE_DEVICE} is not readable and writable by you (an admin can chmod 0666 it)"
    return None


class Served(NamedTuple):
    decision: ServeDecision
    source: RootfsSource
    notices: tuple[str, ...]    # lines a later launch of the record prints (printed now, as it is chosen)
    lock: str = ""              # an unpacked root's lock file (the record's ROOT_LOCK), "" none
    watch: str = ""             # a path whose change makes the next launch plan again, "" none


class ServeRequest(NamedTuple):
    settings: ServeSettings     # the site's [serve]
    option: str | None          # --serve
    environ: Mapping[str, str]
    quiet: bool = False
    dry_run: bool = False       # decide and say, unpack nothing (unless FUSE leaves no other way to look)


def _facts(image: ImageRef, req: ServeRequest, mountinfo: str) -> tuple[ServeFacts, int]:
    """What the choice is made over, and the cap in bytes."""
    asked, by = asked_mode(req.option, req.environ, req.settings.mode)
    if image.kind == "dir":
        return ServeFacts("dir", asked, by, 0, 0, None, Target(""), 0, False), 0
    root = cache_root()
    target = local_target(req.settings.local_dir, root.path, root.problem, mountinfo)
    cap = cap_bytes(req.settings.unpack_cap, target)
    fd = image.opened.fd if image.opened is not None else -1
    try:
        used, inodes = squashfs_size(fd, image.offset, image.size) if fd >= 0 else (image.size, 0)
    except (OSError, ShimError):
        used, inodes = image.size, 0
    digest = known_digest(image) if target.path else None
    unpacked = digest is not None and os.path.isdir(os.path.join(target.path, digest))
    return ServeFacts("squashfs", asked, by, used, inodes, fuse_problem(req.environ), target, cap, unpacked), cap


def _mounted(image: ImageRef, kind: str = "squashfs") -> RootfsSource:
    """A squashfuse mount: for this launch ("squashfs"), or the user's kept one on the node ("kept")."""
    exe = next(p for p in (shutil.which(n) for n in SQUASHFUSE_NAMES) if p)
    return RootfsSource(kind, image.path, image.offset, exe)


def serve_image(image: ImageRef, req: ServeRequest) -> Served:
    """How the image is served (shim/launch/serve.py decides), its root made ready: a copy
    unpacked (or found) in the node-local directory, or a squashfuse mount for the C core."""
    mountinfo = read_mountinfo()
    facts, cap = _facts(image, req, mountinfo)
    decision = decide_serve(facts)
    if decision.mode == DIR:
        return Served(decision, RootfsSource("dir", image.path), ())
    stage_why = _stage_reason(image, req, mountinfo)
    staged_at, refused, said = "", "", ()
    if stage_why and not facts.target.path:
        decision = decision._replace(stage=f"not staged ({stage_why}): no local directory: {facts.target.problem}")
        stage_why = ""
    elif stage_why:
        staged_at, refused = staged_dir(facts.target.path)
        if refused:  # said by every launch of the record; a change to the directory plans again
            decision = decision._replace(stage=f"not staged ({stage_why}): {refused}")
            stage_why, said = "", () if req.quiet else (f"shimrun: notice: the image is not staged: {refused}",)
            for line in said:
                print(line, file=sys.stderr)
        else:
            decision = decision._replace(stage=f"staged to {staged_at} ({stage_why})")
    if decision.mode != UNPACK:
        kind = "kept" if decision.mode == KEPT else "squashfs"
        if not stage_why or req.dry_run:
            return Served(decision, _mounted(image, kind), said, watch=staged_at if refused else "")
        staged = staged_copy(image, staged_at, cap)
        _say_staged(image, staged, req.quiet)
        return Served(decision, RootfsSource(kind, staged.path, 0, _mounted(image).squashfuse), (), staged.lock)
    if not decision.where:  # FUSE unusable and no local directory: nothing can open the image
        raise ShimError(ExitCode.HOST, f"{decision.reason}, and there is no local directory to unpack the image "
                        f"into: {facts.target.problem}", "set SHIMRUN_CACHE to a directory of your own on a local "
                        "file system, or make squashfuse usable (README, \"Installing on a cluster\")")
    if req.dry_run and facts.fuse_problem is None and not facts.unpacked:
        return Served(decision, _mounted(image), ())  # the look at the image reads it mounted
    why = f"FUSE unusable ({facts.fuse_problem}); " if facts.fuse_problem is not None else ""
    stage = _stager(image, staged_at, req.quiet) if stage_why else None
    got = unpacked_root(image, decision.where, cap, (req.quiet, why), stage)
    notices: tuple[str, ...] = said
    if facts.fuse_problem is not None and not req.quiet:
        line = f"shimrun: FUSE unusable ({facts.fuse_problem}); using the copy of this image unpacked in {got.path}"
        notices += (line,)
        if not got.made:
            print(line, file=sys.stderr)
    return Served(decision, RootfsSource("dir", got.path), notices, got.lock, staged_at if refused else "")


def _stage_reason(image: ImageRef, req: ServeRequest, mountinfo: str) -> str:
    """Why this launch copies its image to the node first ("" : it does not)."""
    mode, by = stage_mode(req.environ, req.settings.stage)
    if mode == "never" or image.opened is None:
        return ""
    fs = fs_type_of(image.opened.st.st_dev, mountinfo) if mode == "auto" else ""  # the opened file's
    return staging_reason(mode, by, fs, is_network_fs(fs))


def _say_staged(image: ImageRef, staged: Staged, quiet: bool) -> None:
    if staged.seconds and not quiet:
        print(f"shimrun: staged {image.path} ({image.size / 2**20:.0f} MiB) to {staged.path} in "
              f"{staged.seconds:.1f} s; later launches on this node use it", file=sys.stderr)


def _stager(image: ImageRef, directory: str, quiet: bool) -> Stage:
    """The unpack's staging: the copy made (one read of the image, in order), then dropped once
    it is unpacked."""
    def stage() -> tuple[str, ImageRef, Callable[[], None]]:
        staged = staged_copy(image, directory)
        _say_staged(image, staged, quiet)
        return staged.digest, staged.source(image), lambda: drop_staged(staged)
    return stage
