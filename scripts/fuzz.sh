#!/usr/bin/env bash
# The long fuzzing run: tests/test_fuzz.py under hypothesis's "fuzz" profile (random, 15,000 cases
# per target, a 5 s deadline per case so that a hang fails), then the counts into
# benchmarks/results/fuzz.md. Run after scripts/install.sh:  bash scripts/fuzz.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${SHIM_PREFIX:-/opt/shim}/venv   # SHIM_PREFIX as scripts/install.sh takes it
py=$venv/bin/python
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cd "$here"
start=$SECONDS
seed=${FUZZ_SEED:-$RANDOM$RANDOM}
set +e
# The venv's pytest, not `python -m pytest`: -m puts the checkout first on sys.path, whose shim/
# has no built C core; the installed shim is what is fuzzed (as scripts/test.sh tests it).
HYPOTHESIS_PROFILE=fuzz "$venv/bin/pytest" -q -p no:cacheprovider tests/test_fuzz*.py --hypothesis-show-statistics \
    --hypothesis-seed="$seed" >"$log" 2>&1
rc=$?
set -e
"$py" scripts/fuzz_report.py "$log" "$rc" "$((SECONDS - start))" "$seed" >benchmarks/results/fuzz.md
cat benchmarks/results/fuzz.md
exit "$rc"
