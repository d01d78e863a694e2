"""Kept mounts, the planner's part: whether a launch joins the user's kept squashfuse mount of its
image on this node, and for how long that mount's holder stays once no app of it is left.

The executor does the rest (csrc/kept.c joins or starts the holder, csrc/kepthold.c holds the
mount); nothing here touches a namespace or a mount. Rules:
- a kept mount serves only a squashfs (a SIF's partition or a bare squashfs) that squashfuse can
  mount: a directory image, or a copy extracted without FUSE, is served as before;
- `SHIMRUN_KEPT_IDLE` (seconds, 0 to MAX_IDLE; default: the site's, else DEFAULT_IDLE) is read
  only when a kept mount is chosen, and a bad value stops the launch with one line (exit 64);
- each launch tells the holder its idle time: the latest launch's value wins.

Non-goal: choosing between the ways of serving an image (`--serve`, the site's `[serve]` table):
shim/launch/serve.py decides.
"""

from __future__ import annotations

from collections.abc import Mapping

from shim.errors import UsageError

IDLE_VARIABLE = "SHIMRUN_KEPT_IDLE"
DEFAULT_IDLE = 600           # seconds: ten minutes after its last app, a kept mount goes
MAX_IDLE = 7 * 24 * 3600     # a week; longer is a daemon, not a cache


def kept_idle(environ: Mapping[str, str], site_default: int = DEFAULT_IDLE) -> int:
    """The idle timeout in seconds: SHIMRUN_KEPT_IDLE, else the site's default. UsageError (64)
    with one line saying what, where and how to fix a bad value."""
    text = environ.get(IDLE_VARIABLE)
    if text is None or text.strip() == "":
        return site_default
    value = text.strip()
    if not value.isascii() or not value.isdigit() or int(value) > MAX_IDLE:
        raise UsageError(f"{IDLE_VARIABLE}={text!r} is not a number of seconds from 0 to {MAX_IDLE}",
                         f"set {IDLE_VARIABLE} to whole seconds, e.g. {IDLE_VARIABLE}={DEFAULT_IDLE} (the default), "
                         f"or unset it")
    return int(value)
