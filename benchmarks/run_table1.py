"""Run the OPZO paper's Table 1 setting (FC 784-800-800-10, T=6) for several methods.

    python benchmarks/run_table1.py --dataset mnist --data-root ../shared/data/mnist
    python benchmarks/run_table1.py --dataset fashion-mnist \
        --data-root ../shared/data/fashion-mnist --epochs 15
    python benchmarks/run_table1.py --summarize            # print the table of finished runs
    python benchmarks/run_table1.py --dataset mnist --data-root ../shared/data/mnist \
        --jobs 1 --threads 2 --suffix=-native              # into <...>-<method>-native
    python benchmarks/run_table1.py --dataset mnist --data-root ../shared/data/mnist --resume

Each method runs ``opzo train --config configs/table1-<method>.toml`` in its own process with
one torch thread, ``--jobs`` at a time, into ``<out-root>/<dataset>-e<epochs>-<method>``
(plus ``--suffix``; ``--out-root`` defaults to ``benchmarks/runs/table1``). A folder that
already holds a run stops the script unless ``--resume`` (continue interrupted runs, skip
finished ones) or ``--overwrite`` (start again) is given (``benchmarks/runner.py``).
``python benchmarks/collect_results.py`` then writes ``benchmarks/results/table1-*.csv``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runner import add_output_options, check_fresh, run_all, train_into

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["bp", "dfa", "dkp", "zo", "opzo"]
PUBLISHED = {"mnist": {"bp": 98.38, "dfa": 98.05, "dkp": 98.15, "zo": 86.53, "opzo": 98.34}}


def run_dir(method: str, args: argparse.Namespace) -> Path:
    return args.out_root / f"{args.dataset}-e{args.epochs}-{method}{args.suffix}"


def run_one(method: str, args: argparse.Namespace) -> str:
    return train_into(run_dir(method, args),
                      ["--config", str(ROOT / "configs" / f"table1-{method}.toml"),
                       "--dataset", args.dataset, "--data-root", args.data_root,
                       "--epochs", str(args.epochs), "--threads", str(args.threads),
                       "--seed", str(args.seed)], ROOT, args.resume, args.overwrite)


def summarize(runs: Path) -> None:
    rows = []
    table_runs = [*runs.glob("mnist-e*/summary.json"), *runs.glob("fashion-mnist-e*/summary.json")]
    for summary in sorted(table_runs):
        s = json.loads(summary.read_text())
        lines = (summary.parent / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(x) for x in lines if x.strip()]
        epoch_time = sum(m["epoch_time_s"] for m in metrics) / max(len(metrics), 1)
        pub = PUBLISHED.get(s["dataset"], {}).get(s["method"])
        rows.append((summary.parent.name, s["method"], s["dataset"], s["epochs"],
                     s["final_test_acc"], s["best_test_acc"], pub, epoch_time))
    print("| run | method | dataset | epochs | final test acc | best test acc | published |"
          " s/epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        pub = f"{r[6]:.2f}" if r[6] is not None else "-"
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.2f} | {pub} |"
              f" {r[7]:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--suffix", default="", help="appended to each run folder's name")
    ap.add_argument("--summarize", action="store_true")
    add_output_options(ap, "table1")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.out_root)
        return
    check_fresh([run_dir(m, args) for m in args.methods], args)
    run_all(lambda m: run_one(m, args), args.methods, args.jobs)
    summarize(args.out_root)


if __name__ == "__main__":
    main()
