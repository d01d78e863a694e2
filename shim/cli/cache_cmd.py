"""`shimrun cache list|clean`: the blob cache that pulls share ($SHIMRUN_CACHE/blobs) and the
images unpacked on this node (shim/launch/unpack.py: the user's cache, /tmp/shim-UID, the site's
[serve] local_dir)."""

from __future__ import annotations

import argparse
import json
import os
import stat
import time
from typing import TYPE_CHECKING

from shim.errors import UsageError

if TYPE_CHECKING:
    from shim.oci.blobs import BlobCache, BlobInfo


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cache", help="list or clean the OCI blob cache and the unpacked images",
                              description="List the OCI blobs pulls keep ($SHIMRUN_CACHE/blobs/sha256) and the "
                                          "images unpacked on this node, or remove them (an unpacked image in "
                                          "use by a running app is kept).")
    p.add_argument("action", choices=("list", "clean"))
    p.add_argument("--json", action="store_true", help="list: as JSON")
    p.add_argument("--keep-recent", type=int, default=0, metavar="N",
                   help="clean: keep the N most recently used unpacked images (and every blob)")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=main)


def _private(path: str) -> bool:
    """An unpack directory shim made: this user's, mode 0700, no symlink (someone else's is not looked into)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700


def unpack_dirs(cache: str) -> list[str]:
    """Where this user's unpacked images may be (serve.local_target's places), those that exist."""
    from shim.site.config import ConfigError, load_site_config

    uid = os.geteuid()
    bases = [cache, f"/tmp/shim-{uid}"]
    try:
        local_dir = load_site_config(None).serve.local_dir
    except ConfigError:  # the launch says what is wrong with shim.toml; the cache is listed all the same
        local_dir = ""
    if local_dir:
        bases.insert(0, os.path.join(local_dir, f"shim-{uid}"))
    found = []
    for base in bases:
        where = os.path.join(base, "rootfs")
        if (base == cache or _private(base)) and _private(where) and where not in found:
            found.append(where)
    return found


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "never"


def _list(args: argparse.Namespace, cache: BlobCache, blobs: list[BlobInfo], cap: int, dirs: list[str]) -> int:
    from shim.launch.unpack import roots

    found = [(where, r) for where in dirs for r in roots(where)]
    staged = _staged(dirs)
    total = sum(b.size for b in blobs)
    if args.json:
        print(json.dumps({"directory": cache.dir, "cap": cap, "total": total,
                          "blobs": [{"digest": b.digest, "size": b.size, "last_used": int(b.used)} for b in blobs],
                          "unpacked": [{"digest": r.digest, "image": r.image, "size": r.size, "path": r.path,
                                        "last_used": int(r.last_used), "in_use": r.in_use} for _, r in found],
                          "staged": [{"digest": c[0], "size": c[1], "path": os.path.join(d, c[0] + ".sqfs"),
                                      "last_used": int(c[2]), "in_use": c[3]} for d, c in staged]},
                         indent=2))
        return 0
    for b in blobs:
        print(f"{b.digest}  {b.size:>12}  {_when(b.used)}")
    print(f"{len(blobs)} blobs, {total} bytes in {cache.dir} (cap {cap}: SHIMRUN_CACHE_MAX)")
    for _, r in found:
        print(f"{r.digest}  {r.size:>12}  {_when(r.last_used)}  {'in use' if r.in_use else 'unused'}  {r.image}")
    print(f"{len(found)} unpacked images, {sum(r.size for _, r in found)} bytes in {', '.join(dirs) or '(none)'}")
    for d, (digest, size, used, in_use) in staged:
        print(f"{digest}  {size:>12}  {_when(used)}  {'in use' if in_use else 'unused'}  "
              f"{os.path.join(d, digest + '.sqfs')}")
    print(f"{len(staged)} staged images, {sum(c[1] for _, c in staged)} bytes")
    return 0


def _staged(dirs: list[str]) -> list[tuple[str, tuple[str, int, float, bool]]]:
    """(directory, copy) of the images staged beside each unpack directory (shim/launch/staging.py),
    least recently used first."""
    from shim.launch.staging import staged_copies

    found = []
    for where in dirs:
        sdir = os.path.join(os.path.dirname(where), "staged")
        if _private(sdir):
            found += [(sdir, c) for c in staged_copies(sdir)]
    return sorted(found, key=lambda dc: dc[1][2])


def _clean(args: argparse.Namespace, cache: BlobCache, blobs: list[BlobInfo], dirs: list[str]) -> int:
    from shim.launch.unpack import remove_root, roots

    removed = 0
    if not args.keep_recent:
        for b in blobs:
            try:
                os.unlink(cache.path(b.digest))
                removed += b.size
            except OSError:
                pass
        print(f"removed {len(blobs)} blobs, {removed} bytes, from {cache.dir}")
    found = sorted(((where, r) for where in dirs for r in roots(where)), key=lambda wr: wr[1].last_used)
    doomed = found[:max(len(found) - args.keep_recent, 0)]
    gone = [r for where, r in doomed if not r.in_use and remove_root(where, r.digest)]
    busy = len(doomed) - len(gone)
    print(f"removed {len(gone)} unpacked images, {sum(r.size for r in gone)} bytes"
          + (f"; kept {busy} in use" if busy else "") + (f"; kept the {args.keep_recent} most recently used"
                                                         if args.keep_recent else ""))
    from shim.launch.staging import remove_staged

    staged = _staged(dirs)
    doomed_copies = staged[:max(len(staged) - args.keep_recent, 0)]
    gone_copies = [c for d, c in doomed_copies if not c[3] and remove_staged(d, c[0])]
    busy_copies = len(doomed_copies) - len(gone_copies)
    print(f"removed {len(gone_copies)} staged images, {sum(c[1] for c in gone_copies)} bytes"
          + (f"; kept {busy_copies} in use" if busy_copies else ""))
    return 0


def main(args: argparse.Namespace) -> int:
    from shim.cachefiles import cache_path
    from shim.oci.blobs import DEFAULT_CAP, BlobCache, parse_size

    root = cache_path()
    if root is None:
        raise UsageError("no cache to work on: caching is off", "set SHIMRUN_CACHE to a directory of your own")
    if args.keep_recent < 0:
        raise UsageError(f"--keep-recent {args.keep_recent}: not a count", "e.g. --keep-recent 2")
    cache = BlobCache(root, persistent=True)
    blobs = cache.blobs()
    cap = parse_size(os.environ.get("SHIMRUN_CACHE_MAX", DEFAULT_CAP), "SHIMRUN_CACHE_MAX")
    dirs = unpack_dirs(root)
    if args.action == "list":
        return _list(args, cache, blobs, cap, dirs)
    return _clean(args, cache, blobs, dirs)
