#!/usr/bin/env bash
# Run the whole test suite on this machine (as root, as CI does): install first (idempotent),
# then pytest with the installed shim. Launch tests drop to an ordinary user themselves.
# Twice: with launch records (a command line's second launch runs from its record, no Python),
# and with SHIMRUN_NO_RECORD_CACHE=1 (every launch planned afresh, then run by the same executor):
# both must pass.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/install.sh"
cd "$here"
pytest="${SHIM_PREFIX:-/opt/shim}/venv/bin/pytest"
rc=0
echo "test.sh: pass 1 of 2: launch records on"
"$pytest" "$@" || rc=$?
echo "test.sh: pass 2 of 2: SHIMRUN_NO_RECORD_CACHE=1 (every launch planned)"
SHIMRUN_NO_RECORD_CACHE=1 "$pytest" "$@" || rc=$?
exit $rc
