#!/usr/bin/env bash
# Install everything shim needs on a Debian 12 machine (run as root), idempotently:
# the apt packages in requirements-apt.txt, a venv at $SHIM_PREFIX (default /opt/shim) built
# with Debian's python3 (so every user can run it), and shim itself into that venv. The site's
# configuration directory is fixed at install: $SHIM_SYSCONFDIR (default /etc/shim).
# With --demo, then build the bundled demo image and run it as a non-root user.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${SHIM_PREFIX:-/opt/shim}
venv=$prefix/venv

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (it installs apt packages)" >&2; exit 64; }

mapfile -t pkgs < <(grep -v '^\s*#' "$here/requirements-apt.txt" | awk 'NF{print $1}')
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install.sh: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Distributions ship /dev/fuse as 0666 (a udev rule); some container hosts leave it 0600, which
# makes every unprivileged FUSE mount fail. shim falls back to extraction then, but is faster with it.
[ -c /dev/fuse ] && chmod 0666 /dev/fuse || true

if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip setuptools wheel cffi 2>&1 | grep -v "is ignored" || true
"$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt" 2>&1 | grep -v "is ignored" || true
rm -rf "$here/build"
"$venv/bin/pip" install -q --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps "$here" \
    2>&1 | grep -v "is ignored" || true
# `shimrun` is the native front-end (csrc/frontend.c): it joins a node's shared container
# without starting Python and runs the Python implementation (python -m shim) otherwise.
frontend=$(cd / && "$venv/bin/python" -c 'import os, shim; print(os.path.join(os.path.dirname(shim.__file__), "libexec", "shimrun"))')
# Only the default prefix owns /usr/local/bin/shimrun: a second install (SHIM_PREFIX=/opt/shim-dev, a
# developer's worktree) is run through its own front-end ($SHIMRUN) and leaves the system's alone.
if [ "$prefix" = /opt/shim ] || [ -n "${SHIM_LINK_BIN:-}" ]; then
    ln -sf "$frontend" /usr/local/bin/shimrun
fi
# shim's SPANK plugin (csrc/spank/): pyxis's --container-* options on srun, salloc and sbatch,
# each task run through this install's shimrun. A site adds the line printed below to Slurm's
# plugstack.conf (README "For pyxis users"); it must be built against the Slurm it runs under.
mkdir -p "$prefix/lib"
# shim's exit codes for the plugin, from their one definition (shim/errors.py via shim/cgen.py)
mkdir -p "$here/csrc/gen"
(cd / && "$venv/bin/python" -c 'from shim import cgen; print(cgen.codes_h(), end="")') > "$here/csrc/gen/codes.h.spank"
mv -f "$here/csrc/gen/codes.h.spank" "$here/csrc/gen/codes.h"
spank_src=("$here"/csrc/spank/shim_spank.c "$here"/csrc/spank/pyxis_args.c "$here"/csrc/spank/image.c "$here"/csrc/spank/words.c "$here"/csrc/spank/mpmd.c "$here"/csrc/spank/report.c)
cc -O2 -Wall -Wextra -std=gnu11 -I"$here/csrc" -shared -fPIC -Wl,--version-script="$here/csrc/spank/exports.map" \
    -DSHIMRUN_PATH="\"$frontend\"" -DPYXIS_EXEC_PATH="\"$prefix/lib/shim-pyxis-exec\"" \
    -o "$prefix/lib/shim_spank.so.new" "${spank_src[@]}"
cc -O2 -Wall -Wextra -std=gnu11 -I"$here/csrc" -o "$prefix/lib/shim-pyxis-exec.new" "$here/csrc/spank/pyxis_exec.c" "$here/csrc/spank/words.c" "$here/csrc/spank/report.c"
mv -f "$prefix/lib/shim_spank.so.new" "$prefix/lib/shim_spank.so"
mv -f "$prefix/lib/shim-pyxis-exec.new" "$prefix/lib/shim-pyxis-exec"
# `apptainer` and `singularity` under shim (shim/compat): in a directory of their own, never one on
# the default PATH, where they would shadow a real Apptainer; users and sites put it first on PATH.
mkdir -p "$prefix/compat/bin"
printf '#!%s -I\nfrom shim.compat.apptainer import entry\nentry()\n' "$venv/bin/python3" > "$prefix/compat/bin/apptainer.new"
chmod 0755 "$prefix/compat/bin/apptainer.new"
mv -f "$prefix/compat/bin/apptainer.new" "$prefix/compat/bin/apptainer"
ln -sfn apptainer "$prefix/compat/bin/singularity"
chmod -R a+rX "$prefix"
echo "install.sh: shimrun installed: $frontend ($("$venv/bin/shimrun" --version))"
echo "install.sh: SPANK plugin: add to Slurm's plugstack.conf: required $prefix/lib/shim_spank.so"

if [ "${1:-}" = "--demo" ]; then
    exec "$here/scripts/demo.sh"
fi
