#!/usr/bin/env bash
# Run every Table 1 job of RESULTS.md, two at a time (one torch thread each): the MNIST column
# at the paper's 50 epochs and the Fashion-MNIST column at 25 epochs, into benchmarks/runs/table1.
# Options are passed on to every run_table1.py: --resume continues an interrupted queue (finished
# runs skipped), --overwrite starts every run again, --out-root DIR writes elsewhere; without
# them a run whose folder already holds a run stops with an error (benchmarks/runner.py).
# Usage: bash benchmarks/queue_table1.sh [--resume | --overwrite] [--out-root DIR]
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# wait until no training runs (an earlier invocation may still be busy)
while pgrep -f "opzo.cli train" >/dev/null; do sleep 20; done
extra=("$@")
one() {  # dataset data-root epochs method
  "$PY" benchmarks/run_table1.py --dataset "$1" --data-root "$2" --epochs "$3" --methods "$4" \
    --jobs 1 ${extra[@]+"${extra[@]}"} >/dev/null
}
while read -r dataset root epochs method; do
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
  one "$dataset" "$root" "$epochs" "$method" &
done <<'JOBS'
mnist ../shared/data/mnist 50 opzo
mnist ../shared/data/mnist 50 bp
mnist ../shared/data/mnist 50 dfa
mnist ../shared/data/mnist 50 dkp
mnist ../shared/data/mnist 50 zo
fashion-mnist ../shared/data/fashion-mnist 25 opzo
fashion-mnist ../shared/data/fashion-mnist 25 bp
fashion-mnist ../shared/data/fashion-mnist 25 dfa
fashion-mnist ../shared/data/fashion-mnist 25 dkp
fashion-mnist ../shared/data/fashion-mnist 25 zo
JOBS
wait
"$PY" benchmarks/run_table1.py --summarize ${extra[@]+"${extra[@]}"}
