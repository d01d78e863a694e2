#!/usr/bin/env bash
# Run the whole test suite on this machine (as root, as CI does): install first (idempotent),
# then pytest with the installed shim. Launch tests drop to an ordinary user themselves.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/install.sh"
cd "$here"
exec "${SHIM_PREFIX:-/opt/shim}/venv/bin/pytest" "$@"
