#!/usr/bin/env bash
# Launch the 2-process test worker (tests/ddp_worker.py, job "steps") N times under torchrun
# and count the launches that fail; each failure's output is kept. A check for teardown
# flakes of torch.distributed (gloo), which one test-suite run rarely shows.
#   bash tools/repeat_ddp_launch.sh 30 [OUT_DIR]
set -u
n=${1:-30}
out=${2:-$(mktemp -d)}
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
fails=0
for i in $(seq 1 "$n"); do
  work="$out/run"; rm -rf "$work"; mkdir -p "$work"
  if ! OMP_NUM_THREADS=1 PYTHONPATH="$root" timeout 300 "$py" -m torch.distributed.run \
      --standalone --nproc_per_node=2 "$root/tests/ddp_worker.py" steps "$work" \
      > "$out/launch_$i.log" 2>&1; then
    fails=$((fails + 1))
    echo "launch $i failed: $out/launch_$i.log"
  fi
done
echo "$fails of $n launches failed"
[ "$fails" -eq 0 ]
