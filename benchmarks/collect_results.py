"""Collect benchmark run folders into the compact tables that RESULTS.md cites.

    python benchmarks/collect_results.py                     # every run under benchmarks/runs
    python benchmarks/collect_results.py --runs DIR [DIR ...] --out benchmarks/results

The run folders that ``opzo train`` and the runners write (``config.json``, ``metrics.jsonl``,
``summary.json``, ``diagnostics.jsonl``, ``log.txt``, ``checkpoint.pt``) are not committed
(``benchmarks/runs/`` is git-ignored); what RESULTS.md quotes from them is kept as CSV tables
under ``benchmarks/results/``, one set per experiment family:

* ``<family>-runs.csv``: one row per run (key: ``run``, the run folder's name): its setting
  (dataset, method, net, epochs, seed, T, trace, local derivative, init scale, noise generator
  and kernels as configured, and ``options``: every other config value that differs between
  the family's runs), its final and best test accuracy, final train accuracy, the last
  epoch's firing rates and fraction of non-zero local derivatives, the wall time, the mean
  training time per epoch, the kernels the run used (when its version recorded them), and with
  diagnostics the mean cosine with the reference gradient over the last epoch, per layer;
* ``<family>-epochs.csv``: one row per run and epoch (``metrics.jsonl``);
* ``<family>-cosine.csv`` and ``<family>-variance.csv`` (runs with ``--diagnostics``): the
  per-layer cosine with the reference gradient at every measured batch, and the per-layer
  gradient variance per epoch.

Families: ``table1`` (run_table1.py and the section 7 runs), ``conv`` (run_conv.py),
``alignment`` (run_alignment.py), ``randman`` (run_randman.py), ``localzo-fashion``
(run_localzo_fashion.py); other folders under the runs root (scripts that write their own
tables, e.g. run_ablations.py) only when named with ``--families``. A run folder
``<runs>/<family>/<run>`` (the runners' default layout) belongs to ``<family>``; a folder
directly under ``<runs>`` is assigned by its name (the layout before 2026-11-29); of two
folders with the same name in one family the one written last counts. Rows of runs found
replace the rows of the same ``run`` in the existing tables; rows of other runs are kept
(``--replace`` rebuilds each family's tables from the runs found alone), so re-running one
runner and then this script updates its rows only. Paths are never written: runs are named by
their folder's name.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
#: how a run folder directly under the runs root is assigned to its family (by name prefix)
PREFIXES = (("align-", "alignment"), ("randman-", "randman"), ("fashion-conv", "conv"),
            ("fashion-latency-", "localzo-fashion"), ("mnist-e", "table1"),
            ("fashion-mnist-e", "table1"))
FAMILIES = tuple(dict.fromkeys(fam for _, fam in PREFIXES))
#: config values given their own column in <family>-runs.csv
SETTING = ("dataset", "method", "net", "epochs", "seed", "T", "trace", "surrogate", "init_scale",
           "noise_rng", "kernels")
#: config values never compared (where the run was written, where its data lay)
IGNORED = ("out", "data_root")
RUN_COLUMNS = ("run", *SETTING, "options", "epochs_done", "final_test_acc", "best_test_acc",
               "final_train_acc", "firing_rate", "nonzero_grad_fraction", "wall_time_s",
               "mean_epoch_time_s", "kernels_used", "cosine_last_epoch", "finished",
               "git_commit", "torch")
EPOCH_COLUMNS = ("run", "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
                 "firing_rate", "nonzero_grad_fraction", "lr", "alpha", "epoch_time_s")


def fmt(value) -> str:
    """A CSV cell: lists space-separated, floats in 6 significant digits, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " ".join(fmt(v) for v in value)
    return str(value)


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue
    return rows


def family_of(run: Path, root: Path) -> str | None:
    rel = run.relative_to(root).parts
    if len(rel) >= 2:
        return rel[0]
    return next((fam for prefix, fam in PREFIXES if run.name.startswith(prefix)), None)


def find_runs(roots: list[Path], families: list[str]) -> dict[str, list[Path]]:
    """Run folders (a config.json and a metrics.jsonl) of the families under the roots."""
    found: dict[str, list[Path]] = {}
    others: Counter = Counter()
    for root in roots:
        for cfg in sorted(root.rglob("config.json")):
            run = cfg.parent
            if not (run / "metrics.jsonl").is_file():
                continue
            fam = family_of(run, root)
            if fam not in families:
                others[fam or run.name] += 1
                continue
            found.setdefault(fam, []).append(run)
    for name, n in sorted(others.items()):
        print(f"left out {n} run(s) of {name} (not among --families)")
    for fam, runs in found.items():  # one folder per name: the one written last
        by_name: dict[str, Path] = {}
        for run in runs:
            other = by_name.get(run.name)
            if other is not None:
                keep, drop = sorted((run, other), reverse=True,
                                    key=lambda r: (r / "metrics.jsonl").stat().st_mtime)
                print(f"two runs named {run.name}: kept {keep}, left out {drop}")
                run = keep
            by_name[run.name] = run
        found[fam] = sorted(by_name.values(), key=lambda r: r.name)
    return found


def net_name(cfg: dict) -> str:
    if cfg.get("net") not in (None, "fc"):
        return f"{cfg['net']} x{cfg.get('width', 1.0):g}"
    return "fc " + "-".join(str(n) for n in cfg.get("hidden", []))


def cosine_rows(diag: list[dict]) -> list[dict]:
    return [r for r in diag if "cosine" in r]


def run_row(run: Path, cfg: dict, options: list[str]) -> dict:
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    metrics = read_jsonl(run / "metrics.jsonl")
    last = metrics[-1] if metrics else {}
    cos = cosine_rows(read_jsonl(run / "diagnostics.jsonl"))
    cos_last = ""
    if cos:
        epoch = max(r["epoch"] for r in cos)
        last_cos = [r["cosine"] for r in cos if r["epoch"] == epoch]
        cos_last = " / ".join(f"{statistics.mean(c[k] for c in last_cos):.4f}"
                              for k in last_cos[0])
    row = {"run": run.name, **{k: cfg.get(k) for k in SETTING}, "net": net_name(cfg),
           "options": "; ".join(f"{k}={json.dumps(cfg[k]) if cfg[k] is None else fmt(cfg[k])}"
                                for k in options if k in cfg),
           "epochs_done": len(metrics),
           "final_test_acc": summary.get("final_test_acc", last.get("test_acc")),
           "best_test_acc": summary.get("best_test_acc",
                                        max((m["test_acc"] for m in metrics), default=None)),
           "final_train_acc": summary.get("final_train_acc", last.get("train_acc")),
           "firing_rate": last.get("firing_rate"),
           "nonzero_grad_fraction": last.get("nonzero_grad_fraction"),
           "wall_time_s": summary.get("wall_time_s"),
           "mean_epoch_time_s": (round(statistics.mean(m["epoch_time_s"] for m in metrics), 3)
                                 if metrics else None),
           "kernels_used": summary.get("kernels"), "cosine_last_epoch": cos_last,
           "finished": summary_path.is_file(), "git_commit": summary.get("git_commit"),
           "torch": summary.get("torch")}
    return {k: fmt(v) if not isinstance(v, str) else v for k, v in row.items()}


def family_tables(runs: list[Path]) -> dict[str, tuple[list[str], list[dict]]]:
    """The tables of one family: name -> (columns, rows)."""
    cfgs = {run: json.loads((run / "config.json").read_text()) for run in runs}
    keys = sorted({k for c in cfgs.values() for k in c} - set(SETTING) - set(IGNORED)
                  - {"net", "width", "hidden"})
    # a key that an older version did not write is not a difference; compare where present
    differing = [k for k in keys if len({json.dumps(c[k], sort_keys=True)
                                         for c in cfgs.values() if k in c}) > 1]
    if len({net_name(c) for c in cfgs.values()}) == 1 and len(
            {json.dumps(c.get("hidden")) for c in cfgs.values()}) > 1:
        differing.append("hidden")
    tables: dict[str, tuple[list[str], list[dict]]] = {
        "runs": (list(RUN_COLUMNS), [run_row(run, cfgs[run], differing) for run in runs])}

    epochs = []
    extra = Counter()
    for run in runs:
        for m in read_jsonl(run / "metrics.jsonl"):
            extra.update(k for k in m if k not in EPOCH_COLUMNS)
            epochs.append({"run": run.name, **{k: fmt(v) for k, v in m.items()}})
    tables["epochs"] = ([*EPOCH_COLUMNS, *sorted(extra)], epochs)

    diags = {run: read_jsonl(run / "diagnostics.jsonl") for run in runs}
    if any(diags.values()):
        layers = list(dict.fromkeys(k for d in diags.values() for r in cosine_rows(d)
                                    for k in r["cosine"]))
        cos = [{"run": run.name, "epoch": str(r["epoch"]), "batch": str(r.get("batch", "")),
                **{k: fmt(r["cosine"].get(k)) for k in layers}}
               for run, d in diags.items() for r in cosine_rows(d)]
        tables["cosine"] = (["run", "epoch", "batch", *layers], cos)
        var_layers = list(dict.fromkeys(k for d in diags.values() for r in d
                                        if "variance" in r for k in r["variance"]))
        var_cols = [f"{kind}:{k}" for kind in ("variance", "relative_variance")
                    for k in var_layers]
        var = [{"run": run.name, "epoch": str(r["epoch"]),
                **{f"{kind}:{k}": fmt(r.get(kind, {}).get(k))
                   for kind in ("variance", "relative_variance") for k in var_layers}}
               for run, d in diags.items() for r in d if "variance" in r]
        tables["variance"] = (["run", "epoch", *var_cols], var)
    return tables


def sort_key(row: dict) -> tuple:
    def num(x: str) -> float:
        try:
            return float(x)
        except ValueError:
            return -1.0
    return (row["run"], num(row.get("epoch", "")), num(row.get("batch", "")))


def write_table(path: Path, columns: list[str], rows: list[dict], replace: bool) -> int:
    """Write rows, keeping the existing file's rows of runs not among them (unless replace)."""
    new_runs = {r["run"] for r in rows}
    if path.is_file() and not replace:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            old = [r for r in reader if r["run"] not in new_runs]
            columns = [*columns, *[c for c in (reader.fieldnames or []) if c not in columns]]
        rows = [*old, *rows]
    rows = sorted(rows, key=sort_key)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", type=Path, default=[BENCH / "runs"],
                    help="roots to search for run folders (default benchmarks/runs)")
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES),
                    help="which families to collect (default: %(default)s; the folder name "
                         "under the runs root of any other)")
    ap.add_argument("--replace", action="store_true",
                    help="rebuild each family's tables from the runs found alone")
    args = ap.parse_args()
    found = find_runs([r.resolve() for r in args.runs if r.is_dir()], args.families)
    if not found:
        raise SystemExit(f"no run folders under {', '.join(map(str, args.runs))}")
    args.out.mkdir(parents=True, exist_ok=True)
    for fam, runs in sorted(found.items()):
        for kind, (columns, rows) in family_tables(runs).items():
            path = args.out / f"{fam}-{kind}.csv"
            n = write_table(path, columns, rows, args.replace)
            print(f"{path.name}: {n} rows ({len(runs)} runs found)")


if __name__ == "__main__":
    main()
