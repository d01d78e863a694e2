#!/usr/bin/env bash
# The main job on its embedded default: build the bundled demo image (a Debian bookworm rootfs
# made by mmdebstrap, cached by recipe) into a SIF with `shimrun build`, then run it through
# shimrun as an ordinary user, with the default site configuration (conf/shim.toml).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
user=${SHIM_DEMO_USER:-shimuser}
cache=${SHIM_DEMO_CACHE:-/var/cache/shim-demo}
suite=bookworm
recipe="mmdebstrap --variant=minbase --dpkgopt=path-exclude=/usr/share/{doc,man,locale}/* $suite"
key=$(printf '%s' "$recipe" | sha256sum | cut -c1-12)
sif=$cache/demo-$key.sif

id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
mkdir -p "$cache"
if [ ! -s "$sif" ]; then
    tmp=$(mktemp -d "$cache/build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    echo "demo: building a Debian $suite rootfs with mmdebstrap"
    mmdebstrap --quiet --variant=minbase --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$suite" "$tmp/rootfs.tar"
    shimrun build "$tmp/demo.sif" "$tmp/rootfs.tar"
    mv "$tmp/demo.sif" "$sif"
fi
chmod 0755 "$cache"; chmod 0644 "$sif"
echo "demo: shimrun inspect $sif"
shimrun inspect "$sif" | sed 's/^/    /'
echo "demo: as user $user: shimrun $sif cat /etc/os-release"
cd /tmp
runuser -u "$user" -- shimrun "$sif" sh -c 'grep PRETTY_NAME /etc/os-release; echo "running as $(id -un) (uid $(id -u)) in $(pwd)"'
echo "demo: as user $user: shimrun check $sif (injection plan and hardware diagnostics, no launch)"
runuser -u "$user" -- shimrun check "$sif" | sed 's/^/    /'
echo "demo: as user $user: srun-style ranks sharing one container (SHIMRUN_SHARE=1, 4 processes)"
runuser -u "$user" -- sh -c "for i in 1 2 3 4; do SHIMRUN_SHARE=1 shimrun '$sif' sh -c 'echo \"    pid \$\$ in \$(readlink /proc/self/ns/mnt)\"' & done; wait"
echo "demo: done"
