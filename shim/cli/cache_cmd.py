"""`shimrun cache list|clean`: the blob cache that pulls share ($SHIMRUN_CACHE/blobs)."""

from __future__ import annotations

import argparse
import json
import os
import time

from shim.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cache", help="list or clean the OCI blob cache",
                              description="List the OCI blobs pulls keep ($SHIMRUN_CACHE/blobs/sha256), "
                                          "or remove them.")
    p.add_argument("action", choices=("list", "clean"))
    p.add_argument("--json", action="store_true", help="list: as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from shim.cachefiles import cache_path
    from shim.oci.blobs import DEFAULT_CAP, BlobCache, parse_size

    root = cache_path()
    if root is None:
        raise UsageError("no cache to work on: caching is off", "set SHIMRUN_CACHE to a directory of your own")
    cache = BlobCache(root, persistent=True)
    blobs = cache.blobs()
    cap = parse_size(os.environ.get("SHIMRUN_CACHE_MAX", DEFAULT_CAP), "SHIMRUN_CACHE_MAX")
    total = sum(b.size for b in blobs)
    if args.action == "list":
        if args.json:
            print(json.dumps({"directory": cache.dir, "cap": cap, "total": total,
                              "blobs": [{"digest": b.digest, "size": b.size, "last_used": int(b.used)}
                                        for b in blobs]}, indent=2))
            return 0
        for b in blobs:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(b.used))
            print(f"{b.digest}  {b.size:>12}  {when}")
        print(f"{len(blobs)} blobs, {total} bytes in {cache.dir} (cap {cap}: SHIMRUN_CACHE_MAX)")
        return 0
    removed = 0
    for b in blobs:
        try:
            os.unlink(cache.path(b.digest))
            removed += b.size
        except OSError:
            pass
    print(f"removed {len(blobs)} blobs, {removed} bytes, from {cache.dir}")
    return 0
