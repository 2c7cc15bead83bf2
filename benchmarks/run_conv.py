"""The OPZO paper's conv-net comparison (Table 1 conv columns, Table 3) on Fashion-MNIST.

    python benchmarks/run_conv.py                       # every experiment below, 2 at a time
    python benchmarks/run_conv.py --only bp opzo        # some of them
    python benchmarks/run_conv.py --summarize --plot    # the table of runs, and PNG curves

The paper's conv results are on CIFAR and DVS data we do not have offline; this reproduces
their ordering on full Fashion-MNIST with CPU-sized nets: the 5-layer net at width 0.25
(``32C3-AP2-64C3-AP2-128C3-FC``) for BP, DFA, OPZO, each with and without local learning
(LL), and the 9-layer net at width 0.125 for pure OPZO against OPZO with LL and intermediate
global learning (IGL, from the 4th conv). Common setting: T=6, batch 128, AdamW 2e-4 (wd 2e-4,
cosine), dropout 0.1, seed 0, and ``init_scale`` 2.74 (the sWS gains start at 2.74, OTTT's
post-spike scale for standardized convs; at gain 1 the deeper layers of these nets do not
fire). Each run is ``opzo train`` in its own process with one torch thread, into
``<out-root>/fashion-<name>-e<epochs>`` (``--out-root`` defaults to ``benchmarks/runs/conv``);
a folder that already holds a run stops the script unless ``--resume`` (continue interrupted
runs, skip finished ones) or ``--overwrite`` (start again) is given (``benchmarks/runner.py``);
``python benchmarks/collect_results.py`` then writes ``benchmarks/results/conv-*.csv``. The
summary gives each run's mean training time per epoch as a ratio to BP's
of the same net (runs are timed two at a time on a 2-core machine, so ratios carry that
noise).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runner import add_output_options, check_fresh, run_all, train_into

ROOT = Path(__file__).resolve().parents[1]

CONV5 = ["--net", "conv5", "--width", "0.25"]
CONV9 = ["--net", "conv9", "--width", "0.125"]
LL = ["--local-learning"]
#: name -> (network, extra options); "bp" of each network is the time baseline
EXPERIMENTS: dict[str, list[str]] = {
    "conv5-bp": [*CONV5, "--method", "bp"],
    "conv5-opzo": [*CONV5, "--method", "opzo"],
    "conv5-dfa": [*CONV5, "--method", "dfa"],
    "conv5-bp-ll": [*CONV5, "--method", "bp", *LL],
    "conv5-opzo-ll": [*CONV5, "--method", "opzo", *LL],
    "conv5-dfa-ll": [*CONV5, "--method", "dfa", *LL],
    "conv9-opzo": [*CONV9, "--method", "opzo"],
    "conv9-opzo-ll-igl": [*CONV9, "--method", "opzo", *LL, "--igl-layer", "4"],
    "conv9-bp": [*CONV9, "--method", "bp"],
}
COMMON = ["--dataset", "fashion-mnist", "--T", "6", "--batch-size", "128", "--dropout", "0.1",
          "--init-scale", "2.74", "--optimizer", "adamw", "--lr", "2e-4",
          "--weight-decay", "2e-4", "--threads", "1"]


def run_dir(root: Path, name: str, epochs: int) -> Path:
    return root / f"fashion-{name}-e{epochs}"


def run_one(name: str, args: argparse.Namespace) -> str:
    return train_into(run_dir(args.out_root, name, args.epochs),
                      [*COMMON, *EXPERIMENTS[name], "--data-root", args.data_root,
                       "--epochs", str(args.epochs), "--seed", str(args.seed)], ROOT,
                      args.resume, args.overwrite)


def summarize(root: Path, epochs: int) -> None:
    rows = {}
    for name in EXPERIMENTS:
        out = run_dir(root, name, epochs)
        if not (out / "metrics.jsonl").exists():
            continue
        metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
                   if x.strip()]
        if not metrics:
            continue
        rows[name] = (len(metrics), metrics[-1]["test_acc"], max(m["test_acc"] for m in metrics),
                      sum(m["epoch_time_s"] for m in metrics) / len(metrics),
                      metrics[-1]["firing_rate"], (out / "summary.json").exists())
    print("| run | epochs done | final test acc | best test acc | s/epoch | time / BP's |"
          " firing rates | finished |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (n, final, best, sec, rates, done) in rows.items():
        base = rows.get(name.split("-")[0] + "-bp")
        ratio = f"{sec / base[3]:.2f}" if base else "-"
        rate_text = " ".join(f"{r:.3f}" for r in rates)
        print(f"| {name} | {n} | {final:.2f} | {best:.2f} | {sec:.0f} | {ratio} | {rate_text} |"
              f" {'yes' if done else 'no'} |")


def plot(root: Path, epochs: int) -> None:
    """Test accuracy per epoch of the finished conv5 and conv9 runs, one PNG per net."""
    from opzo.plots import plot_runs

    for net in ("conv5", "conv9"):
        runs = [run_dir(root, n, epochs) for n in EXPERIMENTS
                if n.startswith(net) and (run_dir(root, n, epochs) / "metrics.jsonl").exists()]
        if runs:
            out = ROOT / "benchmarks" / "logs" / f"fashion-{net}-e{epochs}.png"
            print(f"wrote {plot_runs(runs, out)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "fashion-mnist"))
    ap.add_argument("--only", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--summarize", action="store_true")
    ap.add_argument("--plot", action="store_true", help="also draw the accuracy curves (PNG)")
    add_output_options(ap, "conv")
    args = ap.parse_args()
    if not args.summarize:
        check_fresh([run_dir(args.out_root, n, args.epochs) for n in args.only], args)
        run_all(lambda n: run_one(n, args), args.only, args.jobs)
    summarize(args.out_root, args.epochs)
    if args.plot:
        plot(args.out_root, args.epochs)


if __name__ == "__main__":
    main()
