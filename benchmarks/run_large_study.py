"""Issue 26's CPU-sized study: LocalZO on ResNet-19 with the TET and per-step losses, and OPZO
Table 13's untruncated methods, on Fashion-MNIST at reduced size.

    python benchmarks/run_large_study.py                     # both parts, 2 runs at a time
    python benchmarks/run_large_study.py --part a --norms none tdbn   # once --norm exists
    python benchmarks/run_large_study.py --part b --t13-rows sws bn   # BN: --norm bn-all-t
    python benchmarks/run_large_study.py --summarize

(a) LocalZO paper Table 2 at toy scale: ResNet-19 (``--net resnet19``) at ``--width`` (1/16:
8-16-32 channels) trained by BPTT with the TET loss (``--loss tet``, λ 0.05, φ 1) or the
per-step cross-entropy (``--loss ce``), each with the sigmoid surrogate and with LocalZO
(δ 0.5, m 5, z ~ N(0, 1): the paper's section 5.1 / Table 7), Adam lr 1e-3, no weight decay,
T = 2, for every normaliser of ``--norms`` ("none": the scaled-weight-standardized convs of
``resnet19`` without batch norm; "tdbn" / "bn" need the option ``--norm`` of issue 26 piece 1).
The question: does LocalZO's gain over the plain surrogate appear?

(b) OPZO paper Table 13 at toy scale: its configs (``configs/opzo-t13-<row>-<method>.toml``,
methods bptt / dfa-time / pzo) with Fashion-MNIST in place of DVS-CIFAR10, the 5-layer CNN
at ``--width``, T = 4 and Adam-W lr 1e-3 (the paper's 2e-4 is for 300 epochs); everything else
as in the config (dropout 0.1, the CE/MSE mix, α 0.2 → 0.01, λ_M 0.99999, sWS init 2.74).

Both parts: ``--seeds`` (0 1), ``--limit-train`` training images (the first of the training
split), ``--limit-test`` test images, ``--epochs``. The defaults keep the whole study near 25
minutes of CPU on a 2-core machine. Each run goes to ``<out-root>/<part>-<setting>-s<seed>``
(``--out-root`` defaults to ``benchmarks/runs/large-study``); a folder that already holds a run
stops the script unless ``--resume`` or ``--overwrite`` is given (``benchmarks/runner.py``).
The table (one row per setting and seed, with the command) goes to
``benchmarks/results/large-study.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
from pathlib import Path

from runner import add_output_options, check_fresh, run_all, train_into

from opzo.config import load_config_file

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "benchmarks" / "results" / "large-study.csv"
SURROGATES = {"sigmoid": [], "localzo": ["--localzo-delta", "0.5", "--localzo-m", "5",
                                         "--localzo-dist", "normal"]}
LOSSES = {"tet": ["--loss", "tet", "--tet-lambda", "0.05", "--tet-phi", "1"],
          "ce": ["--loss", "ce"]}
T13_METHODS = ("bptt", "dfa-time", "pzo")
T13_NORM = {"sws": "none", "bn": "bn-all-t"}


def part_a_jobs(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    jobs = []
    for norm in args.norms:
        for loss in LOSSES:
            for sur in SURROGATES:
                for seed in args.seeds:
                    name = f"a-{norm}-{loss}-{sur}-s{seed}"
                    cmd = ["--dataset", "fashion-mnist", "--data-root", args.data_root,
                           "--net", "resnet19", "--width", f"{args.width:g}", "--method", "bptt",
                           "--T", str(args.t_a), *LOSSES[loss], "--surrogate", sur,
                           *SURROGATES[sur], "--optimizer", "adam", "--lr", "1e-3",
                           "--weight-decay", "0", "--dropout", "0"]
                    if norm != "none":  # sWS without --norm: runs on trees without it
                        cmd += ["--norm", norm]
                    jobs.append((name, cmd + common(args, seed)))
    return jobs


def part_b_jobs(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    jobs = []
    for row in args.t13_rows:
        for method in T13_METHODS:
            cfg = dict(load_config_file(ROOT / "configs" / f"opzo-t13-{row}-{method}.toml"))
            cfg.update(dataset="fashion-mnist", T=args.t_b, lr=1e-3)
            if cfg.get("norm") == "none":
                del cfg["norm"]  # the sWS row: no normaliser (trees without --norm run it)
            flags = []
            for key, value in cfg.items():
                flag = "--" + key.replace("_", "-")
                if isinstance(value, bool):
                    flags += [flag] if value else []
                else:
                    flags += [flag, str(value)]
            flags += ["--data-root", args.data_root, "--width", f"{args.width:g}"]
            for seed in args.seeds:
                jobs.append((f"b-{row}-{method}-s{seed}", flags + common(args, seed)))
    return jobs


def common(args: argparse.Namespace, seed: int) -> list[str]:
    return ["--epochs", str(args.epochs), "--limit-train", str(args.limit_train),
            "--limit-test", str(args.limit_test), "--batch-size", "50",
            "--eval-batch-size", "500", "--seed", str(seed), "--threads", "1"]


def summarize(jobs: list[tuple[str, list[str]]], root: Path) -> None:
    """One CSV row and one table line per run (its last epoch), with its command."""
    rows = []
    for name, cmd in jobs:
        path = root / name / "metrics.jsonl"
        lines = ([json.loads(x) for x in path.read_text().splitlines() if x.strip()]
                 if path.exists() else [])
        if not lines:
            continue
        last = lines[-1]
        part, setting, seed = name[0], name[2: name.rindex("-s")], name[name.rindex("-s") + 2:]
        rows.append({"part": part, "setting": setting, "seed": seed, "epochs": len(lines),
                     "train_acc": last["train_acc"], "test_acc": last["test_acc"],
                     "s_per_epoch": round(sum(r["epoch_time_s"] for r in lines) / len(lines), 1),
                     "command": "opzo train " + shlex.join(cmd)})
    if not rows:
        print("no finished runs under", root)
        return
    CSV.parent.mkdir(parents=True, exist_ok=True)
    with CSV.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("| part | setting | seed | epochs | train acc | test acc | s/epoch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['setting']} | {r['seed']} | {r['epochs']} | "
              f"{r['train_acc']:.2f} | {r['test_acc']:.2f} | {r['s_per_epoch']} |")
    print(f"wrote {CSV}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "fashion-mnist"))
    ap.add_argument("--part", choices=("a", "b", "both"), default="both")
    ap.add_argument("--norms", nargs="+", default=["none"],
                    help="part a: normalisers of resnet19 (none; tdbn / bn with --norm)")
    ap.add_argument("--t13-rows", nargs="+", choices=list(T13_NORM), default=["sws"],
                    help="part b: Table 13's rows (bn needs --norm bn-all-t)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--width", type=float, default=1 / 16)
    ap.add_argument("--t-a", type=int, default=2, help="part a: time steps")
    ap.add_argument("--t-b", type=int, default=4, help="part b: time steps")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit-train", type=int, default=3000)
    ap.add_argument("--limit-test", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--summarize", action="store_true")
    add_output_options(ap, "large-study")
    args = ap.parse_args()
    jobs = ((part_a_jobs(args) if args.part in ("a", "both") else [])
            + (part_b_jobs(args) if args.part in ("b", "both") else []))
    if not args.summarize:
        check_fresh([args.out_root / name for name, _ in jobs], args)
        run_all(lambda job: train_into(args.out_root / job[0], job[1], ROOT, args.resume,
                                       args.overwrite), jobs, args.jobs)
    summarize(jobs, args.out_root)


if __name__ == "__main__":
    main()
