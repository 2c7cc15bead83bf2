"""Energy proxies of trained conv nets (OPZO paper Table 7): firing rates and synaptic
operations per sample of BP, DFA and OPZO, each with and without local learning (LL).

    python benchmarks/run_synops.py                  # train the six models, then the table
    python benchmarks/run_synops.py --resume         # continue / skip finished ones
    python benchmarks/run_synops.py --summarize      # the table of what is there

The paper's Table 7 (CIFAR-10, the full 5-layer net) reports that OPZO with LL has the
lowest firing rate and SynOps. Here: the 5-layer net at width 0.25 (``32C3-AP2-64C3-AP2-128C3
-FC``) on Fashion-MNIST with RESULTS section 8's setting (T=6, batch 128, AdamW 2e-4, dropout
0.1, init scale 2.74, seed 0), but trained on the first ``--limit-train`` images for
``--epochs`` epochs (section 8's 3 full epochs take 20-30 minutes per model on this CPU) and
evaluated on the first ``--limit-test`` test images. Every evaluation of ``opzo train``
records the firing rate and the SynOps of each hidden layer (:mod:`opzo.energy`: each spike
times the synapses it drives in the next op, exact at the borders and through the pooling);
this script reads the last epoch's. It writes ``benchmarks/results/synops.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from runner import add_output_options, check_fresh, run_all, train_into

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = {
    "bp": ["--method", "bp"], "bp-ll": ["--method", "bp", "--local-learning"],
    "dfa": ["--method", "dfa"], "dfa-ll": ["--method", "dfa", "--local-learning"],
    "opzo": ["--method", "opzo"], "opzo-ll": ["--method", "opzo", "--local-learning"],
}
COMMON = ["--dataset", "fashion-mnist", "--net", "conv5", "--width", "0.25", "--T", "6",
          "--batch-size", "128", "--dropout", "0.1", "--init-scale", "2.74", "--lr", "2e-4",
          "--weight-decay", "2e-4", "--threads", "1", "--seed", "0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "fashion-mnist"))
    ap.add_argument("--limit-train", type=int, default=6000)
    ap.add_argument("--limit-test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--summarize", action="store_true")
    ap.add_argument("--table", default=str(ROOT / "benchmarks" / "results" / "synops.csv"))
    add_output_options(ap, "synops")
    args = ap.parse_args()
    outs = {name: args.out_root / f"conv5-{name}" for name in EXPERIMENTS}
    if not args.summarize:
        check_fresh(outs.values(), args)
        extra = ["--data-root", args.data_root, "--limit-train", str(args.limit_train),
                 "--limit-test", str(args.limit_test), "--epochs", str(args.epochs)]
        run_all(lambda n: train_into(outs[n], [*COMMON, *EXPERIMENTS[n], *extra], ROOT,
                                     args.resume, args.overwrite),
                list(EXPERIMENTS), args.jobs)
    rows = []
    for name, out in outs.items():
        path = out / "metrics.jsonl"
        if not path.is_file() or not path.read_text().strip():
            continue
        last = json.loads(path.read_text().splitlines()[-1])
        neurons = json.loads((out / "summary.json").read_text()) if (
            out / "summary.json").is_file() else {}
        rates = last["firing_rate"]
        rows.append({"run": f"conv5-{name}", "method": name, "epoch": last["epoch"],
                     "test_acc": last["test_acc"],
                     "firing_rate": " ".join(f"{r:.4f}" for r in rates),
                     "synops": " ".join(f"{s:.0f}" for s in last["synops"]),
                     "synops_total": round(last["synops_total"]),
                     "finished": bool(neurons)})
    if not rows:
        print("no finished run yet")
        return
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    with open(args.table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("| run | epoch | test acc | firing rate per layer | SynOps per layer | SynOps total |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['epoch']} | {r['test_acc']:.2f} | {r['firing_rate']} | "
              f"{r['synops']} | {r['synops_total'] / 1e6:.2f} M |")
    lowest = min(rows, key=lambda r: r["synops_total"])
    print(f"lowest SynOps: {lowest['run']}")


if __name__ == "__main__":
    main()
