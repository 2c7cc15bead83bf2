"""The OTPE paper's Randman comparison (section 4.1, Figs. 2-4): temporal credit traces vs BPTT.

    python benchmarks/run_randman.py                    # both codes, all traces, 2 jobs at once
    python benchmarks/run_randman.py --summarize        # the table of finished runs

Each (code, method) trains ``configs/otpe-randman.toml`` (2 hidden layers of 128, T=50) in its
own process with one torch thread, with ``--diagnostics --diag-reference bptt``: every
``--diag-every`` batches the per-layer cosine similarity of the method's gradient with the exact
BPTT gradient on the same batch and weights. Methods: spatial BP with the OTTT, OSTL, OTPE and
approximate-OTPE traces, BPTT itself, and two combinations no paper reports: OPZO with the
approximate-OTPE trace, and OPZO with LocalZO local derivatives. Runs go to
``<out-root>/randman-<code>-<method>`` (``--out-root`` defaults to ``benchmarks/runs/randman``);
a folder that already holds a run stops the script unless ``--resume`` (continue interrupted
runs, skip finished ones) or ``--overwrite`` (start again) is given (``benchmarks/runner.py``);
``python benchmarks/collect_results.py`` then writes ``benchmarks/results/randman-*.csv``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from runner import add_output_options, check_fresh, run_all, train_into

ROOT = Path(__file__).resolve().parents[1]
METHODS: dict[str, list[str]] = {
    "ottt": ["--trace", "ottt"],
    "ostl": ["--trace", "ostl"],
    "otpe": ["--trace", "otpe"],
    "approx_otpe": ["--trace", "approx_otpe"],
    "bptt": ["--method", "bptt"],
    "opzo+approx_otpe": ["--method", "opzo", "--trace", "approx_otpe", "--alpha", "0.2"],
    "opzo+localzo": ["--method", "opzo", "--surrogate", "localzo", "--localzo-delta", "0.5",
                     "--alpha", "0.2"],
}
CODES = ["time", "rate"]


def run_dir(root: Path, code: str, method: str) -> Path:
    return root / f"randman-{code}-{method}"


def run_one(code: str, method: str, args: argparse.Namespace) -> str:
    return train_into(run_dir(args.out_root, code, method),
                      ["--config", str(ROOT / "configs" / "otpe-randman.toml"),
                       "--dataset", f"randman-{code}", *METHODS[method],
                       "--epochs", str(args.epochs), "--seed", str(args.seed), "--threads", "1",
                       "--diagnostics", "--diag-reference", "bptt", "--diag-every",
                       str(args.diag_every)], ROOT, args.resume, args.overwrite)


def summarize(root: Path) -> None:
    print("| code | method | final test acc | best test acc | cosine with BPTT, last epoch "
          "(hidden.0 / hidden.1 / readout) | s/epoch |")
    print("|---|---|---|---|---|---|")
    for code in CODES:
        for method in METHODS:
            out = run_dir(root, code, method)
            if not (out / "summary.json").exists():
                continue
            s = json.loads((out / "summary.json").read_text())
            rows = [json.loads(x) for x in (out / "diagnostics.jsonl").read_text().splitlines()]
            last = max(r["epoch"] for r in rows if "cosine" in r)
            cos = [r["cosine"] for r in rows if "cosine" in r and r["epoch"] == last]
            names = list(cos[0])
            mean = " / ".join(f"{statistics.mean(c[n] for c in cos):.3f}" for n in names)
            metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            sec = statistics.median(m["epoch_time_s"] for m in metrics)
            print(f"| {code} | {method} | {s['final_test_acc']:.2f} | {s['best_test_acc']:.2f} |"
                  f" {mean} | {sec:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codes", nargs="+", default=CODES, choices=CODES)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--diag-every", type=int, default=21)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--summarize", action="store_true")
    add_output_options(ap, "randman")
    args = ap.parse_args()
    if not args.summarize:
        jobs = [(c, m) for c in args.codes for m in args.methods]
        check_fresh([run_dir(args.out_root, c, m) for c, m in jobs], args)
        run_all(lambda job: run_one(*job, args), jobs, args.jobs)
    summarize(args.out_root)


if __name__ == "__main__":
    main()
