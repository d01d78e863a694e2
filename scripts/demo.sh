#!/usr/bin/env bash
# The main job on its embedded default, self-contained and srun-free (run as root; shimrun runs as
# the ordinary user $SHIM_DEMO_USER, default shimuser, created if missing):
#   - the app image: a Debian 12 MPICH image (tests/images.py DEBIAN_MPICH: libmpich12 + mpich,
#     MPICH 4.0.2, /opt/app/hello from tests/data/mpi_hello.c), built with mmdebstrap and
#     `shimrun build` by scripts/demo_assets.py in the test suite's cache (SHIM_TEST_CACHE,
#     default /var/cache/shim-test), so the tests start warm after the demo and vice versa;
#   - the "site MPI": PyPI's mpich wheel (MPICH 5.0.x, the same ABI), unpacked into that cache;
#   - a site configuration written at run time into $SHIM_DEMO_CACHE (default /var/cache/shim-demo)
#     whose one profile offers that MPI.
# Steps: (1) `shimrun check`: the injection decision and the hardware findings; (2) the app with
# the host's MPI injected; (3) the same with --no-profiles: the image's own MPI; (4) an image that
# declares a GPU need this node misses (exit 67 on a node without one); (5) 4 ranks started by the
# site's mpiexec sharing one container. Any failure stops it with a line saying what went wrong.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
user=${SHIM_DEMO_USER:-shimuser}
cache=${SHIM_DEMO_CACHE:-/var/cache/shim-demo}
py=${SHIM_PREFIX:-/opt/shim}/venv/bin/python

die() { echo "demo: FAILED: $*" >&2; exit 1; }
trap 'rc=$?; echo "demo: FAILED: \`$BASH_COMMAND\` exited with $rc (line $LINENO of $0)" >&2' ERR
indent() { sed 's/^/    /'; }
# mpi_hello's version line is MPICH's whole version text; keep the version and the device.
shorten() {
    awk -F' [|] ' '/^mpi-hello: library:/ { s = $1; for (i = 2; i <= NF; i++) if ($i ~ /^MPICH Device/) s = s " | " $i
                                            gsub(/  +/, " ", s); print s " | ..."; next } { print }'
}
as_user() { runuser -u "$user" -- "$@"; }

[ "$(id -u)" = 0 ] || die "run as root (it creates the user $user and builds the image): sudo bash $0"
command -v shimrun >/dev/null || die "no shimrun on PATH: run 'bash scripts/install.sh' first"
[ -x "$py" ] || die "no $py: run 'bash scripts/install.sh' first"
[ -x /bin/busybox ] || die "no /bin/busybox (Debian package busybox-static): run 'bash scripts/install.sh' first"
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

# --- the image and the site MPI (built once, cached) -------------------------------------------
assets=$("$py" "$here/scripts/demo_assets.py") || die "scripts/demo_assets.py could not provide the image and the site MPI (see above)"
IFS=$'\t' read -r sif prefix version <<<"$assets"
[ -s "$sif" ] && [ -f "$prefix/lib/libmpi.so.12" ] || die "scripts/demo_assets.py printed '$assets'"

# --- the site configuration: what a sysadmin writes to /etc/shim (here in the demo's cache) ------
mkdir -p "$cache"
rm -f "$cache"/demo-*.sif                   # the SIF of an earlier version of this demo
conf=$cache/conf
rm -rf "${conf:?}"
mkdir -p "$conf/profiles"
printf '[launch]\nbinds = []\n' >"$conf/shim.toml"
# Shaped like conf/profiles/examples/mpich.toml, less what the wheel does not have (libmpicxx.so.12,
# libmpifort.so.12). Nothing names Debian's libmpich.so.12: the MPICH ABI's data says it is the
# same library as libmpi.so.12.
cat >"$conf/profiles/site-mpich.toml" <<EOF
[profile]
name = "site-mpich"
description = "MPICH $version (PyPI's mpich wheel) standing in for the image's MPICH"
kind = "mpi"
abi = "mpich"
applies = "when-used"
replaces = ["libmpi.so.12"]

[provides]
prefix = "$prefix"
libraries = ["lib/libmpi.so.12"]
EOF
# An image that declares a need this node may miss: busybox and /.shim/requires, nothing else.
cuda_img=$cache/cuda-app
rm -rf "${cuda_img:?}"
mkdir -p "$cuda_img/bin" "$cuda_img/.shim"
cp /bin/busybox "$cuda_img/bin/busybox"
echo "gpu.cuda>=12.2" >"$cuda_img/.shim/requires"
chmod 0755 "$cache"
chmod -R a+rX "$conf" "$cuda_img"

cd /tmp                                     # a working directory $user can enter (shimrun keeps it)
echo "demo: app image $sif"
echo "demo: site MPI  $prefix (MPICH $version, PyPI's mpich wheel)"
echo "demo: the site's profile, $conf/profiles/site-mpich.toml:"
indent <"$conf/profiles/site-mpich.toml"
as_user shimrun profiles lint "$conf"/profiles/*.toml | indent
as_user shimrun profiles --conf "$conf" | indent

echo
echo "demo: 1/5 what shimrun would inject into this image and why, and what it finds on this node (no launch):"
echo "    \$ shimrun check --conf $conf $sif /opt/app/hello"
as_user shimrun check --conf "$conf" "$sif" /opt/app/hello >"$tmp/out" 2>"$tmp/err" \
    || { cat "$tmp/out" "$tmp/err" >&2; die "shimrun check failed"; }
indent <"$tmp/out"; indent <"$tmp/err"
grep -Eq '^libmpich\.so\.12 .*/lib/libmpi\.so\.12 .* inject ' "$tmp/out" \
    || die "shimrun check did not plan to inject the site's libmpi.so.12 for the image's libmpich.so.12"

echo
echo "demo: 2/5 the app as user $user: the image's /opt/app/hello, linked with its MPICH, runs on the site's MPICH $version:"
echo "    \$ shimrun --conf $conf $sif /opt/app/hello"
as_user shimrun --conf "$conf" "$sif" /opt/app/hello >"$tmp/out" || die "the app failed (exit $?)"
shorten <"$tmp/out" | indent
grep -Eq "MPICH Version: +$version" "$tmp/out" || die "the app did not report the injected MPICH $version"

echo
echo "demo: 3/5 the same with --no-profiles: nothing is injected, the image's own MPICH runs:"
echo "    \$ shimrun --no-profiles --conf $conf $sif /opt/app/hello"
as_user shimrun --no-profiles --conf "$conf" "$sif" /opt/app/hello >"$tmp/out" || die "the app failed (exit $?)"
shorten <"$tmp/out" | indent
grep -q "MPICH Version:" "$tmp/out" && ! grep -Eq "MPICH Version: +$version" "$tmp/out" \
    || die "with --no-profiles the app did not report the image's own MPICH"

echo
echo "demo: 4/5 a hardware need the node misses: an image declaring 'gpu.cuda>=12.2' (in /.shim/requires) is not started without a GPU:"
echo "    \$ shimrun --conf $conf $cuda_img /bin/busybox true"
rc=0
as_user shimrun --conf "$conf" "$cuda_img" /bin/busybox true 2>"$tmp/err" || rc=$?
indent <"$tmp/err"
case $rc in
    67) echo "    exit status 67: a declared requirement the node misses is an error (an undeclared CUDA image only gets a warning)" ;;
    0) echo "    exit status 0: this node has an NVIDIA GPU whose driver supports CUDA 12.2" ;;
    *) die "expected exit status 67 (or 0 on a GPU node), got $rc" ;;
esac

echo
echo "demo: 5/5 MPI ranks sharing one container: the site's mpiexec starts 4 shimruns, SHIMRUN_SHARE=1 puts them in one container:"
echo "    \$ SHIMRUN_SHARE=1 $prefix/bin/mpiexec -n 4 shimrun --conf $conf $sif sh -c 'echo \"mount ns \$(readlink /proc/self/ns/mnt)\"; exec /opt/app/hello'"
as_user env SHIMRUN_SHARE=1 "$prefix/bin/mpiexec" -n 4 shimrun --conf "$conf" "$sif" \
    sh -c 'echo "mount ns $(readlink /proc/self/ns/mnt)"; exec /opt/app/hello' >"$tmp/out" \
    || die "the 4-rank run failed (exit $?)"
{ grep '^mount ns ' "$tmp/out"; grep '^mpi-hello: library' "$tmp/out"; grep '^mpi-hello: rank' "$tmp/out" | sort
  grep -v -e '^mount ns ' -e '^mpi-hello: library' -e '^mpi-hello: rank' "$tmp/out" || true; } | shorten | indent
[ "$(grep -c '^mount ns ' "$tmp/out")" = 4 ] && [ "$(grep '^mount ns ' "$tmp/out" | sort -u | wc -l)" = 1 ] \
    || die "the 4 ranks did not share one mount namespace"
grep -q "allreduce sum=10 expected=10 ok" "$tmp/out" || die "the 4 ranks did not form one MPI world"

echo
echo "demo: done in $((SECONDS - start)) s"
