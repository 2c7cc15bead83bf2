"""Data parallelism on the CPU: one epoch of full MNIST with 2 processes x 1 thread against
1 process x 2 threads, in one run, alternating.

    python benchmarks/bench_ddp.py --data-root ../shared/data/mnist \
        --json benchmarks/results/ddp_cpu.json

Each configuration is ``opzo train`` itself (OPZO, FC 784-800-800-10, T=6, global batch 128,
dropout 0.2, the default options) for one epoch on the 60 000 training images: ``--nproc 2
--threads 1`` (torchrun, gloo) and ``--threads 2``. They alternate ``--repeats`` times so that
machine noise hits both alike; the figure is the ratio of the training-epoch times
(``epoch_time_s`` of metrics.jsonl) within each pair, with the peak resident memory of each
process (``peak_memory_mb`` of summary.json) and the test accuracy after the epoch.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {"1proc-2threads": ["--threads", "2"],
           "2proc-1thread": ["--nproc", "2", "--threads", "1"]}


def run_one(args: argparse.Namespace, extra: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "opzo", "train", "--dataset", args.dataset, "--data-root",
           args.data_root, "--epochs", "1", "--seed", "0", "--quiet", "--out", str(out),
           *extra]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())
    return {"epoch_time_s": row["epoch_time_s"], "test_acc": row["test_acc"],
            "peak_rss_mb": [p.get("rss") for p in summary["peak_memory_mb"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data/mnist")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {k: [] for k in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            names = list(CONFIGS) if r % 2 == 0 else list(CONFIGS)[::-1]
            for name in names:
                res = run_one(args, CONFIGS[name], Path(tmp) / f"{name}-{r}")
                runs[name].append(res)
                print(f"repeat {r + 1} {name:15s} epoch {res['epoch_time_s']:7.2f} s, test acc "
                      f"{res['test_acc']:.2f}%, peak RSS per process {res['peak_rss_mb']} MiB",
                      flush=True)
    ratios = [b["epoch_time_s"] / a["epoch_time_s"]
              for a, b in zip(runs["1proc-2threads"], runs["2proc-1thread"])]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "setting": "OPZO, FC 784-800-800-10, T=6, global batch 128, dropout 0.2, 1 epoch of "
                   f"{args.dataset} (60 000 images)",
        "runs": runs,
        "epoch_time_ratio_2proc_over_1proc": [round(x, 3) for x in ratios],
        "median_ratio": round(statistics.median(ratios), 3),
    }
    print(f"2 processes x 1 thread / 1 process x 2 threads, epoch time: "
          f"{', '.join(f'{x:.2f}' for x in ratios)} (median {result['median_ratio']:.2f})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
