"""Who the user is inside the container: their /etc/passwd and /etc/group entries, shown
appended to the image's files (like Apptainer), so `id -un`, `whoami` and `~` work."""

from __future__ import annotations

import grp
import os
import pwd


def identity_appends(home: str, fakeroot: bool) -> list[tuple[str, str]]:
    if fakeroot:  # uid 0 is the image's own root
        return []
    uid, gid = os.getuid(), os.getgid()
    try:
        pw = pwd.getpwuid(uid)
        name, gecos, shell = pw.pw_name, pw.pw_gecos, pw.pw_shell
    except KeyError:
        name, gecos, shell = f"u{uid}", "", "/bin/sh"
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = f"g{gid}"
    return [("/etc/passwd", f"{name}:x:{uid}:{gid}:{gecos}:{home}:{shell}\n"),
            ("/etc/group", f"{group}:x:{gid}:\n")]
