"""How the container's root filesystem is provided: a squashfuse mount, or (FUSE unusable) a
copy extracted once with unsquashfs into a per-user cache keyed by the partition's digest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

from shim.cachefiles import cache_path, cache_root, read_trusted, untrusted, write_atomic
from shim.errors import ExitCode, ShimError
from shim.image.open import ImageRef
from shim.launch.kept import wants_kept

FUSE_DEVICE = "/dev/fuse"
SQUASHFUSE_NAMES = ("squashfuse_ll", "squashfuse")


@dataclass(frozen=True)
class RootfsSource:
    kind: str               # "squashfs" (mounted by the C core with `squashfuse`), "kept" (the same,
                            # joined from the user's kept mount: shim/launch/kept.py) or "dir"
    path: str
    offset: int = 0
    squashfuse: str = ""


def fuse_problem(env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
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


def _extraction_dir(reason: str) -> str:
    """CACHE/rootfs, made if missing; ShimError (69) when there is no private place for it."""
    root = cache_root()
    if root.path is None:
        raise ShimError(ExitCode.HOST, f"FUSE is unusable ({reason}) and there is no private cache to extract the "
                        f"image into: {root.problem}", "set SHIMRUN_CACHE to a directory of your own, or make "
                        "squashfuse usable (README, \"Installing on a cluster\")")
    rootfs_dir = os.path.join(root.path, "rootfs")
    try:
        os.makedirs(rootfs_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ShimError(ExitCode.HOST, f"FUSE is unusable ({reason}) and the image cannot be extracted: cannot "
                        f"create {rootfs_dir}: {e.strerror}",
                        "set SHIMRUN_CACHE to a directory you can write") from None
    problem = untrusted(rootfs_dir, leaf_is_file=False)
    if problem:
        raise ShimError(ExitCode.HOST, f"FUSE is unusable ({reason}) and the extraction directory is not private: "
                        f"{problem}", "set SHIMRUN_CACHE to a directory of your own (mode 0700)")
    return rootfs_dir


def _partition_digest(image: ImageRef) -> str:
    """sha256 of the squashfs bytes, memoised per file identity (of the opened image: the file
    the policy judged) so a reuse reads nothing."""
    st = image.opened.st if image.opened is not None else os.stat(image.path)
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{image.offset}:{image.size}"
    memo = cache_path("digests", hashlib.sha256(ident.encode()).hexdigest()[:32])
    try:
        raw = read_trusted(memo)
        if raw is not None:
            return json.loads(raw)["sha256"]
    except (ValueError, KeyError, TypeError):
        pass
    h = hashlib.sha256()
    with open(image.via, "rb") as f:
        f.seek(image.offset)
        left = image.size
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    digest = h.hexdigest()
    write_atomic(memo, json.dumps({"sha256": digest, "identity": ident}).encode())
    return digest


def _remove_stale_partials(rootfs_dir: str) -> None:
    """Extractions interrupted by a kill leave DIGEST.partial.PID; drop those whose PID is gone."""
    for name in os.listdir(rootfs_dir):
        pid = name.rpartition(".partial.")[2]
        if ".partial." in name and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(rootfs_dir, name), ignore_errors=True)


def _unsquashfs(image: ImageRef, dest: str) -> None:
    from shim import native

    exe = shutil.which("unsquashfs")
    if exe is None:
        raise ShimError(ExitCode.HOST, "FUSE is unusable and unsquashfs is not installed, so the image cannot be "
                        "opened", "install squashfuse or squashfs-tools (apt-get install squashfuse squashfs-tools)")
    # -no-xattrs: an unprivileged user cannot write security.* xattrs (unsquashfs would fail);
    # the regex (matched against top-level names) skips dev: device nodes cannot be made, and
    # the host's /dev is bound there.
    # The image through its opened descriptor (inherited): the file the policy judged.
    keep = (image.opened.fd,) if image.opened is not None else ()
    cmd = [exe, "-n", "-no-xattrs", "-o", str(image.offset), "-d", dest, "-r", image.via,
           r"^([^d].*|d[^e].*|de[^v].*|dev.+|de|d)$"]
    import subprocess  # only for an extraction

    proc = subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          preexec_fn=native.die_with_parent, pass_fds=keep)
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise ShimError(ExitCode.IMAGE, f"extracting {image.path} with unsquashfs failed: {last}",
                        "check free space in " + os.path.dirname(dest))


def _reuse_line(reason: str, final: str) -> str:
    return f"shimrun: FUSE unusable ({reason}); using the copy of this image extracted in {final}"


def extracted_rootfs(image: ImageRef, reason: str, quiet: bool = False) -> str:
    """The extracted copy of the image's squashfs, making it the first time. Prints one line
    (unless quiet)."""
    rootfs_dir = _extraction_dir(reason)
    digest = _partition_digest(image)
    final = os.path.join(rootfs_dir, digest)
    _remove_stale_partials(rootfs_dir)  # on every launch that looks here, warm ones too
    problem = untrusted(final, leaf_is_file=False)
    if problem:  # cannot happen in a private directory; if it does, it is not ours to run
        raise ShimError(ExitCode.HOST, f"the extracted copy of this image is not to be trusted: {problem}",
                        f"remove {final}, and keep {rootfs_dir} private (mode 0700)")
    if os.path.isdir(final):
        if not quiet:
            print(_reuse_line(reason, final), file=sys.stderr)
        return final
    partial = f"{final}.partial.{os.getpid()}"
    start = time.monotonic()
    try:
        _unsquashfs(image, partial)
        os.makedirs(os.path.join(partial, "dev"), exist_ok=True)
        try:
            os.rename(partial, final)
        except OSError:  # a concurrent run finished first; use its copy
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    took = time.monotonic() - start
    if not quiet:
        print(f"shimrun: FUSE unusable ({reason}); extracted the image ({image.size / 2**20:.0f} MiB squashfs) "
              f"to {final} in {took:.1f} s; later runs reuse it", file=sys.stderr)
    return final


def choose_rootfs(image: ImageRef, quiet: bool = False) -> tuple[RootfsSource, tuple[str, ...]]:
    """Where the root comes from, and the lines a later launch of it prints (they are printed
    now, as it is chosen)."""
    if image.kind == "dir":
        return RootfsSource("dir", image.path), ()
    problem = fuse_problem()
    if problem is None:
        exe = next(p for p in (shutil.which(n) for n in SQUASHFUSE_NAMES) if p)
        # the hook a serving choice (--serve, the site's [serve]) replaces: SHIMRUN_SERVE=kept
        kind = "kept" if wants_kept(os.environ) else "squashfs"
        return RootfsSource(kind, image.path, image.offset, exe), ()
    final = extracted_rootfs(image, problem, quiet)
    return RootfsSource("dir", final), (() if quiet else (_reuse_line(problem, final),))
