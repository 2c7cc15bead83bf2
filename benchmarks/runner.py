"""Run ``opzo train`` into run folders (shared by the benchmark scripts that queue several
training runs), and the output convention every runner follows.

Every runner writes its runs under an output root, ``--out-root`` (default
``benchmarks/runs/<family>``, git-ignored), one folder per setting. A run folder that already
holds a run (a ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, ``summary.json`` or
``diagnostics.jsonl``) is never reused silently:

* by default the runner starts fresh runs only, and stops before starting anything if one of
  its settings' folders already holds a run, naming them;
* ``--resume`` continues those folders: a finished run (``summary.json``) is skipped, an
  interrupted one (``checkpoint.pt``) continued with ``opzo train --resume``, one without a
  checkpoint (stopped in its first minutes) started again, and a missing one started;
* ``--overwrite`` starts every setting again, replacing its folder's run.

The tables RESULTS.md cites are built from the run folders by
``python benchmarks/collect_results.py`` (run it after a runner).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
#: the files that make a folder a run folder (as ``opzo train`` decides it)
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json",
             "diagnostics.jsonl")


def add_output_options(ap: argparse.ArgumentParser, family: str) -> None:
    """``--out-root``, ``--resume`` and ``--overwrite`` (see the module's docstring)."""
    ap.add_argument("--out-root", type=Path, default=BENCH / "runs" / family,
                    help=f"where the run folders go (default benchmarks/runs/{family})")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the settings' existing run folders: skip finished runs, "
                           "resume interrupted ones")
    mode.add_argument("--overwrite", action="store_true",
                      help="start every setting again, replacing the run in its folder")


def holds_run(out: Path) -> bool:
    return any((out / f).exists() for f in RUN_FILES)


def check_fresh(outs: Iterable[Path], args: argparse.Namespace) -> None:
    """Without ``--resume`` or ``--overwrite``: stop (before starting anything) if a
    setting's folder already holds a run."""
    if args.resume or args.overwrite:
        return
    taken = [str(out) for out in outs if holds_run(out)]
    if taken:
        raise SystemExit("these run folders already hold runs:\n  " + "\n  ".join(taken)
                         + "\ncontinue them with --resume, start them again with --overwrite,"
                         " or choose another --out-root")


def train_into(out: Path, new_run_args: list[str], cwd: Path, resume: bool = False,
               overwrite: bool = False) -> str:
    """``opzo train --quiet`` with ``new_run_args`` (plus ``--out``) into ``out``, its output
    appended to ``out/log.txt``. With ``resume`` a finished run (``summary.json``) is skipped
    and one with a checkpoint continued; with ``overwrite`` the folder's run is replaced (and
    its log restarted); otherwise ``opzo train`` refuses a folder that holds a run. Returns a
    one-line status."""
    cmd = [sys.executable, "-m", "opzo.cli", "train", "--quiet"]
    if resume and (out / "summary.json").exists():
        return f"{out.name}: already finished"
    if resume and (out / "checkpoint.pt").exists():
        cmd += ["--resume", str(out)]
    else:
        cmd += [*new_run_args, "--out", str(out)]
        if overwrite or (resume and holds_run(out)):  # resume: nothing saved to continue
            cmd.append("--overwrite")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with (out / "log.txt").open("w" if overwrite else "a") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    return f"{out.name}: exit {code} after {time.time() - t0:.0f}s"


def run_all(run_one: Callable[..., str], jobs: Iterable, parallel: int) -> None:
    """Call ``run_one(job)`` for every job, ``parallel`` at a time (each starts an ``opzo
    train`` process), printing each status line as the runs finish in order."""
    with ThreadPoolExecutor(parallel) as pool:
        for line in pool.map(run_one, jobs):
            print(line, flush=True)
    print("tables for RESULTS.md: python benchmarks/collect_results.py (--runs OUT_ROOT if not "
          "under benchmarks/runs)", flush=True)
