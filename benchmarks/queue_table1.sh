#!/usr/bin/env bash
# Run every Table 1 job of RESULTS.md, two at a time (one torch thread each): the MNIST column
# at the paper's 50 epochs and the Fashion-MNIST column at 25 epochs. Re-running resumes.
# Usage: bash benchmarks/queue_table1.sh
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# wait until no training runs (an earlier invocation may still be busy)
while pgrep -f "opzo.cli train" >/dev/null; do sleep 20; done
printf '%s\n' \
  "mnist ../shared/data/mnist 50 opzo" "mnist ../shared/data/mnist 50 bp" \
  "mnist ../shared/data/mnist 50 dfa" "mnist ../shared/data/mnist 50 dkp" \
  "mnist ../shared/data/mnist 50 zo" \
  "fashion-mnist ../shared/data/fashion-mnist 25 opzo" \
  "fashion-mnist ../shared/data/fashion-mnist 25 bp" \
  "fashion-mnist ../shared/data/fashion-mnist 25 dfa" \
  "fashion-mnist ../shared/data/fashion-mnist 25 dkp" \
  "fashion-mnist ../shared/data/fashion-mnist 25 zo" |
  xargs -P 2 -L 1 sh -c '"$0" benchmarks/run_table1.py --dataset "$1" --data-root "$2" \
      --epochs "$3" --methods "$4" --jobs 1 >/dev/null' "$PY"
"$PY" benchmarks/run_table1.py --summarize
