#!/usr/bin/env bash
# The GPU check of opzo (issues 12, 26): about 12 minutes at most on one GPU, one JSON of its
# figures.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: $OUT, else benchmarks/logs/gpu
#
# Runs from the repository root with the machine's python3 (its torch must see a GPU; opzo is
# taken from src/, nothing is installed), each part under its own time limit:
#   1. the tests marked `cuda` (each rule's gradient on CUDA equals the CPU gradient; an
#      embedded-MNIST epoch on CUDA);
#   2. benchmarks/bench_speed.py --device cuda: every rule, autograd OTTT and BPTT as ratios to
#      a CUDA inference pass (FC 784-800-800-10, T=6, batch 128);
#   3. benchmarks/bench_epoch.py: one epoch of CIFAR-10-shaped data (50 000 synthetic 3x32x32
#      images) on the full-width conv5, T=6, batch 128, for bp, dfa and opzo: seconds per
#      epoch and peak GPU memory (the paper's Table 6: OPZO 46 s, BP 45 s on an RTX 3090);
#   4. benchmarks/bench_large.py resnet19: one epoch of the CIFAR-shaped data on ResNet-19 with
#      LocalZO + TET by BPTT (LocalZO paper Table 7: T=6, batch 64), extrapolated after 60 s;
#   5. benchmarks/bench_large.py nfresnet34: 3 training batches of NF-ResNet-34 at 224x224
#      (OPZO paper Table 4: T=6, batch 64, noise 0.1) with opzo and bp, and OPZO's M size.
#   Parts 4 and 5 report "skipped" for a net this tree does not have (issue 26a adds them).
# Then OUT_DIR/gpu_check.json gathers everything (with each part's exit code).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-benchmarks/logs/gpu}}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check: this python's torch sees no GPU"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/nvidia_smi.csv" 2>&1

timeout 150 "$PY" -m pytest -q -o addopts="" -p no:cacheprovider -m cuda tests/test_devices.py \
    --junitxml "$OUT_DIR/cuda_tests.xml" 2>&1 | tee "$OUT_DIR/cuda_tests.log"
TESTS_RC=${PIPESTATUS[0]}
timeout 120 "$PY" benchmarks/bench_speed.py --device cuda --rounds 20 \
    --json "$OUT_DIR/speed_cuda.json" 2>&1 | tee "$OUT_DIR/speed_cuda.log"
SPEED_RC=${PIPESTATUS[0]}
timeout 200 "$PY" benchmarks/bench_epoch.py --device cuda --max-seconds 60 \
    --json "$OUT_DIR/epoch_conv5.json" 2>&1 | tee "$OUT_DIR/epoch_conv5.log"
EPOCH_RC=${PIPESTATUS[0]}
timeout 200 "$PY" benchmarks/bench_large.py resnet19 --device cuda --max-seconds 60 \
    --json "$OUT_DIR/epoch_resnet19_localzo_tet.json" 2>&1 | tee "$OUT_DIR/epoch_resnet19.log"
R19_RC=${PIPESTATUS[0]}
timeout 200 "$PY" benchmarks/bench_large.py nfresnet34 --device cuda --steps 3 \
    --json "$OUT_DIR/step_nfresnet34.json" 2>&1 | tee "$OUT_DIR/step_nfresnet34.log"
NF34_RC=${PIPESTATUS[0]}

"$PY" - "$OUT_DIR" "$TESTS_RC" "$SPEED_RC" "$EPOCH_RC" "$R19_RC" "$NF34_RC" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, tests_rc, speed_rc, epoch_rc, r19_rc, nf34_rc = Path(sys.argv[1]), *map(int, sys.argv[2:])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.is_file() else None
tests = None
if (out / "cuda_tests.xml").is_file():
    s = ET.parse(out / "cuda_tests.xml").getroot()
    s = s if s.tag == "testsuite" else s.find("testsuite")
    tests = {k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
report = {"gpu": (out / "nvidia_smi.csv").read_text().strip().splitlines()[-1],
          "cuda_tests": {"exit_code": tests_rc, **(tests or {})},
          "speed": {"exit_code": speed_rc, **(load("speed_cuda.json") or {})},
          "epoch_conv5": {"exit_code": epoch_rc, **(load("epoch_conv5.json") or {})},
          "epoch_resnet19_localzo_tet": {"exit_code": r19_rc,
                                         **(load("epoch_resnet19_localzo_tet.json") or {})},
          "step_nfresnet34": {"exit_code": nf34_rc, **(load("step_nfresnet34.json") or {})}}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
EOF
