"""Symbol coverage on the final mapping: for every name an object of the image (the app and the
libraries it loads, those that stay the image's) would now get from a host file, that file and
what it brings (the injected files its DT_NEEDED names lead to) must define each symbol the
object imports from the image's own library of that name. Otherwise the app would die at start with
"symbol lookup error", so the profile is refused before it starts, with the symbols named.

Without a dynamic app (`shimrun check IMAGE` with no command) there is nothing to check."""

from __future__ import annotations

import os

from shim.plan.job import ProfileJob

SHOWN = 5


def check_symbols(job: ProfileJob, code: str) -> None:
    ctx = job.ctx
    closure = ctx.app_closure()
    injected = {name: job.work.injected[placed] for name, placed in job.work.cache.items()
                if placed in job.work.injected}
    if closure is None or not injected:
        return
    replaced = {closure.resolved[n] for n in injected if n in closure.resolved}
    for obj in closure.order:
        if obj in replaced:
            continue
        facts = ctx.container_facts(obj)
        names = [n for n in (facts.needed if facts else ()) if n in injected and n in closure.resolved]
        if not names:
            continue
        mine = ctx.symbols(ctx.in_root(obj))
        for name in names:
            theirs = ctx.symbols(ctx.in_root(closure.resolved[name]))
            if mine is None or theirs is None:
                continue
            missing = sorted((mine.undefined & theirs.defined) - _brings(job, injected, injected[name]))
            if missing:
                _refuse(job, code, (obj, name, injected[name]), missing)
                return


def _brings(job: ProfileJob, injected: dict[str, str], host_file: str) -> set[str]:
    """The symbols defined by `host_file` and by the injected host files its DT_NEEDED names
    lead to (transitively): what is in the process once it is loaded."""
    ctx, defined, todo, seen = job.ctx, set(), [host_file], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        syms = ctx.symbols(ctx.on_host(path))
        defined |= syms.defined if syms else set()
        facts = ctx.host_facts(path)
        todo += [injected[n] for n in (facts.needed if facts else ()) if n in injected]
    return defined


def _refuse(job: ProfileJob, code: str, where: tuple[str, str, str], missing: list[str]) -> None:
    obj, name, host_file = where
    shown = ", ".join(missing[:SHOWN]) + (f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else "")
    job.refuse(code, (name, host_file, obj),
               f"{obj} imports {shown} from {name}, which the host's {os.path.basename(host_file)} (and what the "
               "profile injects with it) does not define: the app would stop with \"symbol lookup error\"",
               "use the image's own libraries (--no-profiles), or ask for a host build that exports them",
               job.key())
