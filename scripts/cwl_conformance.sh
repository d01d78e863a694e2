#!/usr/bin/env bash
# The CWL v1.2 conformance suite through shim (issue #27 item 2): `cwltest` drives
# `cwltool --singularity` with ONLY shim's `apptainer`/`singularity` (shim/compat) on PATH, as an
# ordinary user; then the same suite with `cwltool --no-container` as the baseline; then
# scripts/cwl_report.py writes the table (benchmarks/results/cwl_conformance.md).
#
# Run as root (it makes the user, the venv and the images), after scripts/install.sh:
#     scripts/cwl_conformance.sh [-j N] [--timeout S] [-s ID,ID...] [--shim-only|--baseline-only]
# Environment: SHIM_PREFIX (the install to test, default /opt/shim), CWL_USER (default shimcwl),
# CWL_WORK (default /var/tmp/shim-cwl-conformance), CWL_SUITE_GIT (a git dir of
# common-workflow-language/cwl-v1.2; default the local mirror, else cloned from GitHub),
# CWL_SUITE_COMMIT (default the commit the committed table was made with), SHIM_TEST_CACHE.
#
# The images the suite pulls from Docker Hub are offline stand-ins built from cached recipes
# (tests/cwl_images.py) and put where `singularity pull docker://...` would have put them.
# Raw JUnit XML and logs: benchmarks/results/cwl_raw/ (not committed).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${SHIM_PREFIX:-/opt/shim}
user=${CWL_USER:-shimcwl}
work=${CWL_WORK:-/var/tmp/shim-cwl-conformance}
cache=${SHIM_TEST_CACHE:-/var/cache/shim-test}
suite_commit=${CWL_SUITE_COMMIT:-551d58d409ef2a0fa2e3ab93b85167dd7d4b1833}
suite_git=${CWL_SUITE_GIT:-/work/.mirror/common-workflow-language+cwl-v1.2/repo}
jobs=2 timeout=300 select="" runs="shim baseline"
raw=$here/benchmarks/results/cwl_raw

while [ $# -gt 0 ]; do
    case $1 in
        -j) jobs=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        -s) select=$2; shift 2 ;;
        --shim-only) runs=shim; shift ;;
        --baseline-only) runs=baseline; shift ;;
        --report-only) runs=""; shift ;;
        *) echo "cwl_conformance.sh: unknown argument $1 (see the comment at the top of $0)" >&2; exit 64 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "cwl_conformance.sh: run as root (it makes the test user, the venv and the images)" >&2; exit 64; }
shimrun=$(cd / && "$prefix/venv/bin/python" -c 'import os, shim; print(os.path.join(os.path.dirname(shim.__file__), "libexec", "shimrun"))' 2>/dev/null) \
    || { echo "cwl_conformance.sh: no shim under $prefix: run SHIM_PREFIX=$prefix scripts/install.sh first" >&2; exit 64; }
compat=$prefix/compat/bin
[ -x "$compat/singularity" ] || { echo "cwl_conformance.sh: $compat/singularity missing: rerun scripts/install.sh" >&2; exit 64; }

# 1. cwltest + cwltool in a venv of their own, their wheels cached (a second run needs no network):
# tests/engines.py's conformance_venv(), which the smoke test uses too.
venv=$(cd "$here/tests" && SHIM_TEST_CACHE=$cache "$prefix/venv/bin/python" -c 'import engines; print(engines.conformance_venv())')

# 2. The suite, at a pinned commit.
if [ ! -d "$suite_git" ]; then
    suite_git=$cache/cwl-v1.2.git
    [ -d "$suite_git" ] || git clone -q --bare https://github.com/common-workflow-language/cwl-v1.2 "$suite_git"
fi
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/sh "$user"
if [ -n "$runs" ]; then
    rm -rf "$work" && mkdir -p "$work/suite" "$work/sifs" "$work/bin" "$work/out"
    git --git-dir="$suite_git" archive "$suite_commit" | tar -x -C "$work/suite"
fi

# 3. The images, as cwltool names pulled ones, in its cache (CWL_SINGULARITY_CACHE).
[ -z "$runs" ] || SHIMRUN=$shimrun PYTHONPATH="$here/tests:$here" "$prefix/venv/bin/python" "$here/tests/cwl_images.py" "$work/sifs"

# 4. The runner: cwltool from that venv; PATH holds shim's compat commands and the system's, no other.
# (not `python -m cwltool`/`cwltest`: they exit 0 whatever the outcome; tests/engines.py)
main=$(cd "$here/tests" && "$prefix/venv/bin/python" -c 'import engines; print(engines.CWLTOOL_MAIN)')
cwltest_main=$(cd "$here/tests" && "$prefix/venv/bin/python" -c 'import engines; print(engines.CWLTEST_MAIN)')
if [ -n "$runs" ]; then
    printf '#!/bin/sh\nexec %s -c "%s" "$@"\n' "$venv/bin/python" "$main" > "$work/bin/cwltool"
    chmod 0755 "$work/bin/cwltool"
    # The baseline's only help: `python`, which the suite's python:3-slim tools call and Debian's host
    # lacks (python3 only); without it 13 tools fail for want of a command, not of a container.
    mkdir -p "$work/baseline-bin" && ln -sf /usr/bin/python3 "$work/baseline-bin/python"
    chown -R "$user:" "$work"
fi
path=$work/bin:$compat:/usr/local/bin:/usr/bin:/bin
for name in apptainer singularity; do
    found=$(PATH=$path command -v "$name")
    [ "$found" = "$compat/$name" ] || { echo "cwl_conformance.sh: $name on PATH is $found, not shim's" >&2; exit 1; }
done

as_user() {  # PATH CMD...: as the ordinary user, with a clean environment, in the suite's directory
    local p=$1; shift
    (cd "$work/suite" && setpriv --reuid="$user" --regid="$user" --init-groups --reset-env -- \
        env HOME="$(getent passwd "$user" | cut -d: -f6)" USER="$user" LOGNAME="$user" LANG=C.UTF-8 PATH="$p" \
        TMPDIR="$work/tmp" CWL_SINGULARITY_CACHE="$work/sifs" "$@")
}
run_suite() {  # NAME PATH ENGINE-ARGS...: one pass of cwltest; its failures are data, not this script's failure
    local name=$1 p=$2; shift 2
    # What a pass left in the host's /tmp must not meet the next: without a container
    # symlink-illegal.cwl writes /tmp/original.txt on the host, and a later pass's symlink to
    # /tmp/original.txt (a dangling one, which the test expects) would then resolve.
    find /tmp -mindepth 1 -maxdepth 1 -user "$user" -exec rm -rf {} +
    mkdir -p "$work/tmp" && chown "$user:" "$work/tmp"
    local sel=() && [ -z "$select" ] || sel=(-s "$select")
    echo "cwl_conformance.sh: $name: cwltest -j$jobs --timeout $timeout -- $* (log: $work/out/$name.log)"
    local t0=$SECONDS rc=0
    # (--junit-verbose: meant to keep cwltool's INFO lines; cwltest 2.7 passes --quiet all the same)
    as_user "$p" "$venv/bin/python" -c "$cwltest_main" --test conformance_tests.yaml --tool "$work/bin/cwltool" -j "$jobs" \
        --timeout "$timeout" --junit-xml "$work/out/$name.xml" --junit-verbose "${sel[@]}" -- "$@" \
        > "$work/out/$name.log" 2>&1 || rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" >> "$work/out/runs.txt"
    tail -3 "$work/out/$name.log"
    rm -rf "$work/tmp"
    find /tmp -mindepth 1 -maxdepth 1 -user "$user" -exec rm -rf {} +
}
for r in $runs; do
    case $r in
        shim) run_suite shim "$path" --singularity ;;
        baseline) run_suite baseline "$work/baseline-bin:$path" --no-container ;;
    esac
done

# 5. Raw results kept (gitignored), then the table. A selection (-s) only reports in $work/out: cwltest's
# JUnit file names a selection's cases after the suite's first tests (it indexes the whole list).
if [ -n "$select" ]; then
    echo "cwl_conformance.sh: a selection: results in $work/out, no table written"; exit 0
fi
if [ -n "$runs" ]; then
    mkdir -p "$raw" && cp -f "$work/out/"*.xml "$work/out/"*.log "$raw/" && cat "$work/out/runs.txt" >> "$raw/runs.txt"
    {
        echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "suite_commit=$suite_commit"
        echo "shim=$("$shimrun" --version 2>&1 | head -1)"
        echo "apptainer_compat=$(PATH=$path singularity --version)"
        echo "cwltool=$("$venv/bin/python" -m cwltool --version 2>/dev/null | awk '{print $NF}')"
        echo "cwltest=$("$venv/bin/python" -m cwltest --version 2>/dev/null | tr -s ' \n' ' ' | awk '{print $NF}')"
        echo "jobs=$jobs"
        echo "timeout=$timeout"
        echo "kernel=$(uname -r)"
        echo "user=$user"
    } >> "$raw/meta.txt"
fi
"$prefix/venv/bin/python" "$here/scripts/cwl_report.py" --suite "$work/suite" --raw "$raw" \
    --notes "$here/scripts/cwl_conformance_notes.toml" --out "$here/benchmarks/results/cwl_conformance.md"
