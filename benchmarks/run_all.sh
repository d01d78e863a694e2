#!/bin/bash
# Run every benchmark once, in order, leaving its table in benchmarks/results/*.md:
#   launch.md (warm single launch), check.md (ELF/ABI analysis), srun.md (srun -n N),
#   pingpong.md (MPI latency/bandwidth), resident.md (what stays per node), pull.md (shimrun pull
#   from a local registry vs skopeo + umoci + mksquashfs), trust.md (image policy and provenance),
#   env.md (a launch with 10,000 vs 100,000 OCI Env entries), io.md (what the app reads: cold and warm,
#   each serve mode, ch-run and the kernel's squashfs; with --nodes, the per-node reads under Slurm),
#   audit.md (what --report-loaded costs: a numpy/scipy/mpi4py app and /bin/true, with and without).
# As root (the local Slurm needs it; the measured commands run as an ordinary user), after
# scripts/install.sh. Each benchmark runs with its default repeats (bench_*.py [REPEATS] to change).
#   bash benchmarks/run_all.sh            # all ten
#   bash benchmarks/run_all.sh srun pingpong   # some of them, by name
set -euo pipefail
cd "$(dirname "$0")"
PY=${SHIM_PYTHON:-/opt/shim/venv/bin/python}
[ "$(id -u)" -eq 0 ] || { echo "run_all.sh: run as root (the local Slurm needs it)" >&2; exit 1; }
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(launch check srun pingpong resident pull trust env io audit)
for name in "${names[@]}"; do
    [ -f "bench_$name.py" ] || { echo "run_all.sh: no benchmark named $name" >&2; exit 64; }
    echo "=== bench_$name.py" >&2
    start=$SECONDS
    args=()
    [ "$name" != io ] || args=(--nodes)   # the per-node reads under the local Slurm, into io.md too
    "$PY" "bench_$name.py" "${args[@]}"
    echo "=== bench_$name.py: results/$name.md ($((SECONDS - start)) s)" >&2
done
