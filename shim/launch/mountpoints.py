"""Mount points made in an unpacked image (shim/launch/unpack.py): the launch shows the image
read-only, so a mount point the image lacks costs it an underlay of the directory above (a tmpfs
copying its listing, one bind per entry: for these, the image's "/"); made once here, they cost
nothing at each launch."""

from __future__ import annotations

import contextlib
import os
import stat

from shim.record.format import AUDIT_DIR

# `dev` (the unpack skips it: device nodes cannot be made) and the audit's directory
MOUNT_POINTS = ("dev", AUDIT_DIR.strip("/"))


def mount_points(root: str) -> None:
    """MOUNT_POINTS in the unpacked tree `root`. Never through a symlink of the image's (it could
    point anywhere on this host): a component that is not a directory ends that path, and the
    launch makes do with an underlay."""
    for path in MOUNT_POINTS:
        at = root
        for name in path.split("/"):
            at = os.path.join(at, name)
            with contextlib.suppress(OSError):  # there already, or an image's directory not writable
                os.mkdir(at, 0o755)
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(os.lstat(at).st_mode):
                    continue
            break
