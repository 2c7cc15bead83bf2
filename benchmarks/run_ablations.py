"""OPZO's ablations (OPZO paper Tables 8-11) and noise variants (Table 2) on Fashion-MNIST.

    python benchmarks/run_ablations.py                  # every setting, one after the other
    python benchmarks/run_ablations.py --only lambda-0 noise-sphere-before
    python benchmarks/run_ablations.py --summarize      # only the tables (every seed found)
    python benchmarks/run_ablations.py --resume         # continue: finished settings skipped
    python benchmarks/run_ablations.py --overwrite      # start every setting again
    python benchmarks/run_ablations.py --seeds 0 1 2    # three seeds (RESULTS.md's tables)

The paper ablates OPZO on CIFAR-100 (5-layer conv net, 300 epochs; Tables 8-11) and CIFAR-10
(Table 2). This runs the same ablations on a CPU-sized task: the FC net 784-400-400-10 (the
paper's MNIST net 784-800-800-10 at half width, to fit about 20 runs into an hour of a loaded
2-core CPU; otherwise ``configs/table1-opzo.toml``: T=6, batch 128, AdamW 2e-4, wd 2e-4, cosine
schedule over the run, dropout 0.2, mixed loss, λ_M = 0.99999, α 0.2 → 0.01 linearly over the
epochs, Gaussian noise after the neuron, no 1/α factor) on the first 20000 Fashion-MNIST
training images (``--limit-train``), the full test set (10000), 3 epochs, seed 0 (``--seeds``:
more); each setting changes one thing:

- Table 8: λ_M ∈ {0, 0.9, 0.99, 0.999, 0.9999, 0.99999};
- Table 9: M frozen after the first of the 3 epochs (``--freeze-m-after 1``) vs never;
- Table 10: α 0.2 → 0.01 (the default) vs fixed 0.2 vs fixed 0.2 with the 1/α factor;
- Table 11: α ∈ {1, 0.2, 0.02, 0.002}, fixed;
- Table 2: noise Gaussian / Rademacher / unit sphere, after / before the neuron, each with and
  without antithetic pairs (z, −z on alternate steps): the full 3 x 2 x 2 grid (the paper
  reports the 3 x 2 without antithetic pairs).

A setting that appears in several tables (the defaults; fixed α = 0.2) is run once. Each run is
``python -m opzo train --quiet --threads 1`` in its own process, one after the other (all
settings of a seed, then the next seed), into ``<out-root>/<setting>`` (``<setting>-seed<k>``
for seed k > 0; ``--out-root`` defaults to ``benchmarks/runs/ablations``, not committed), its
output in ``<out-root>/<setting>/log.txt``. A folder that already holds a run stops the script
before it starts anything unless ``--resume`` (skip finished settings, continue interrupted
ones with ``opzo train --resume``, start the others) or ``--overwrite`` (start every setting
again) is given (``benchmarks/runner.py``). At the end (and with ``--summarize``) it writes
``benchmarks/results/ablations.csv`` (one row per setting and seed, relative paths only) and
prints one Markdown table per ablation beside the paper's figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from runner import add_output_options, check_fresh, train_into  # noqa: E402

DEFAULT_CSV = Path("benchmarks") / "results" / "ablations.csv"

#: the settings: folder name -> the options that differ from the defaults (Table 1's OPZO)
SETTINGS: dict[str, list[str]] = {
    "default": [],
    **{f"lambda-{lam}": ["--lambda-m", lam] for lam in ("0", "0.9", "0.99", "0.999", "0.9999")},
    "freeze-m-after-1": ["--freeze-m-after", "1"],
    **{f"alpha-{a}-fixed": ["--alpha", a, "--alpha-final", a] for a in ("0.2", "1", "0.02",
                                                                        "0.002")},
    "alpha-0.2-fixed-factor": ["--alpha", "0.2", "--alpha-final", "0.2", "--alpha-factor"],
    **{f"noise-{dist}-{pos}{'-anti' if anti else ''}":
       ["--noise", dist, "--noise-position", pos, *(["--antithetic"] if anti else [])]
       for anti in (False, True) for dist in ("gaussian", "rademacher", "sphere")
       for pos in ("after", "before") if (dist, pos, anti) != ("gaussian", "after", False)},
}


@dataclass(frozen=True)
class Row:
    """One line of an ablation table: the setting's label, its run, the paper's figure."""

    label: str
    run: str
    paper: str


_NOISE_PAPER = {("gaussian", "after"): "85.73 ± 0.15", ("gaussian", "before"): "84.37 ± 0.13",
                ("sphere", "after"): "86.01 ± 0.28", ("sphere", "before"): "84.50 ± 0.13",
                ("rademacher", "after"): "85.69 ± 0.17", ("rademacher", "before"): "84.03 ± 0.23"}


def _noise_run(dist: str, pos: str, anti: bool) -> str:
    if (dist, pos, anti) == ("gaussian", "after", False):
        return "default"
    return f"noise-{dist}-{pos}{'-anti' if anti else ''}"


#: group -> (title, rows); the paper's figures: Tables 8-11 CIFAR-100, Table 2 CIFAR-10
GROUPS: dict[str, tuple[str, list[Row]]] = {
    "lambda_M": ("Table 8: momentum λ_M of M (paper: CIFAR-100)", [
        Row("λ_M = 0 (no momentum)", "lambda-0", "16.08 ± 0.37"),
        Row("λ_M = 0.9", "lambda-0.9", "39.05 ± 0.69"),
        Row("λ_M = 0.99", "lambda-0.99", "50.65 ± 0.05"),
        Row("λ_M = 0.999", "lambda-0.999", "58.25 ± 0.33"),
        Row("λ_M = 0.9999", "lambda-0.9999", "60.92 ± 0.11"),
        Row("λ_M = 0.99999 (default)", "default", "60.93 ± 0.16")]),
    "freeze_M": ("Table 9: M updated throughout vs frozen after 1/3 of training "
                 "(paper: after 10 of 300 epochs, CIFAR-100)", [
        Row("M frozen after epoch 1 of 3", "freeze-m-after-1", "57.17"),
        Row("M updated throughout (default)", "default", "60.93 ± 0.16")]),
    "alpha_schedule": ("Table 10: α schedule and the 1/α factor (paper: CIFAR-100)", [
        Row("α 0.2 → 0.01 (default)", "default", "60.93 ± 0.16"),
        Row("α 0.2 fixed", "alpha-0.2-fixed", "61.85 ± 0.09"),
        Row("α 0.2 fixed, with 1/α factor", "alpha-0.2-fixed-factor", "61.65 ± 0.40")]),
    "alpha_value": ("Table 11: α fixed, no schedule (paper: CIFAR-100)", [
        Row("α = 1", "alpha-1-fixed", "58.34"),
        Row("α = 0.2", "alpha-0.2-fixed", "61.85 ± 0.09"),
        Row("α = 0.02", "alpha-0.02-fixed", "58.33"),
        Row("α = 0.002", "alpha-0.002-fixed", "49.97")]),
    "noise": ("Table 2: noise distribution and position, ± antithetic pairs "
              "(paper: CIFAR-10, no antithetic pairs)", [
        Row(f"{dist} {pos}{', antithetic' if anti else ''}", _noise_run(dist, pos, anti),
            "—" if anti else _NOISE_PAPER[dist, pos])
        for anti in (False, True) for dist in ("gaussian", "rademacher", "sphere")
        for pos in ("after", "before")]),
}


def run_name(setting: str, seed: int) -> str:
    """The run folder's name: the setting's, with ``-seed<k>`` for seeds other than 0."""
    return setting if seed == 0 else f"{setting}-seed{seed}"


def common_args(args: argparse.Namespace, seed: int) -> list[str]:
    """The options every setting shares (the paper's OPZO defaults, CPU-sized)."""
    return ["--config", "configs/table1-opzo.toml", "--dataset", "fashion-mnist",
            "--data-root", args.data_root, "--hidden", *map(str, args.hidden),
            "--epochs", str(args.epochs), "--limit-train", str(args.limit_train),
            "--seed", str(seed), "--threads", str(args.threads)]


def run_setting(name: str, seed: int, out: Path, args: argparse.Namespace) -> str:
    """Train one setting and seed into ``out`` (with ``--resume``: skip it if finished,
    continue it if interrupted; with ``--overwrite``: replace its run); a one-line status."""
    return train_into(out, [*common_args(args, seed), *SETTINGS[name]], ROOT, args.resume,
                      args.overwrite)


@dataclass(frozen=True)
class RunResult:
    """What the tables show of one run folder."""

    final: float
    best: float
    epochs: int
    done: bool
    wall_s: float


def read_run(out: Path) -> RunResult | None:
    """Final/best test accuracy, epochs done and wall time of a run folder (None if none)."""
    out = ROOT / out
    metrics = out / "metrics.jsonl"
    if not metrics.exists():
        return None
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    if not lines:
        return None
    accs = [float(x["test_acc"]) for x in lines]
    done = (out / "summary.json").exists()
    if done:
        wall = float(json.loads((out / "summary.json").read_text())["wall_time_s"])
    else:
        wall = sum(float(x.get("epoch_time_s", 0.0)) for x in lines)
    return RunResult(accs[-1], max(accs), len(lines), done, wall)


def _cell(r: RunResult | None, epochs: int) -> str:
    """'final (best)' of one run, marked when unfinished."""
    if r is None:
        return "missing"
    cell = f"{r.final:.2f} ({r.best:.2f})"
    return cell if r.done else f"{cell}, {r.epochs} of {epochs} epochs"


def summarize(root: Path, csv_path: Path, epochs: int, seeds: list[int]) -> None:
    """Write the CSV of every group's rows (one per setting and seed) and print one Markdown
    table per group: each seed's final (best) test accuracy, with several seeds their mean and
    standard deviation."""
    rows_out: list[dict[str, object]] = []
    for group, (title, rows) in GROUPS.items():
        print(f"\n{title}\n")
        heads = [f"seed {s}: final (best)" for s in seeds]
        if len(seeds) > 1:
            heads.append("final: mean ± sd")
        print(f"| setting | {' | '.join(heads)} | paper | wall time (s) |")
        print("|---|" + "---|" * (len(heads) + 2))
        for row in rows:
            runs = [read_run(root / run_name(row.run, s)) for s in seeds]
            cells = [_cell(r, epochs) for r in runs]
            finals = [r.final for r in runs if r is not None and r.done]
            if len(seeds) > 1:
                cells.append(f"{statistics.mean(finals):.2f} ± {statistics.stdev(finals):.2f}"
                             if len(finals) == len(seeds) else "—")
            walls = "/".join(f"{r.wall_s:.0f}" for r in runs if r is not None)
            print(f"| {row.label} | {' | '.join(cells)} | {row.paper} | {walls} |")
            for seed, r in zip(seeds, runs):
                rows_out.append({
                    "group": group, "setting": row.label, "seed": seed,
                    "final_test_acc": f"{r.final:.2f}" if r else "",
                    "best_test_acc": f"{r.best:.2f}" if r else "",
                    "epochs": r.epochs if r else 0,
                    "finished": r.done if r else False,
                    "wall_time_s": f"{r.wall_s:.1f}" if r else "",
                    "paper": row.paper,
                    "run": (root / run_name(row.run, seed)).as_posix()})
    path = ROOT / csv_path
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows_out[0]))
        writer.writeheader()
        writer.writerows(rows_out)
    print(f"\nwrote {csv_path.as_posix()}")


def seeds_found(root: Path) -> list[int]:
    """The seeds with a run folder under ``root`` (0 for ``<setting>``, k for
    ``<setting>-seed<k>``), at least [0]."""
    seeds = {0}
    for folder in (ROOT / root).glob("*-seed*"):
        tail = folder.name.rsplit("-seed", 1)[1]
        if tail.isdigit() and folder.name.rsplit("-seed", 1)[0] in SETTINGS:
            seeds.add(int(tail))
    return sorted(seeds)


def _relative(path: Path) -> Path:
    """``path`` relative to the repository root when it lies inside it (no absolute paths in
    the committed table)."""
    path = Path(path)
    if not path.is_absolute():
        return path
    try:
        return path.resolve().relative_to(ROOT)
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--data-root", default="../shared/data/fashion-mnist",
                   help="Fashion-MNIST idx files (relative to the repository root)")
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="the summary table")
    p.add_argument("--hidden", type=int, nargs="+", default=[400, 400])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit-train", type=int, default=20000)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds to run (folders <setting> for seed 0, <setting>-seed<k> else; "
                        "default 0) and to tabulate (default: every seed found under --out-root)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="+", choices=sorted(SETTINGS), metavar="SETTING",
                   help=f"run only these settings (of: {', '.join(SETTINGS)})")
    p.add_argument("--summarize", action="store_true", help="only write and print the tables")
    add_output_options(p, "ablations")
    args = p.parse_args(argv)
    root, csv_path = _relative(args.out_root), _relative(args.csv)
    if not args.summarize:
        jobs = [(s, name) for s in (args.seeds or [0]) for name in (args.only or list(SETTINGS))]
        check_fresh([root / run_name(name, seed) for seed, name in jobs], args)
        t_start = time.time()
        for i, (seed, name) in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {run_name(name, seed)}: "
                  f"{' '.join(SETTINGS[name]) or '(defaults)'} "
                  f"({(time.time() - t_start) / 60:.1f} min so far)", flush=True)
            out = root / run_name(name, seed)
            status = run_setting(name, seed, out, args)
            r = read_run(out)
            acc = f", final test acc {r.final:.2f}%" if r else ""
            print(f"    {status}{acc}", flush=True)
        print(f"all settings done in {(time.time() - t_start) / 60:.1f} min", flush=True)
    summarize(root, csv_path, args.epochs, args.seeds or seeds_found(root))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
