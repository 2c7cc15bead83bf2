#!/usr/bin/env bash
# OpenMP's waiting between spinning and sleeping: the median OPZO step of bench_busy.py's step
# worker (FC 784-800-800-10, T 6, batch 128, torch's thread count), idle and beside one process
# spinning on a core, for unbounded spinning, passive waiting and GOMP_SPINCOUNT bounds.
#   bash benchmarks/bench_spincount.sh            # from the repository root (RESULTS section 27)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
median_ms() {
  env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$@" "$PY" benchmarks/bench_busy.py --worker-step \
    --step-rounds 30 2>/dev/null | tail -1 |
    "$PY" -c 'import json, statistics, sys; print(round(1e3 * statistics.median(json.load(sys.stdin)["times"]), 1))'
}
echo "setting,idle_ms,busy_ms"
for setting in spinning OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=1000 GOMP_SPINCOUNT=10000 \
               GOMP_SPINCOUNT=100000; do
  vars=(); [ "$setting" = spinning ] || vars=("$setting")
  idle=$(median_ms "${vars[@]}")
  "$PY" -c "while True: pass" & neighbour=$!
  sleep 0.5
  busy=$(median_ms "${vars[@]}")
  kill "$neighbour"; wait "$neighbour" 2>/dev/null || true
  echo "$setting,$idle,$busy"
done
