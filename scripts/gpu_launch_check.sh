#!/usr/bin/env bash
# A CUDA app launched by shim on a real GPU, as an ordinary user (issue #26, item 5).
#
#   bash scripts/gpu_launch_check.sh build   here, on the development machine (compilers, PyPI):
#       makes gpu-carry/ (gitignored, <= 64 MiB; scripts/gpu_bundle.py): shim runnable by a bare
#       CPython 3.12 (its C core built for cp312, the native front-end, the packages it imports),
#       and a directory image with libcudart.so.12 (PyPI's nvidia-cuda-runtime-cu12) and
#       /opt/app/cudacheck (scripts/gpu_cudacheck.c). Prints the glibc versions the native files need.
#   bash scripts/gpu_launch_check.sh node    on the GPU node, as root, from the repo root with
#       gpu-carry/ beside it. Through the device tool, after `build` here:
#           run(command="bash scripts/gpu_launch_check.sh node", carry=["gpu-carry"], timeout_s=300)
#       It installs the carry at ROOT (/opt/shim-gpucheck: the front-end starts its planner as
#       ROOT/bin/python3, a wrapper around the node's python3.12 -I -S with only the carry's
#       packages), makes an ordinary user (useradd, or $SHIM_GPU_USER), and as that user runs
#         (0) shimrun check IMAGE and shimrun IMAGE /opt/app/cudacheck: no GPU asked for (shim's
#             hardware diagnostics; the app finds no driver);
#         (a) shimrun check --nv IMAGE,
#             then shimrun --nv IMAGE /opt/app/cudacheck (site configuration: the cuda-driver
#             profile over the node's driver libraries);
#         (b) with a CDI spec written for this node (scripts/gpu_cdi_spec.py, into a directory
#             the site configuration's [cdi] dirs names): shimrun cdi list, shimrun check and
#             shimrun --device nvidia.com/gpu=all, and =0, IMAGE /opt/app/cudacheck.
#       Everything goes to a log, printed at the end in Markdown for docs/gpu-device-check.md
#       (and copied to $OUT when the device tool set it). Exit 0: no step crashed (no traceback)
#       and, where the node has /dev/nvidia0, every cudacheck run succeeded; 1 otherwise.
#   On a node without a GPU (this machine) the node phase shows the plan and shim's GPU-ABSENT
#   diagnostic, cudacheck reports no usable device, and the CDI runs find no nvidia.com/gpu device.
#
# Settings: SHIM_GPU_PYTHON (the node's python3.12; default: python3.12 on PATH, or python3 when it
# is 3.12), SHIM_GPU_USER (default shimgpu), SHIM_GPU_ROOT (build only; default /opt/shim-gpucheck),
# SHIM_GPU_CARRY (default gpu-carry), SHIM_GPU_WHEELS (build: pip's download cache, default
# /var/cache/shim-test/gpu-wheels), SHIM_BUILD_PYTHON (build: a CPython 3.12 with headers; default
# pyenv's 3.12.1).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
carry=${SHIM_GPU_CARRY:-$here/gpu-carry}

die() { echo "gpu_launch_check: error: $*" >&2; exit 2; }

build_python() {
    if [ -n "${SHIM_BUILD_PYTHON:-}" ]; then echo "$SHIM_BUILD_PYTHON"; return; fi
    PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || command -v python3.12 ||
        die "no CPython 3.12 with headers to build with (set SHIM_BUILD_PYTHON)"
}

node_python() {
    local py=${SHIM_GPU_PYTHON:-}
    if [ -z "$py" ]; then
        py=$(command -v python3.12 || command -v python3 || true)
    fi
    [ -n "$py" ] && [ -x "$py" ] || die "no python3.12 on this node (set SHIM_GPU_PYTHON)"
    local ver
    ver=$("$py" -I -S -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$ver" = 3.12 ] || die "$py is Python $ver; the carry's C core and cffi are built for 3.12"
    readlink -f "$py"
}

cmd_build() {
    local py
    py=$(build_python)
    cd "$here"
    "$py" -I scripts/gpu_bundle.py build "$carry" "${SHIM_GPU_ROOT:-/opt/shim-gpucheck}" \
        "${SHIM_GPU_WHEELS:-/var/cache/shim-test/gpu-wheels}"
    echo "gpu_launch_check: carry ready: $carry ($(du -sh "$carry" | cut -f1)); on the GPU node: bash scripts/gpu_launch_check.sh node"
}

# ---- node phase ----------------------------------------------------------------------------------

# $1: the node's glibc version is at least the carry's need (GLIBC_NEEDED)?
glibc_ok() {
    local have need
    have=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
    need=$(cat "$carry/GLIBC_NEEDED")
    [ -z "$have" ] && return 0
    [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" = "$need" ] ||
        die "this node's glibc $have is older than $need, which the carried C core needs: build the carry on an older distribution"
}

install_carry() {   # the carry at ROOT, root's and read-only for others; the planner's wrapper
    local py=$1
    rm -rf "$root"
    mkdir -p "$root/bin" "$root/etc/site" "$root/etc/nv/profiles" "$root/etc/cdi-site" "$root/cdi"
    cp -a "$carry/site" "$carry/image" "$root/"
    cat > "$root/bin/python3" <<EOF
#!/bin/sh
# shim's planner, as the front-end starts it ("-I -c CODE ARGS..."): this node's Python 3.12,
# isolated (-I) and without site packages (-S): only the carried packages are importable.
[ "\$1" = -I ] && [ "\$2" = -c ] || { echo "$root/bin/python3: started as \$0 \$1 \$2: expected -I -c" >&2; exit 70; }
code=\$3
shift 3
exec $py -I -S -c "import sys; sys.path.insert(0, '$root/site'); \$code" "\$@"
EOF
    chmod 0755 "$root/bin/python3"
    : > "$root/etc/site/shim.toml"
    : > "$root/etc/nv/shim.toml"
    cp "$root/site/shim/conf/profiles/examples/cuda-driver.toml" "$root/etc/nv/profiles/"
    printf '[cdi]\ndirs = ["%s/cdi"]\n' "$root" > "$root/etc/cdi-site/shim.toml"
    chown -R 0:0 "$root"
    chmod -R go-w,a+rX "$root"
}

ensure_user() {
    local name=${SHIM_GPU_USER:-shimgpu}
    if ! id -u "$name" >/dev/null 2>&1 && ! command -v useradd >/dev/null; then
        # A minimal node image without useradd: an ordinary uid with no passwd entry will do.
        user=$name uid=4242 gid=4242 home=/tmp/$name-home
        mkdir -p "$home"
        chown "$uid:$gid" "$home"
        return
    fi
    id -u "$name" >/dev/null 2>&1 || useradd -m -s /bin/sh "$name" || die "cannot make the user $name (useradd)"
    user=$name
    uid=$(id -u "$name")
    gid=$(id -g "$name")
    home=$(getent passwd "$name" | cut -d: -f6)
    [ -d "$home" ] || { mkdir -p "$home"; chown "$uid:$gid" "$home"; }
}

# Run "$@" as the ordinary user with a clean environment; SHIMRUN_CONF=$1 (a site directory).
as_user() {
    local conf=$1
    shift
    (cd /tmp && setpriv --reuid "$uid" --regid "$gid" --clear-groups -- \
        env -i HOME="$home" USER="$user" LOGNAME="$user" PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
        SHIMRUN_CONF="$conf" SHIMRUN_CACHE="$home/.cache/shim-gpucheck" "$@")
}

# One step in the log: the command as a user types it, its output, its exit status.
step() {
    local conf=$1 shown=$2 rc=0
    shift 2
    printf '$ %s\n' "$shown" >> "$log"
    as_user "$conf" "$@" >> "$log.step" 2>&1 || rc=$?
    cat "$log.step" >> "$log"
    if grep -q "Traceback" "$log.step"; then crashed=1; fi
    rm -f "$log.step"
    printf '[exit %d]\n\n' "$rc" >> "$log"
    last_rc=$rc
}

fence() { printf '```\n'; }

cmd_node() {
    [ "$(id -u)" = 0 ] || die "run the node phase as root (it installs the carry and makes a user)"
    command -v setpriv >/dev/null || die "no setpriv (util-linux) on this node: it runs shimrun as the ordinary user"
    [ -f "$carry/ROOT" ] || die "no carry at $carry: run 'bash scripts/gpu_launch_check.sh build' first"
    root=$(cat "$carry/ROOT")
    glibc_ok
    local py shimrun img cdi_conf nv_conf gpu=0 failed=0
    py=$(node_python)
    install_carry "$py"
    ensure_user
    as_user "$root/etc/site" "$py" -I -S -c pass ||
        die "the user $user cannot run $py (under a directory only root may enter?): set SHIM_GPU_PYTHON"
    shimrun=$root/site/shim/libexec/shimrun
    img=$root/image
    nv_conf=$root/etc/nv
    cdi_conf=$root/etc/cdi-site
    log=${SHIM_GPU_LOG:-$root/gpu-launch-check.md}
    crashed=0
    if [ -e /dev/nvidia0 ]; then gpu=1; fi
    {
        echo "### GPU launch check: $(date -u '+%F %T UTC') on $(hostname)"
        echo
        fence
        echo "kernel $(uname -r), glibc $(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}'), python $py ($("$py" -V 2>&1))"
        echo "user $user (uid $uid), shim carried at $root ($(head -1 "$carry/BUILD.txt"))"
        echo "driver: $(head -1 /proc/driver/nvidia/version 2>/dev/null || echo 'none (no /proc/driver/nvidia/version)')"
        echo "nvidia-smi -L: $(nvidia-smi -L 2>&1 | head -8 || true)"
        echo "device nodes: $(ls /dev/nvidia* 2>/dev/null | tr '\n' ' ' || true)"
        echo "image: $img (CUDA runtime $(ls "$img"/usr/local/cuda/lib64/ | grep -o 'libcudart.so.[0-9.]*$' | sort | tail -1))"
        fence
        echo
        echo "#### The planner's Python: only the carried packages (as the front-end starts it: -I -S)"
        echo
        fence
    } > "$log"
    step "$nv_conf" "ROOT/bin/python3 -I -c 'import ...; print(where each module comes from)'" "$root/bin/python3" -I -c \
        "import sys, shim, shim._core, _cffi_backend, elftools, yaml, psutil, pynvml; print(sys.version.split()[0], sys.flags.isolated, sys.flags.no_site); [print(m.__name__, m.__file__) for m in (shim, shim._core, _cffi_backend, elftools, yaml, psutil, pynvml)]"
    {
        fence; echo
        echo "#### (0) no GPU asked for: the image's CUDA runtime alone (no driver in the container)"
        echo; fence
    } >> "$log"
    step "$nv_conf" "shimrun check IMAGE /opt/app/cudacheck" "$shimrun" check "$img" /opt/app/cudacheck
    step "$nv_conf" "shimrun IMAGE /opt/app/cudacheck" "$shimrun" "$img" /opt/app/cudacheck
    {
        fence; echo
        echo "#### (a) --nv: the cuda-driver profile over the node's driver libraries"
        echo; fence
    } >> "$log"
    step "$nv_conf" "shimrun check --nv IMAGE /opt/app/cudacheck" "$shimrun" check --nv "$img" /opt/app/cudacheck
    step "$nv_conf" "shimrun --nv IMAGE /opt/app/cudacheck" "$shimrun" --nv "$img" /opt/app/cudacheck
    if [ "$gpu" = 1 ] && [ "$last_rc" != 0 ]; then failed=1; fi
    { fence; echo; echo "#### (b) a CDI spec written for this node ([cdi] dirs = [\"$root/cdi\"])"; echo; fence; } >> "$log"
    printf '$ python3.12 -I -S scripts/gpu_cdi_spec.py %s/cdi/nvidia.json   (as root)\n' "$root" >> "$log"
    local rc=0
    "$py" -I -S -c "import sys; sys.path[:0] = ['$root/site', '$here/scripts']; sys.argv = ['gpu_cdi_spec.py', '$root/cdi/nvidia.json']
import runpy; runpy.run_path('$here/scripts/gpu_cdi_spec.py', run_name='__main__')" >> "$log" 2>&1 || rc=$?
    printf '[exit %d]\n\n' "$rc" >> "$log"
    step "$cdi_conf" "shimrun cdi list" "$shimrun" cdi list
    step "$cdi_conf" "shimrun check --device nvidia.com/gpu=all IMAGE /opt/app/cudacheck" \
        "$shimrun" check --device nvidia.com/gpu=all "$img" /opt/app/cudacheck
    for dev in all 0; do
        step "$cdi_conf" "shimrun --device nvidia.com/gpu=$dev IMAGE /opt/app/cudacheck" \
            "$shimrun" --device "nvidia.com/gpu=$dev" "$img" /opt/app/cudacheck
        if [ "$gpu" = 1 ] && [ "$last_rc" != 0 ]; then failed=1; fi
    done
    fence >> "$log"
    if [ -f "$root/cdi/nvidia.json" ]; then
        { echo; echo "The spec written for this node:"; echo; echo '```json'; cat "$root/cdi/nvidia.json"; fence; } >> "$log"
    fi
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then cp "$log" "$OUT/"; fi
    cat "$log"
    echo
    echo "gpu_launch_check: log: $log"
    if [ "$crashed" = 1 ]; then echo "gpu_launch_check: a step crashed (Traceback above)"; exit 1; fi
    if [ "$failed" = 1 ]; then echo "gpu_launch_check: the node has a GPU but a cudacheck run failed"; exit 1; fi
    if [ "$gpu" = 1 ]; then
        echo "gpu_launch_check: cudacheck ran on the GPU through --nv and through CDI"
    else
        echo "gpu_launch_check: no GPU on this node (no /dev/nvidia0): the GPU-absent path ran"
    fi
}

case "${1:-}" in
    build) cmd_build ;;
    node) cmd_node ;;
    *) die "usage: $0 build | node" ;;
esac
