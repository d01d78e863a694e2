"""Whether the build under test audits what an app loads (`--report-loaded`, README "What actually
ran"): the app's LD_AUDIT names shim's audit library. Tests of the audit skip with the reason when
it does not (a build before the audit landed), so they pass on any build."""

from __future__ import annotations

import images

PROBE = ("/bin/sh", "-c", 'printf "%s" "$LD_AUDIT"')
LIBRARY = "shim_audit"


def audit_missing(shim) -> str:
    """"" when `shimrun --report-loaded` sets LD_AUDIT to shim's library for the dynamic /bin/sh
    of the Debian base image (tests/images.py DEBIAN_BASE), else why not (for pytest.skip)."""
    image = images.build_sif(images.DEBIAN_BASE)
    r = shim.run(["--no-profiles", "--report-loaded", image, *PROBE])
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"this build has no --report-loaded (exit {r.returncode}: {last})"
    if LIBRARY not in r.stdout:
        return f"this build accepts --report-loaded but does not audit (LD_AUDIT={r.stdout!r})"
    return ""


def finding_lines(stderr: str, code: str) -> list[str]:
    """The lines of `stderr` that report `code` (`shimrun: warning: CODE: ...`, or with a node's
    prefix under srun: `shimrun: [n1] warning: CODE: ...`)."""
    return [ln for ln in stderr.splitlines() if f" {code}: " in ln and ln.startswith("shimrun:")]
