"""The three neuron models (LIF, CubaLIF, ALIF; ``--neuron``) under OPZO and spatial BP on Randman.

    python benchmarks/run_neurons.py                 # 3 neurons x 2 methods, 8 epochs, 2 jobs
    python benchmarks/run_neurons.py --summarize     # the table of finished runs

Each run trains ``configs/otpe-randman.toml`` (Randman time code, T=50, FC 2 x 128,
Adamax) with the OTTT trace, in its own process with one torch thread; OPZO with α = 0.2
(as ``run_randman.py``'s OPZO rows). The new neurons take their defaults (CubaLIF
λ_s = 0.5; ALIF β = 0.2, λ_a = 0.9). Runs go to ``<out-root>/<neuron>-<method>``
(default ``benchmarks/runs/neurons``, git-ignored; ``--resume`` / ``--overwrite`` as in
``benchmarks/runner.py``); the table is written to ``benchmarks/results/neurons.csv``
(relative names only) and printed as markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from runner import add_output_options, check_fresh, run_all, train_into

ROOT = Path(__file__).resolve().parents[1]
NEURONS = ["lif", "cuba", "alif"]
METHODS: dict[str, list[str]] = {
    "bp": ["--method", "bp"],
    "opzo": ["--method", "opzo", "--alpha", "0.2"],
}
CSV = ROOT / "benchmarks" / "results" / "neurons.csv"


def run_dir(root: Path, neuron: str, method: str) -> Path:
    return root / f"{neuron}-{method}"


def run_one(neuron: str, method: str, args: argparse.Namespace) -> str:
    return train_into(run_dir(args.out_root, neuron, method),
                      ["--config", str(ROOT / "configs" / "otpe-randman.toml"),
                       "--dataset", "randman-time", "--T", "50", "--neuron", neuron,
                       *METHODS[method], "--epochs", str(args.epochs), "--seed",
                       str(args.seed), "--threads", "1"], ROOT, args.resume, args.overwrite)


def summarize(root: Path) -> None:
    rows = []
    for neuron in NEURONS:
        for method in METHODS:
            out = run_dir(root, neuron, method)
            if not (out / "summary.json").exists():
                continue
            s = json.loads((out / "summary.json").read_text())
            metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            rates = metrics[-1].get("firing_rate") or []
            rows.append({
                "neuron": neuron, "method": method, "epochs": len(metrics),
                "final_test_acc": round(s["final_test_acc"], 2),
                "best_test_acc": round(s["best_test_acc"], 2),
                "final_train_acc": round(metrics[-1].get("train_acc", float("nan")), 2),
                "firing_rate": " ".join(f"{r:.3f}" for r in rates),
                "s_per_epoch": round(statistics.median(m["epoch_time_s"] for m in metrics), 2),
            })
    if not rows:
        print("no finished runs")
        return
    CSV.parent.mkdir(parents=True, exist_ok=True)
    with CSV.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("| neuron | method | epochs | final test acc | best test acc | train acc | "
          "firing rate (hidden 1 / 2) | s/epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['neuron']} | {r['method']} | {r['epochs']} | {r['final_test_acc']:.2f} | "
              f"{r['best_test_acc']:.2f} | {r['final_train_acc']:.2f} | "
              f"{r['firing_rate'].replace(' ', ' / ')} | {r['s_per_epoch']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neurons", nargs="+", default=NEURONS, choices=NEURONS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--summarize", action="store_true")
    add_output_options(ap, "neurons")
    args = ap.parse_args()
    if not args.summarize:
        jobs = [(n, m) for n in args.neurons for m in args.methods]
        check_fresh([run_dir(args.out_root, n, m) for n, m in jobs], args)
        run_all(lambda job: run_one(*job, args), jobs, args.jobs)
    summarize(args.out_root)


if __name__ == "__main__":
    main()
