"""Do two source trees train to the same numbers? For refactors that promise "every figure
re-runs to the same numbers".

Runs a fixed list of short trainings (every rule, LL/IGL, per-step updates, BPTT, the traces,
the surrogates, the three neuron models, a conv net, a chip's noise) with the ``opzo`` of each
tree (``PYTHONPATH=<tree>/src``), and compares every number of every ``metrics.jsonl`` row
except the wall-clock times. Exit status 1 if any differs.

    git worktree add ../opzo-before <commit>          # the tree to compare with
    python benchmarks/same_numbers.py --before ../opzo-before --after . \\
        --csv benchmarks/results/same_numbers.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: short runs on the embedded MNIST subset (2 epochs of 512 samples unless said otherwise)
CASES: dict[str, list[str]] = {
    "opzo": ["--method", "opzo"],
    "bp": ["--method", "bp"],
    "dfa": ["--method", "dfa"],
    "dkp": ["--method", "dkp"],
    "zo": ["--method", "zo", "--lr", "2e-5"],
    "opzo-ll": ["--method", "opzo", "--local-learning"],
    "dfa-igl": ["--method", "dfa", "--hidden", "64", "64", "64", "--igl-layer", "2"],
    "opzo-step": ["--method", "opzo", "--update", "step", "--T", "3"],
    "opzo-torch": ["--method", "opzo", "--kernels", "torch", "--noise-rng", "torch"],
    "opzo-rademacher-before": ["--method", "opzo", "--noise", "rademacher",
                               "--noise-position", "before", "--antithetic"],
    "bptt": ["--method", "bptt"],
    "bp-otpe": ["--method", "bp", "--trace", "otpe", "--hidden", "64"],
    "opzo-approx-otpe": ["--method", "opzo", "--trace", "f_approx_otpe"],
    "bp-localzo": ["--method", "bp", "--surrogate", "localzo"],
    "bp-sparsegrad": ["--method", "bp", "--surrogate", "sparsegrad", "--localzo-delta", "0.5"],
    "opzo-fast-sigmoid": ["--method", "opzo", "--surrogate", "fast-sigmoid"],
    "opzo-cuba": ["--method", "opzo", "--neuron", "cuba"],
    "bp-alif": ["--method", "bp", "--neuron", "alif"],
    "opzo-conv": ["--method", "opzo", "--net", "8C3-AP2-16C3-FC", "--T", "3"],
    "opzo-chip": ["--method", "opzo", "--hw-noise", "0.5"],
}
COMMON = ["--dataset", "embedded-mnist", "--epochs", "2", "--limit-train", "512",
          "--limit-test", "256", "--hidden", "128", "128", "--T", "4", "--batch-size", "64",
          "--seed", "3", "--threads", "1", "--lr", "2e-3"]
#: what may differ between two runs of the same code
CLOCKS = ("epoch_time_s",)


def train(tree: Path, args: list[str], out: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve() / "src")}
    cmd = [sys.executable, "-m", "opzo", "train", *args, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {tree}:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in CLOCKS} for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="the tree to compare with")
    ap.add_argument("--after", type=Path, default=Path("."), help="the tree under test")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--csv", type=Path, help="write one row per case here")
    a = ap.parse_args()
    rows, differ = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.cases:
            args = [*COMMON, *CASES[name]]
            before = train(a.before, args, Path(tmp) / f"{name}-before")
            after = train(a.after, args, Path(tmp) / f"{name}-after")
            same = before == after
            differ += not same
            last = after[-1]
            rows.append({"case": name, "identical": same, "epochs": len(after),
                         "test_acc": last["test_acc"], "train_loss": last["train_loss"],
                         "options": " ".join(CASES[name])})
            print(f"{name:24s} {'identical' if same else 'DIFFERENT'}  test acc "
                  f"{last['test_acc']:.2f}  train loss {last['train_loss']:.6f}", flush=True)
    if a.csv:
        a.csv.parent.mkdir(parents=True, exist_ok=True)
        with a.csv.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f"{len(rows) - differ}/{len(rows)} identical")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
