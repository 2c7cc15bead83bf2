"""Steady under a busy CPU: the README's run and an OPZO step, idle and beside a busy neighbour.

    python benchmarks/bench_busy.py              # full: 6000-image epochs, 2 rounds (~10 min)
    python benchmarks/bench_busy.py --quick      # 1536-image epochs, 1 round (~3 min)
    python benchmarks/bench_busy.py --csv benchmarks/results/busy_cpu.csv

The script starts its own busy neighbour (``--busy`` processes, each spinning on one core,
``while True: pass``) and measures, in one run and interleaved (each round runs every
configuration idle and busy, the order rotated by one each round, so that the machine's own
load hits all of them alike):

- ``epoch``: seconds per epoch of the README's run, ``opzo train`` with its defaults (FC
  784-800-800-10 on the embedded MNIST subset, OPZO), ``--epochs`` epochs per process (the
  first left out of the median: it holds the one-time costs), ``--limit-train`` images each;
- ``step``: one training step of OPZO as ``bench_speed.py`` times it (FC 784-800-800-10,
  T=6, batch 128, AdamW), the median over ``--step-rounds`` steps after two untimed ones.

Configurations (each in a fresh process, since the OpenMP runtime reads its environment once,
when torch loads it):

- ``old-default``: what ``opzo train`` did before: torch's thread count and OpenMP's default
  (active, spinning) waiting; the command line without its OpenMP set-up
  (``opzo.cli.main`` called directly, ``OMP_WAIT_POLICY`` unset);
- ``new-default``: ``python -m opzo train`` as the README gives it (``opzo.__main__`` sets
  ``OMP_WAIT_POLICY=PASSIVE``), torch's thread count;
- ``threads-1``, ``threads-2``: the same with ``--threads 1`` / ``--threads 2``.

The wait policy only decides how idle threads wait: the ``epoch`` rows say whether the run's
numbers (every ``metrics.jsonl`` value but the time) equal those of ``old-default`` with the
same thread count. The CSV has one row per workload, configuration and state, with the median,
the number of timings, the 1-minute load average while measured, the busy/idle ratio of the
configuration and the ratio to the old default's idle time. On a machine other people use,
"idle" is only the machine as they leave it: read the load column.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))
from opzo.__main__ import OPENMP_DEFAULTS  # noqa: E402  (imports no torch)

#: the variables that would change how the OpenMP runtime waits or how many threads it runs;
#: removed from every child's environment before its configuration's own are set
OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS",
                    "MKL_NUM_THREADS")

#: configuration -> (uses the command line's OpenMP set-up, --threads or None)
CONFIGS: dict[str, tuple[bool, int | None]] = {
    "old-default": (False, None),
    "new-default": (True, None),
    "threads-1": (True, 1),
    "threads-2": (True, 2),
}


def child_env(new_setup: bool) -> dict[str, str]:
    """The environment of one measurement: this one without any OpenMP variable, plus the
    command line's defaults when ``new_setup`` (``python -m opzo`` would add them itself; they
    are set here too so that the step worker, which is not the command line, gets them)."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    if new_setup:
        env.update(OPENMP_DEFAULTS)
    return env


class Neighbour:
    """``n`` processes, each spinning on one core, while the ``with`` block runs."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Neighbour:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(self.n)]
        time.sleep(0.5)  # running before the measurement starts
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def run_epoch(config: str, args: argparse.Namespace, tmp: Path) -> tuple[list[float], list]:
    """One ``opzo train`` process of ``config``: its epoch times and its metrics rows
    without the times."""
    new_setup, threads = CONFIGS[config]
    out = tmp / f"run-{config}"
    argv = ["train", "--epochs", str(args.epochs), "--quiet", "--overwrite", "--out", str(out)]
    if args.limit_train:
        argv += ["--limit-train", str(args.limit_train)]
    if threads:
        argv += ["--threads", str(threads)]
    if new_setup:
        cmd = [sys.executable, "-m", "opzo", *argv]
    else:  # the command line without opzo.__main__'s OpenMP set-up
        cmd = [sys.executable, "-c",
               f"import sys; from opzo.cli import main; sys.exit(main({argv!r}))"]
    res = subprocess.run(cmd, env=child_env(new_setup), capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{config}: opzo train failed ({res.returncode}):\n{res.stderr}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [float(r.pop("epoch_time_s")) for r in rows]
    return times[1:] if len(times) > 1 else times, rows


def run_step(config: str, args: argparse.Namespace) -> list[float]:
    """One worker process of ``config`` timing OPZO steps; its per-step times."""
    new_setup, threads = CONFIGS[config]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-step",
           "--step-rounds", str(args.step_rounds)]
    if threads:
        cmd += ["--threads", str(threads)]
    res = subprocess.run(cmd, env=child_env(new_setup), capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{config}: step worker failed ({res.returncode}):\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])["times"]


def worker_step(rounds: int, threads: int | None) -> None:
    """Time ``rounds`` OPZO training steps of bench_speed's FC net (after two untimed ones) and
    print their times as one JSON line. torch is imported here, after the parent has set the
    environment."""
    import torch

    from opzo import OPZO, InstantLoss, OnlineLearner, SpikingMLP
    from opzo.build import make_optimizer
    from opzo.config import TrainConfig

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    sizes, batch, T = [784, 800, 800, 10], 128, 6
    x = torch.rand(batch, sizes[0], device="cpu")
    y = torch.randint(0, sizes[-1], (batch,), device="cpu")
    net = SpikingMLP(sizes, dropout=0.2)
    with torch.no_grad():
        net.hidden[0].weight.mul_(3.0)  # a realistic firing rate on this input (bench_speed)
    rule = OPZO()
    learner = OnlineLearner(net, rule, InstantLoss("mix", 0.05))
    opt = make_optimizer([*net.parameters(), *rule.parameters()], TrainConfig())
    times = []
    for i in range(rounds + 2):
        t0 = time.perf_counter()
        learner.train_batch(x, y, opt, T=T)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times, "threads": torch.get_num_threads()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 round, 2 epochs of 1536 images, 8 steps per process")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 2; quick 1)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs per process (default 3; quick 2); the first is not timed")
    ap.add_argument("--limit-train", type=int, default=None,
                    help="images per epoch (default all 6000 of the README's run; quick 1536)")
    ap.add_argument("--step-rounds", type=int, default=None,
                    help="timed OPZO steps per process (default 15; quick 8)")
    ap.add_argument("--busy", type=int, default=1, help="spinning neighbour processes")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--workloads", nargs="+", default=["epoch", "step"],
                    choices=["epoch", "step"])
    ap.add_argument("--csv", type=str, default=str(ROOT / "benchmarks/results/busy_cpu.csv"))
    ap.add_argument("--worker-step", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 2)
    args.epochs = args.epochs or (2 if quick else 3)
    args.step_rounds = args.step_rounds or (8 if quick else 15)
    if args.limit_train is None and quick:
        args.limit_train = 1536
    if args.worker_step:
        worker_step(args.step_rounds, args.threads)
        return

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{platform.processor() or platform.machine()}, {cpus} CPUs usable, "
          f"load average at start {os.getloadavg()[0]:.2f}; busy neighbour: {args.busy} "
          f"spinning process(es); {args.rounds} round(s)", flush=True)
    cells = [(w, c, s) for w in args.workloads for c in args.configs for s in ("idle", "busy")]
    times: dict[tuple, list[float]] = {k: [] for k in cells}
    loads: dict[tuple, list[float]] = {k: [] for k in cells}
    numbers: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for r in range(args.rounds):
            order = cells[r % len(cells):] + cells[:r % len(cells)]
            for key in order:
                workload, config, state = key
                with Neighbour(args.busy if state == "busy" else 0):
                    load = os.getloadavg()[0]
                    if workload == "epoch":
                        t, rows = run_epoch(config, args, tmp)
                        numbers.setdefault(f"{config}/{state}", rows)
                    else:
                        t = run_step(config, args)
                loads[key].append(load)
                times[key].extend(t)
                print(f"  round {r + 1} {workload:5s} {config:11s} {state}: median "
                      f"{statistics.median(t):.3f} s (load {load:.2f})", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    out_rows = []
    print(f"\n{'workload':8s} {'config':11s} {'idle s':>8s} {'busy s':>8s} {'busy/idle':>9s} "
          f"{'busy/old idle':>13s}")
    for w in args.workloads:
        old_idle = med.get((w, "old-default", "idle"))
        for c in args.configs:
            idle, busy = med[(w, c, "idle")], med[(w, c, "busy")]
            print(f"{w:8s} {c:11s} {idle:8.3f} {busy:8.3f} {busy / idle:9.2f} "
                  f"{busy / old_idle if old_idle else float('nan'):13.2f}")
            for s in ("idle", "busy"):
                same = ""
                if w == "epoch" and "old-default/idle" in numbers:
                    same = str(numbers[f"{c}/{s}"] == numbers["old-default/idle"])
                out_rows.append({
                    "workload": w, "config": c, "state": s,
                    "wait_policy": "passive" if CONFIGS[c][0] else "default (active)",
                    "threads": CONFIGS[c][1] or f"torch default ({cpus})",
                    "median_s": f"{med[(w, c, s)]:.4f}", "n": len(times[(w, c, s)]),
                    "load1": f"{statistics.mean(loads[(w, c, s)]):.2f}",
                    "busy_over_idle": f"{busy / idle:.3f}",
                    "over_old_default_idle": (f"{med[(w, c, s)] / old_idle:.3f}"
                                              if old_idle else ""),
                    "numbers_equal_old_default": same,
                    "epochs_x_images": (f"{args.epochs}x{args.limit_train or 6000}"
                                        if w == "epoch" else "T6-B128"),
                })
    path = Path(args.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(out_rows[0]))
        writer.writeheader()
        writer.writerows(out_rows)
    print(f"\nwrote {path}; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
