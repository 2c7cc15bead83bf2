"""Gradient alignment with spatial BP and gradient variance (OPZO paper Figs. 2 and 4).

    python benchmarks/run_alignment.py                       # embedded MNIST, 3 epochs
    python benchmarks/run_alignment.py --dataset mnist --data-root ../shared/data/mnist \
        --epochs 2 --diag-every 40

Trains BP, OPZO, DFA and ZO on the Table 1 network with ``--diagnostics``: every
``--diag-every`` batches the per-layer cosine similarity of the rule's gradient with spatial BP's
on the same batch, weights and dropout masks, and per epoch the per-layer variance of the batch
gradients (var = Σ‖g_i − ḡ‖²/n, appendix C.3.2). As in the paper's variance analysis, OPZO and
ZO keep the 1/α factor and α is fixed at 0.2. Writes run folders
``<out-root>/align-<dataset>-e<epochs>-<method>`` (``--out-root`` defaults to
``benchmarks/runs/alignment``) and a figure and a JSON summary under benchmarks/logs/. A folder
that already holds a run stops the script unless ``--resume`` (continue interrupted runs, reuse
finished ones) or ``--overwrite`` (start again) is given (``benchmarks/runner.py``);
``python benchmarks/collect_results.py`` then writes ``benchmarks/results/alignment-*.csv``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from runner import add_output_options, check_fresh, holds_run  # noqa: E402

from opzo.build import make_source  # noqa: E402
from opzo.config import TrainConfig  # noqa: E402
from opzo.plots import plot_runs  # noqa: E402
from opzo.train import run_training  # noqa: E402

METHODS = ["bp", "opzo", "dfa", "zo"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="embedded-mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--diag-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    add_output_options(ap, "alignment")
    args = ap.parse_args()
    outs = {m: args.out_root / f"align-{args.dataset}-e{args.epochs}-{m}" for m in args.methods}
    check_fresh(outs.values(), args)
    runs = []
    summary: dict[str, dict] = {}
    for method in args.methods:
        out = outs[method]
        cfg = TrainConfig.from_dict(dict(
            dataset=args.dataset, data_root=args.data_root, method=method, epochs=args.epochs,
            diagnostics=True, diag_every=args.diag_every, threads=args.threads,
            alpha=0.2, alpha_factor=True, dropout=0.0 if method == "zo" else 0.2,
            lr=2e-5 if method == "zo" else 2e-4, out=str(out)))
        if not (args.resume and (out / "summary.json").exists()):
            resume = args.resume and (out / "checkpoint.pt").exists()
            run_training(cfg, out, resume=resume, progress=False,
                         overwrite=args.overwrite or (args.resume and not resume
                                                      and holds_run(out)))
        runs.append(out)
        rows = [json.loads(x) for x in (out / "diagnostics.jsonl").read_text().splitlines()]
        cos = [r["cosine"] for r in rows if "cosine" in r]
        var = [r["variance"] for r in rows if "variance" in r]
        rel = [r["relative_variance"] for r in rows if "relative_variance" in r]
        last_epoch = [r["cosine"] for r in rows if "cosine" in r and r["epoch"] == args.epochs]
        entry_extra = {}
        if method == "opzo":
            # M starts at zero: E[M_k] = (1 − λ_M^k) J after k updates (one per step), so the
            # gradient is scaled by that factor and its variance by its square (the same start-up
            # bias Adam corrects in its moments). Undo it to compare the variance with BP's.
            batches = -(-len(make_source(cfg, "train")) // cfg.batch_size)
            k = args.epochs * batches * cfg.T
            c = 1.0 - cfg.lambda_m ** k
            entry_extra = {"momentum_updates": k, "momentum_scale": round(c, 5),
                           # the readout's gradient e xᵀ does not go through M
                           "variance_bias_corrected": {n: v / c**2 for n, v in var[-1].items()
                                                       if n.startswith("hidden")}}
        summary[method] = {
            "test_acc": json.loads((out / "summary.json").read_text())["final_test_acc"],
            "cosine_mean_last_epoch": {k: round(statistics.mean(c[k] for c in last_epoch), 4)
                                       for k in cos[0]},
            "cosine_range_all": {k: [round(min(c[k] for c in cos), 4),
                                     round(max(c[k] for c in cos), 4)] for k in cos[0]},
            "variance_last_epoch": var[-1],
            "relative_variance_last_epoch": rel[-1],
            **entry_extra,
        }
    logs = ROOT / "benchmarks" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tag = f"{args.dataset}-e{args.epochs}"
    plot_runs(runs, logs / f"alignment-{tag}.png")
    (logs / f"alignment-{tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
