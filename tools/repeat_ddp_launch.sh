#!/usr/bin/env bash
# Launch a 2-process run N times and count the launches that fail (exit code not 0); each
# failure's output is kept. A check for teardown flakes of torch.distributed (gloo), which
# one test-suite run rarely shows.
#   bash tools/repeat_ddp_launch.sh 30 [OUT_DIR]
# JOB picks what is launched:
#   JOB=steps (default)  the test worker (tests/ddp_worker.py, job "steps") under torchrun;
#   JOB=train            `opzo train --nproc 2` of a realistic net (400-200, T 10, 3 epochs)
#                        on MNIST (DATA_ROOT, default ../shared/data/mnist beside the
#                        repository; LIMIT training
#                        samples, default 12000), as a user launches it.
# BUSY=1 keeps one more core busy during the launches (a `while True: pass` process), as a
# loaded machine would. SRC: the source tree to test (default the repository's src).
#   JOB=train BUSY=1 bash tools/repeat_ddp_launch.sh 30
set -u
n=${1:-30}
out=${2:-$(mktemp -d)}
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
src=${SRC:-$root/src}
job=${JOB:-steps}
busy_pid=
if [ "${BUSY:-0}" = 1 ]; then
  "$py" -c 'while True: pass' &
  busy_pid=$!
  trap 'kill "$busy_pid" 2>/dev/null' EXIT
fi
fails=0
for i in $(seq 1 "$n"); do
  work="$out/run"; rm -rf "$work"; mkdir -p "$work"
  start=$(date +%s)
  if [ "$job" = train ]; then
    OMP_NUM_THREADS=1 PYTHONPATH="$src" timeout 600 "$py" -m opzo train --nproc 2 \
      --dataset mnist --data-root "${DATA_ROOT:-$root/../shared/data/mnist}" \
      --limit-train "${LIMIT:-12000}" --hidden 400 200 --T 10 --epochs 3 --threads 1 \
      --quiet --overwrite --out "$work" > "$out/launch_$i.log" 2>&1
  else
    OMP_NUM_THREADS=1 PYTHONPATH="$root:$src" timeout 300 "$py" -m torch.distributed.run \
      --standalone --nproc_per_node=2 "$root/tests/ddp_worker.py" steps "$work" \
      > "$out/launch_$i.log" 2>&1
  fi
  rc=$?
  echo "launch $i: exit $rc, $(( $(date +%s) - start )) s"
  if [ "$rc" -ne 0 ]; then
    fails=$((fails + 1))
    echo "launch $i failed: $out/launch_$i.log"
  fi
done
echo "$fails of $n launches failed"
[ "$fails" -eq 0 ]
