"""The chip in the loop (issue 24, part 3): fine-tuning on a chip that is not the learner's
model, with OPZO, DFA and ZO in the loop against BP computed on opzo's nominal model.

For every seed, a fully connected SNN (784-200-10 by default, T = 6, LIF with reset to zero so
that it exports to NIR) is pretrained in float32 with spatial BP on MNIST. The trained network
is then put on a chip that differs from the model in ONE way at a time (``opzo.chip``):

* ``w8``, ``w6``, ``w4`` (the issue's) and ``w2``: its weights are stored on an 8-, 6-, 4- or
  2-bit grid per layer (``--weight-bits``; updates land on the grid by ``--update-rounding
  stochastic``);
* ``th0.05``, ``th0.1``, ``th0.2`` (the issue's) and ``th0.5``: per-neuron threshold mismatch
  V_th,i = V_th (1 + σ ε_i) (``--hw-threshold-noise σ``, the chip of ``--hw-seed 0``);
* ``sim-cuba``: the network exported to NIR and run by snnTorch with a current-based neuron
  (``--chip nir:FILE --chip-sim snntorch --chip-variant cuba``): the chip's dynamics are not
  the model's; ``sim-subtract``: snnTorch's own subtractive reset instead of the model's reset
  to zero.

On each chip the pretrained network is fine-tuned for ``--epochs`` epochs from its weights
(a fresh AdamW) with

* ``opzo``, ``dfa``, ``zo``: in the loop: every forward pass is the chip's, the rules read the
  chip's spikes and membrane potentials (ψ with the model's nominal threshold) and their update
  lands on the chip (``--chip-grad-from chip``);
* ``bp-model``: spatial BP (OTTT's online gradient) computed on opzo's nominal model (float
  LIF, no mismatch, the chip's current weights) and applied to the chip
  (``--chip-grad-from model``): a gradient from a model, as a host would compute it;
* ``bp-loop``: the same spatial BP but reading the chip's forward (its spikes and potentials,
  W^T of the chip's weights) — a reference point between the two.

Reported per case, rule and seed: the chip's test accuracy before (the pretrained weights put
on the chip, nearest rounding) and after fine-tuning. Written to
``benchmarks/results/chip_study.csv`` (one row per run) and ``chip_study.json`` (means), the
figure ``benchmarks/results/chip_study.png`` (accuracy after fine-tuning against the amount of
mismatch, per rule), and the table printed.

Run (one ``opzo train`` per process, ``--parallel`` at a time; one thread each)::

    .venv/bin/python benchmarks/run_chip_study.py                  # 3 seeds, all cases
    .venv/bin/python benchmarks/run_chip_study.py --table          # table and figure only
    .venv/bin/python benchmarks/run_chip_study.py --resume         # continue

Run folders go under ``--out-root`` (default ``benchmarks/runs/chip``, git-ignored); see
``benchmarks/runner.py`` for ``--resume`` and ``--overwrite``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from runner import add_output_options, check_fresh, train_into  # noqa: E402

RESULTS = BENCH / "results"
DATA = str(ROOT.parent / "shared" / "data" / "mnist")
#: the chips: name -> (amount for the plot, family, opzo flags)
CASES: dict[str, tuple[float, str, list[str]]] = {
    "w8": (8, "weight bits", ["--weight-bits", "8"]),
    "w6": (6, "weight bits", ["--weight-bits", "6"]),
    "w4": (4, "weight bits", ["--weight-bits", "4"]),
    "w2": (2, "weight bits", ["--weight-bits", "2"]),
    "th0.05": (0.05, "threshold mismatch", ["--hw-threshold-noise", "0.05"]),
    "th0.1": (0.1, "threshold mismatch", ["--hw-threshold-noise", "0.1"]),
    "th0.2": (0.2, "threshold mismatch", ["--hw-threshold-noise", "0.2"]),
    "th0.5": (0.5, "threshold mismatch", ["--hw-threshold-noise", "0.5"]),
    "sim-cuba": (1, "foreign simulator", ["--chip", "nir:{nir}", "--chip-sim", "snntorch",
                                          "--chip-variant", "cuba"]),
    "sim-subtract": (1, "foreign simulator", ["--chip", "nir:{nir}", "--chip-sim", "snntorch",
                                              "--chip-variant", "reset-subtract"]),
}
#: rule -> (opzo method, where its gradient comes from)
RULES = {"opzo": ("opzo", "chip"), "dfa": ("dfa", "chip"), "zo": ("zo", "chip"),
         "bp-model": ("bp", "model"), "bp-loop": ("bp", "chip")}
#: fine-tuning learning rates (AdamW): those of the hardware-noise study (RESULTS section 19)
LRS = {"opzo": 5e-5, "dfa": 1e-5, "zo": 5e-6, "bp-model": 5e-5, "bp-loop": 5e-5}


def rel(p: Path) -> str:
    return os.path.relpath(p, ROOT)


def opzo(*args: str) -> str:
    """``python -m opzo.cli ARGS``; its stdout (a failure stops the study with its output)."""
    r = subprocess.run([sys.executable, "-m", "opzo.cli", *args], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"opzo {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


def chip_flags(case: str, nir: Path) -> list[str]:
    return [f.format(nir=nir) for f in CASES[case][2]]


def chip_accuracy(run: Path, case: str, nir: Path, cache: dict) -> float:
    """The test accuracy of ``run``'s final weights on chip ``case`` (``opzo eval``): the
    pretrained network's, before fine-tuning."""
    key = f"{run.name}|{case}"
    mtime = (run / "checkpoint.pt").stat().st_mtime
    hit = cache.get(key)
    if hit is not None and hit["mtime"] == mtime:
        return hit["acc"]
    out = json.loads(opzo("eval", str(run), *chip_flags(case, nir)))
    acc = float(out["chip"]["acc"])  # every case gives chip options
    cache[key] = {"acc": acc, "mtime": mtime}
    return acc


def common(a: argparse.Namespace, seed: int) -> list[str]:
    return ["--dataset", "mnist", "--data-root", a.data_root, "--hidden",
            *map(str, a.hidden), "--T", "6", "--reset", "zero", "--threads", "1",
            "--seed", str(seed), "--dropout", "0"]


def finetune_args(a, pre: Path, nir: Path, case: str, rule: str, seed: int) -> list[str]:
    method, grad_from = RULES[rule]
    args = [*common(a, seed), "--method", method, "--epochs", str(a.epochs),
            "--lr", f"{LRS[rule]:g}", "--init-from", str(pre), "--chip-grad-from", grad_from,
            *chip_flags(case, nir)]
    if "--weight-bits" in args:
        args += ["--update-rounding", "stochastic"]
    if method in ("opzo", "zo"):  # on a chip the perturbation is a current (section 4.4)
        args += ["--noise-position", "before"]
    if a.limit_train:
        args += ["--limit-train", str(a.limit_train)]
    return args


def run_dir(root: Path, seed: int, case: str | None = None, rule: str | None = None) -> Path:
    return root / (f"s{seed}-pretrain" if case is None else f"s{seed}-{case}-{rule}")


def table(summary: dict) -> str:
    rules = summary["rules"]
    lines = [f"MNIST {summary['net']}, T 6, pretrained with BP ({summary['pretrain_epochs']} "
             f"epochs, float accuracy {summary['float']:.2f}%), fine-tuned {summary['epochs']} "
             f"epoch(s) on the chip; mean ± std over seeds {summary['seeds']}",
             "| chip | before | " + " | ".join(rules) + " |",
             "|---|---|" + "---|" * len(rules)]
    for case, row in summary["cases"].items():
        cells = [f"{row[r]['mean']:.2f} ± {row[r]['std']:.2f}" if r in row else "—"
                 for r in rules]
        lines.append(f"| {case} | {row['before']['mean']:.2f} ± {row['before']['std']:.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f in ("weight bits", "threshold mismatch")
                if any(CASES[c][1] == f for c in summary["cases"])]
    fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4),
                             squeeze=False)
    for ax, family in zip(axes[0], families):
        cases = [c for c in summary["cases"] if CASES[c][1] == family]
        xs = [CASES[c][0] for c in cases]
        for r in ["before", *summary["rules"]]:
            ys = [summary["cases"][c][r]["mean"] for c in cases if r in summary["cases"][c]]
            es = [summary["cases"][c][r]["std"] for c in cases if r in summary["cases"][c]]
            if len(ys) == len(xs):
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3,
                            label="before fine-tuning" if r == "before" else r,
                            linestyle="--" if r == "before" else "-")
        ax.axhline(summary["float"], color="grey", lw=0.8, ls=":", label="float model")
        ax.set_xlabel(family + (" (bits; fewer is harder)" if family == "weight bits"
                                else " σ (relative)"))
        if family == "weight bits":
            ax.invert_xaxis()
        ax.set_ylabel("test accuracy on the chip (%)")
        ax.set_title(f"MNIST {summary['net']}: {family}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(rows: list[dict], a: argparse.Namespace, float_accs: list[float]) -> dict:
    cases: dict = {}
    for case in CASES:
        mine = [r for r in rows if r["case"] == case]
        if not mine:
            continue
        row: dict = {}
        befores = sorted({(r["seed"], r["before"]) for r in mine})
        vals = [b for _, b in befores]
        row["before"] = {"mean": statistics.fmean(vals),
                         "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
        for rule in a.rules:
            vals = [r["after"] for r in mine if r["rule"] == rule]
            if vals:
                row[rule] = {"mean": statistics.fmean(vals),
                             "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                             "n": len(vals)}
        cases[case] = row
    return {"net": "784-" + "-".join(map(str, a.hidden)) + "-10", "seeds": a.seeds,
            "pretrain_epochs": a.pretrain_epochs, "epochs": a.epochs,
            "limit_train": a.limit_train, "lr": {r: LRS[r] for r in a.rules},
            "float": statistics.fmean(float_accs), "rules": a.rules, "cases": cases}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=DATA, help="MNIST's folder (default "
                    "../shared/data/mnist beside the repository)")
    ap.add_argument("--hidden", type=int, nargs="+", default=[200])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs")
    ap.add_argument("--limit-train", type=int, default=20000,
                    help="fine-tune on the first N training samples (0: all)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    ap.add_argument("--parallel", type=int, default=2, help="trainings at a time")
    ap.add_argument("--table", action="store_true",
                    help="print the table of benchmarks/results/chip_study.json, draw the "
                    "figure, and stop")
    add_output_options(ap, "chip")
    a = ap.parse_args(argv)
    if a.table:
        summary = json.loads((RESULTS / "chip_study.json").read_text())
        plot(summary, RESULTS / "chip_study.png")
        print(table(summary))
        return 0
    root: Path = a.out_root
    outs = [run_dir(root, s) for s in a.seeds]
    outs += [run_dir(root, s, c, r) for s in a.seeds for c in a.cases for r in a.rules]
    check_fresh(outs, a)
    root.mkdir(parents=True, exist_ok=True)
    cache_path = root / "evals.json"
    cache = {} if a.overwrite or not cache_path.exists() else json.loads(cache_path.read_text())
    t0 = time.time()

    def pretrain(seed: int) -> str:
        pre = run_dir(root, seed)
        status = train_into(pre, [*common(a, seed), "--method", "bp", "--epochs",
                                  str(a.pretrain_epochs)], ROOT, a.resume, a.overwrite)
        if not (pre / "summary.json").exists():
            raise SystemExit(f"{pre} did not finish: see {pre}/log.txt")
        nir = root / f"s{seed}-pretrain.nir"
        opzo("export", str(pre), "--out", str(nir))
        return status

    with ThreadPoolExecutor(a.parallel) as pool:
        for line in pool.map(pretrain, a.seeds):
            print(f"pretrain {line} ({time.time() - t0:.0f}s)", flush=True)
    float_accs = [json.loads(opzo("eval", str(run_dir(root, s))))["acc"] for s in a.seeds]

    jobs = [(s, c, r) for s in a.seeds for c in a.cases for r in a.rules]

    def finetune(job: tuple[int, str, str]) -> str:
        seed, case, rule = job
        out = run_dir(root, seed, case, rule)
        nir = root / f"s{seed}-pretrain.nir"
        status = train_into(out, finetune_args(a, run_dir(root, seed), nir, case, rule, seed),
                            ROOT, a.resume, a.overwrite)
        return f"{status} ({time.time() - t0:.0f}s)"

    with ThreadPoolExecutor(a.parallel) as pool:
        for line in pool.map(finetune, jobs):
            print(line, flush=True)

    rows = []
    for seed, case, rule in jobs:
        out = run_dir(root, seed, case, rule)
        if not (out / "summary.json").exists():
            print(f"  {out.name} did not finish: see {out}/log.txt", flush=True)
            continue
        nir = root / f"s{seed}-pretrain.nir"
        before = chip_accuracy(run_dir(root, seed), case, nir, cache)
        # the fine-tuning's own last evaluation is on its chip (opzo.train.evaluate)
        after = float(json.loads((out / "summary.json").read_text())["final_test_acc"])
        rows.append({"seed": seed, "case": case, "family": CASES[case][1], "rule": rule,
                     "before": before, "after": after, "run": rel(out)})
        cache_path.write_text(json.dumps(cache, indent=1))
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "chip_study.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["seed", "case", "family", "rule", "before", "after"],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    summary = summarize(rows, a, float_accs)
    (RESULTS / "chip_study.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, RESULTS / "chip_study.png")
    print(table(summary))
    print(f"done in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
