"""Fine-tuning a trained SNN under hardware noise: the shape of the OPZO paper's Table 4
(issue 13, part 3; benchmarks/RESULTS.md, "Fine-tuning under hardware noise").

A fully connected SNN (784-400-400-10 by default, T = 6, subtractive reset) is trained with
spatial BP on full MNIST (5 epochs), then put on a noisy chip (``opzo.hardware``): fresh
Gaussian noise on every hidden synaptic current at every step (``gaussian``, the paper's
setting), or one fixed per-neuron offset per chip (``fixed``, device mismatch; the chip of
training is ``--hw-seed 0``). For each noise kind two scales are chosen from a grid: the
smallest at which the pretrained net's accuracy under the noise drops by at least 4 and 11
points (the drops of the paper's Table 4 at n.s. 0.1 and 0.15; ``--targets``). For each scale:

* ``test``: the pretrained net's accuracy under the noise (mean ± std over draws: gaussian,
  ``--repeats`` noise draws; fixed, the training chip and ``--repeats`` other chips);
* fine-tuning under that noise from the pretrained weights (``opzo train --init-from``, a fresh
  optimizer): BP 1 epoch, DFA, ZO and OPZO ``--epochs`` epochs, AdamW with a cosine schedule
  (``--lr-bp``, ``--lr-dfa``, ``--lr-zo``, ``--lr-opzo``); for OPZO and ZO under gaussian
  noise the chip's noise is their perturbation (α = scale, before the neuron, no antithetic
  pairs, no 1/α);
* each fine-tuned net's accuracy under the same noise, evaluated as ``test`` (and, for fixed
  noise, on the training chip and on other chips: does it carry over to another chip?).

Run (one ``opzo train`` at a time, one thread each; ~35 min on a loaded 2-core CPU)::

    .venv/bin/python benchmarks/run_hw_noise.py                           # MNIST (case 1)
    .venv/bin/python benchmarks/run_hw_noise.py --dataset fashion-mnist   # case 2
    .venv/bin/python benchmarks/run_hw_noise.py --table                   # table only
    .venv/bin/python benchmarks/run_hw_noise.py --resume                  # continue MNIST's

Run folders go under ``--out-root`` (default ``benchmarks/runs/hw_noise``, git-ignored), the
evaluations are cached in ``evals-<mnist|fmnist>.json`` there. A folder the script may write
that already holds a run (the pretraining's, or a fine-tuning's at any scale it may choose)
stops it before it starts anything unless ``--resume`` (a finished run, ``summary.json``, is
reused, an interrupted one, ``checkpoint.pt`` without ``summary.json``, continued with ``opzo
train --resume``) or ``--overwrite`` (every run started over, ``opzo train --overwrite``, and
the cached evaluations forgotten) is given (``benchmarks/runner.py``). Writes
``benchmarks/results/hw_noise.json`` (one entry per dataset) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from runner import add_output_options, check_fresh, train_into  # noqa: E402

RESULTS = BENCH / "results" / "hw_noise.json"
#: the data beside the repository (../shared/data/<dataset>)
DATA = {name: str(Path(__file__).resolve().parents[2] / "shared" / "data" / name)
        for name in ("mnist", "fashion-mnist")}
#: the scales searched (in units of the threshold V_th = 1), smallest first
GRID = {"gaussian": [0.2, 0.5, *(round(0.8 + 0.1 * i, 1) for i in range(23))],
        "fixed": [0.1, 0.2, *(round(0.3 + 0.1 * i, 1) for i in range(28))]}
TRAIN_CHIP = 0      # --hw-seed of the chip the fixed-noise runs are fine-tuned on
EVAL_SEED = 1000    # first seed of the evaluation draws (gaussian) / other chips (fixed)
METHODS = ("bp", "dfa", "zo", "opzo")
#: fine-tuning learning rates (AdamW, cosine): each the better of two in a quick check
#: (1 epoch on 15k samples under gaussian noise 1.8; see RESULTS.md)
LRS = {"bp": 5e-5, "dfa": 1e-5, "zo": 5e-6, "opzo": 5e-5}


def rel(p: Path) -> str:
    return os.path.relpath(p, ROOT)


# ---------------------------------------------------------------- evaluation, in process


class Evaluator:
    """Evaluates run folders' final weights on the full test split, clean and under hardware
    noise (:func:`opzo.hardware.evaluate_under_noise`), caching every figure in ``cache``."""

    def __init__(self, cache_path: Path, forget: bool) -> None:
        self.path = cache_path
        self.cache = {} if forget or not cache_path.exists() else json.loads(
            cache_path.read_text())
        self.sources: dict = {}

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.cache, indent=1))
        tmp.replace(self.path)

    def _load(self, run: Path):
        from opzo.build import build_network, make_source
        from opzo.config import TrainConfig
        from opzo.losses import InstantLoss

        state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
        cfg = TrainConfig.from_dict(state["config"])
        cfg.limit_test = None
        cfg.hw_noise = 0.0  # the chip is attached per evaluation below
        key = (cfg.dataset, cfg.data_root)
        if key not in self.sources:
            self.sources[key] = make_source(cfg, "test")
        net = build_network(cfg, self.sources[key].input_shape, self.sources[key].classes)
        net.load_state_dict(state["model"])
        net.eval()
        return net, cfg, self.sources[key], InstantLoss(cfg.loss, cfg.gamma)

    def __call__(self, run: Path, kind: str, scale: float, seed: int, repeats: int) -> dict:
        """``{"acc_mean", "acc_std", "acc"}`` under the noise (scale 0: clean, one pass)."""
        key = f"{run.name}|{kind}|{scale:g}|{seed}|{repeats}"
        mtime = (run / "checkpoint.pt").stat().st_mtime
        hit = self.cache.get(key)
        if hit is not None and hit.get("mtime") == mtime:
            return hit
        from opzo.hardware import evaluate_under_noise
        from opzo.train import evaluate

        net, cfg, source, loss = self._load(run)
        t0 = time.time()
        if scale == 0:
            acc = float(evaluate(net, source, cfg, loss)["acc"])
            out = {"acc_mean": acc, "acc_std": 0.0, "acc": [acc]}
        else:
            r = evaluate_under_noise(lambda n: evaluate(n, source, cfg, loss), net, scale, kind,
                                     repeats, seed)
            out = {k: r[k] for k in ("acc_mean", "acc_std", "acc")}
        out["mtime"] = mtime
        self.cache[key] = out
        self._save()
        print(f"  eval {run.name} {kind} {scale:g} seed {seed} x{repeats}: "
              f"{out['acc_mean']:.2f} ± {out['acc_std']:.2f} ({time.time() - t0:.0f}s)",
              flush=True)
        return out


# ---------------------------------------------------------------- training


def train(out: Path, args: list[str], a: argparse.Namespace) -> None:
    t0 = time.time()
    status = train_into(out, args, ROOT, resume=a.resume, overwrite=a.overwrite)
    print(f"  train {status}", flush=True)
    if not (out / "summary.json").exists():
        raise SystemExit(f"{out} did not finish (see {out}/log.txt); rerun with --resume to "
                         f"continue it ({time.time() - t0:.0f}s)")


def pretrain_dir(root: Path, tag: str) -> Path:
    return root / f"{tag}-pretrain-bp"


def finetune_dir(root: Path, tag: str, kind: str, scale: float, method: str) -> Path:
    return root / f"{tag}-{kind}{scale:g}-{method}"


def run_dirs(a: argparse.Namespace, root: Path, tag: str) -> list[Path]:
    """Every run folder this invocation may write: the pretraining's and (unless
    ``--search-only``) the fine-tuning runs' at each scale it may choose (the given scales,
    else the whole grid)."""
    outs = [pretrain_dir(root, tag)]
    if not a.search_only:
        for kind in ("gaussian", "fixed"):
            for scale in getattr(a, f"scales_{kind}") or GRID[kind]:
                outs += [finetune_dir(root, tag, kind, scale, m) for m in a.methods]
    return outs


def common(a: argparse.Namespace) -> list[str]:
    return ["--dataset", a.dataset, "--data-root", a.data_root, "--hidden", *map(str, a.hidden),
            "--T", "6", "--threads", "1", "--seed", str(a.seed)]


def finetune_args(a, pre: Path, kind: str, scale: float, method: str) -> list[str]:
    epochs = 1 if method == "bp" else a.epochs
    lr = getattr(a, f"lr_{method}")
    return [*common(a), "--method", method, "--epochs", str(epochs), "--lr", f"{lr:g}",
            "--init-from", str(pre), "--hw-noise", f"{scale:g}", "--hw-noise-kind", kind,
            "--hw-seed", str(TRAIN_CHIP)]


def noisy(ev: Evaluator, run: Path, kind: str, scale: float, repeats: int) -> dict:
    """Accuracy under the noise: gaussian, ``repeats`` draws; fixed, the training chip
    (``chip``) and ``repeats`` other chips (``other``)."""
    if kind == "gaussian":
        return {"chip": ev(run, kind, scale, EVAL_SEED, repeats)}
    return {"chip": ev(run, kind, scale, TRAIN_CHIP, 1),
            "other": ev(run, kind, scale, EVAL_SEED, repeats)}


def choose_scales(ev: Evaluator, pre: Path, clean: float, targets: list[float],
                  repeats: int) -> dict:
    """For each kind, the smallest grid scale whose drop reaches each target (points)."""
    chosen: dict = {}
    search: dict = {}
    for kind in ("gaussian", "fixed"):
        search[kind] = {}
        picks = []
        for scale in GRID[kind]:
            r = ev(pre, kind, scale, EVAL_SEED + 500, repeats)
            search[kind][f"{scale:g}"] = round(r["acc_mean"], 2)
            drop = clean - r["acc_mean"]
            while len(picks) < len(targets) and drop >= targets[len(picks)]:
                picks.append(scale)  # a scale may serve two targets only if nothing between
            if len(picks) == len(targets):
                break
        chosen[kind] = sorted(set(picks))
    return {"scales": chosen, "search": search}


# ---------------------------------------------------------------- table


def fmt(r: dict | None) -> str:
    if r is None:
        return "—"
    return f"{r['acc_mean']:.2f} ± {r['acc_std']:.2f}" if r["acc_std"] else f"{r['acc_mean']:.2f}"


def _evaluations(entry: dict):
    """(row, chip, label) of every evaluation of the table: the noise draws (gaussian), or
    the training chip and the other chips (fixed)."""
    for row in entry["rows"]:
        for chip in ("chip", "other"):
            if chip in row["test"]:
                yield row, chip, ("draws" if row["kind"] == "gaussian" else
                                  "training chip" if chip == "chip" else "other chips")


def table(entry: dict) -> str:
    lines = [f"{entry['dataset']} {entry['net']} (clean {entry['clean']:.2f}%), fine-tuned "
             f"BP 1 epoch, others {entry['epochs']} epochs, lr "
             + ", ".join(f"{m} {lr:g}" for m, lr in entry["lr"].items()),
             "| kind | n.s. | chip | clean | test | BP | DFA | ZO | OPZO |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row, chip, where in _evaluations(entry):
        cells = [fmt((row["after"].get(m) or {}).get(chip)) for m in METHODS]
        lines.append(f"| {row['kind']} | {row['scale']:g} | {where} | {entry['clean']:.2f} "
                     f"| {fmt(row['test'][chip])} | " + " | ".join(cells) + " |")
    lines += ["", "share of the loss (clean − test) recovered by fine-tuning:",
              "| kind | n.s. | chip | loss (points) | BP | DFA | ZO | OPZO |",
              "|---|---|---|---|---|---|---|---|"]
    for row, chip, where in _evaluations(entry):
        test = row["test"][chip]["acc_mean"]
        loss = entry["clean"] - test
        cells = [f"{100 * (r[chip]['acc_mean'] - test) / loss:+.0f}%"
                 if (r := row["after"].get(m)) else "—" for m in METHODS]
        lines.append(f"| {row['kind']} | {row['scale']:g} | {where} | {loss:.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist", choices=sorted(DATA))
    ap.add_argument("--data-root", default=None,
                    help="default ../shared/data/<dataset> beside the repository")
    ap.add_argument("--hidden", type=int, nargs="+", default=[400, 400])
    ap.add_argument("--pretrain-epochs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of DFA, ZO, OPZO")
    for method, lr in LRS.items():
        ap.add_argument(f"--lr-{method}", type=float, default=lr,
                        help=f"fine-tuning lr of {method} (default %(default)g)")
    ap.add_argument("--targets", type=float, nargs="+", default=[4.0, 11.0],
                    help="accuracy drops (points) that choose the noise scales")
    ap.add_argument("--scales-gaussian", type=float, nargs="+", default=None,
                    help="skip the search: these gaussian scales")
    ap.add_argument("--scales-fixed", type=float, nargs="+", default=None,
                    help="skip the search: these fixed scales")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--repeats", type=int, default=3, help="noise draws / other chips")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search-only", action="store_true",
                    help="stop after pretraining and choosing the noise scales")
    ap.add_argument("--table", action="store_true",
                    help="print the table of benchmarks/results/hw_noise.json and stop")
    add_output_options(ap, "hw_noise")
    a = ap.parse_args(argv)
    if a.table:
        for entry in json.loads(RESULTS.read_text()).values():
            print(table(entry) + "\n")
        return 0
    torch.set_num_threads(1)
    a.data_root = a.data_root or DATA[a.dataset]
    tag = "mnist" if a.dataset == "mnist" else "fmnist"
    if a.hidden != [400, 400]:
        tag += "-h" + "x".join(map(str, a.hidden))
    root = a.out_root
    check_fresh(run_dirs(a, root, tag), a)
    root.mkdir(parents=True, exist_ok=True)
    ev = Evaluator(root / f"evals-{tag}.json", a.overwrite)
    t_start = time.time()

    pre = pretrain_dir(root, tag)
    print(f"pretraining {pre.name}", flush=True)
    train(pre, [*common(a), "--method", "bp", "--epochs", str(a.pretrain_epochs)], a)
    clean = ev(pre, "gaussian", 0, 0, 1)["acc_mean"]

    if a.scales_gaussian and a.scales_fixed:
        pick = {"scales": {"gaussian": a.scales_gaussian, "fixed": a.scales_fixed},
                "search": None}
    else:
        pick = choose_scales(ev, pre, clean, a.targets, 4)
        if a.scales_gaussian:
            pick["scales"]["gaussian"] = a.scales_gaussian
        if a.scales_fixed:
            pick["scales"]["fixed"] = a.scales_fixed
    print(f"noise scales: {pick['scales']}", flush=True)
    if a.search_only:
        print(json.dumps(pick, indent=1))
        return 0

    entry = {"dataset": a.dataset, "net": "784-" + "-".join(map(str, a.hidden)) + "-10",
             "T": 6, "pretrain": {"method": "bp", "epochs": a.pretrain_epochs,
                                  "run": rel(pre)},
             "clean": clean, "epochs": a.epochs,
             "lr": {m: getattr(a, f"lr_{m}") for m in METHODS},
             "repeats": a.repeats, "train_chip": TRAIN_CHIP, "eval_seed": EVAL_SEED,
             "targets": a.targets, "search": pick["search"], "rows": []}
    for kind in ("gaussian", "fixed"):
        for scale in pick["scales"][kind]:
            row = {"kind": kind, "scale": scale,
                   "test": noisy(ev, pre, kind, scale, a.repeats), "after": {}, "clean": {},
                   "runs": {}, "curve": {}}
            entry["rows"].append(row)
            for method in a.methods:
                out = finetune_dir(root, tag, kind, scale, method)
                print(f"fine-tuning {out.name}", flush=True)
                try:
                    train(out, finetune_args(a, pre, kind, scale, method), a)
                except SystemExit as exc:
                    print(f"  {exc}", flush=True)
                    continue
                row["runs"][method] = rel(out)
                row["after"][method] = noisy(ev, out, kind, scale, a.repeats)
                row["clean"][method] = ev(out, kind, 0, 0, 1)["acc_mean"]
                lines = (out / "metrics.jsonl").read_text().splitlines()
                metrics = [json.loads(x) for x in lines if x.strip()]
                row["curve"][method] = [m.get("test_acc") for m in metrics]
            _write(a.dataset, entry)
    print(f"done in {time.time() - t_start:.0f}s\n", flush=True)
    print(table(entry))
    return 0


def _write(dataset: str, entry: dict) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    key = dataset + ("" if entry["net"] == "784-400-400-10" else " " + entry["net"])
    results[key] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
