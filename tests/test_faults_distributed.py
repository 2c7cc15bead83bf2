"""Stops and failures of ``opzo train --nproc 2`` (the launcher, :mod:`opzo.launch`), each a
real run of the launcher, torchrun and two processes (gloo on the CPU):

* SIGTERM / SIGINT to the launcher alone, at random moments: it exits 143 / 130, no process
  of the run is left, and ``--resume`` gives the uninterrupted run's numbers;
* a killed rank, a rank that gets SIGTERM, SIGTERM to torchrun, too few samples for the
  processes, ``--nproc 0``: one message, never gloo's text, a traceback or torchrun's report;
* the chip's noise (``--hw-noise``) is drawn for the global batch: 1 and 2 processes agree.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not torch.distributed.is_available()
                                or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
MNIST = SHARED_DATA / "mnist"
SMALL = ["--hidden", "48", "32", "--T", "3", "--threads", "1", "--limit-test", "300",
         "--quiet"]
#: what the user must never see from a launch
FOREIGN = ("Traceback", "ChildFailedError", "gloo", "terminate called", "torch.distributed",
           "Root Cause")


def _env() -> dict[str, str]:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), env.get("PYTHONPATH", "")])
    return env


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "opzo", "train", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def _pids_of(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (the launcher, torchrun, the ranks)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if str(folder).encode() in cmd and state != "Z":
                found.append(int(entry))
    return found


def _rank_pid(folder: Path, rank: int | None) -> int:
    """The pid of rank ``rank`` of the run in ``folder`` (None: torchrun), once started."""
    for _ in range(600):
        for pid in _pids_of(folder):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if rank is None and b"torch.distributed.run" in cmd:
                return pid
            if rank is not None and f"RANK={rank}".encode() in env:
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no process of rank {rank} found for {folder}")


def _wait_for(path: Path, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.1)


def _none_left(folder: Path, within: float = 30.0) -> None:
    end = time.monotonic() + within
    while _pids_of(folder):
        assert time.monotonic() < end, f"processes of {folder} outlive the launcher: " \
            f"{_pids_of(folder)}"
        time.sleep(0.2)


def _rows(folder: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("epoch_time_s")
    return rows


def _clean(err: str) -> None:
    for word in FOREIGN:
        assert word not in err, err[-3000:]


@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte").exists()
                    and not (MNIST / "train-images-idx3-ubyte.gz").exists(),
                    reason="MNIST not in the shared data folder")
def test_a_signalled_launcher_stops_every_process_and_resume_gives_the_same_numbers(tmp_path):
    run = ["--nproc", "2", "--dataset", "mnist", "--data-root", str(MNIST), "--epochs", "2",
           "--limit-train", "6000", "--batch-size", "100", *SMALL]
    full = tmp_path / "full"
    rc, out, err = _finish(_start([*run, "--out", str(full)]))
    assert rc == 0, err[-3000:]
    cut = tmp_path / "cut"
    rng = random.Random()
    args = [*run, "--out", str(cut)]
    for sig in (signal.SIGTERM, signal.SIGINT):
        t0 = time.monotonic()
        proc = _start(args)
        if sig == signal.SIGTERM:  # a random moment of the training
            _wait_for(cut / "config.json")
            time.sleep(rng.uniform(0.0, 3.0))
        else:  # a random moment of the launch, start-up included
            time.sleep(rng.uniform(1.0, 15.0))
        proc.send_signal(sig)
        rc, out, err = _finish(proc)
        assert time.monotonic() - t0 < 120
        _none_left(cut)
        _clean(err)
        if rc == 0:  # finished before the signal counted
            break
        assert rc == 128 + sig, (rc, out, err)
        if (cut / "checkpoint.pt").is_file():
            assert f"--resume {cut} --nproc 2" in out + err, (out, err)
        else:
            assert "no checkpoint was written" in err, err
        # continue it; before the first checkpoint there is nothing to continue: start again
        args = (["--resume", str(cut), "--nproc", "2", "--quiet"]
                if (cut / "checkpoint.pt").is_file() else [*run, "--out", str(cut),
                                                           "--overwrite"])
    else:
        rc, out, err = _finish(_start(args))
        assert rc == 0, err[-3000:]
    assert _rows(cut) == _rows(full)


def test_a_killed_rank_is_one_line_that_names_it_and_the_checkpoint(tmp_path):
    out_dir = tmp_path / "run"
    proc = _start(["--nproc", "2", "--epochs", "30", "--checkpoint-every", "3", *SMALL,
                   "--out", str(out_dir)])
    _wait_for(out_dir / "checkpoint.pt")
    os.kill(_rank_pid(out_dir, 1), signal.SIGKILL)
    rc, out, err = _finish(proc)
    _none_left(out_dir)
    assert rc == 1
    _clean(err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("opzo: error: process 1 of 2 was killed "
                                                   "(SIGKILL)"), err
    assert f"the last checkpoint in {out_dir} stands" in lines[0]
    assert f"--resume {out_dir} --nproc 2" in lines[0]


def test_a_rank_killed_before_any_checkpoint_says_none_stands(tmp_path):
    out_dir = tmp_path / "run"
    proc = _start(["--nproc", "2", "--epochs", "30", *SMALL, "--out", str(out_dir)])
    _wait_for(out_dir / "config.json")
    os.kill(_rank_pid(out_dir, 0), signal.SIGKILL)
    rc, out, err = _finish(proc)
    _none_left(out_dir)
    _clean(err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 1 and len(lines) == 1, err
    assert "process 0 of 2 was killed" in lines[0] and "no checkpoint" in lines[0]
    assert "stands" not in lines[0]


@pytest.mark.parametrize("target", ["rank 1", "torchrun"])
def test_sigterm_to_a_rank_or_to_torchrun_stops_the_run_at_a_batch_boundary(tmp_path, target):
    out_dir = tmp_path / "run"
    proc = _start(["--nproc", "2", "--epochs", "30", *SMALL, "--out", str(out_dir)])
    _wait_for(out_dir / "config.json")
    time.sleep(1.0)
    os.kill(_rank_pid(out_dir, 1 if target == "rank 1" else None), signal.SIGTERM)
    rc, out, err = _finish(proc)
    _none_left(out_dir)
    _clean(err)
    assert rc in (130, 143), (rc, err)
    # the stop message, like every stop and error message, is on stderr
    assert re.search(r"stopped (at|after) epoch", err) and f"--resume {out_dir} --nproc 2" in err
    assert "opzo: error" not in err
    state = torch.load(out_dir / "checkpoint.pt", weights_only=False)
    assert state["world_size"] == 2


def test_fewer_samples_than_processes_is_one_line(tmp_path):
    rc, out, err = _finish(_start(["--nproc", "2", "--limit-train", "1", *SMALL,
                                   "--out", str(tmp_path / "run")]))
    _clean(err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("opzo: error: 1 training samples cannot be shared by 2")


@pytest.mark.parametrize("n", ["0", "-3"])
def test_nproc_below_one_is_refused_before_anything_starts(tmp_path, n):
    rc, out, err = _finish(_start(["--nproc", n, "--out", str(tmp_path / "run")]))
    assert rc == 2 and err.strip() == f"opzo: error: --nproc must be at least 1, got {n}"
    assert not (tmp_path / "run").exists()


def _hw_run(tmp_path: Path, method: str, nproc: int) -> Path:
    out_dir = tmp_path / f"{method}-{nproc}"
    args = ["--method", method, "--hw-noise", "0.5", "--epochs", "2", "--limit-train", "240",
            "--batch-size", "60", "--limit-test", "129", "--eval-batch-size", "64",
            "--hidden", "40", "30", "--T", "4", "--threads", "1", "--quiet", "--lr", "1e-3",
            "--out", str(out_dir)]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    rc, out, err = _finish(_start(args))
    assert rc == 0, err[-3000:]
    return out_dir


@pytest.mark.parametrize("method", ["bp", "dkp"])
def test_chip_noise_is_drawn_for_the_global_batch(tmp_path, method):
    """1 process and 2 processes with --hw-noise train the same weights and measure the same
    noisy test accuracy (evaluation noise is drawn per test batch as one process draws it;
    the last test batch, 1 sample, is smaller than the processes)."""
    one, two = _hw_run(tmp_path, method, 1), _hw_run(tmp_path, method, 2)
    for a, b in zip(_rows(one), _rows(two), strict=True):
        assert a["test_acc"] == b["test_acc"] and a["train_acc"] == b["train_acc"], (a, b)
        for key in ("train_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (key, a, b)
    wa = torch.load(one / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(two / "checkpoint.pt", weights_only=False)["model"]
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5), (k, (wa[k] - wb[k]).abs().max())


def test_a_failure_while_stopping_is_the_line_the_launcher_prints(tmp_path, capsys):
    """Ctrl-C, then process 0's stop checkpoint cannot be written: the launcher says what
    failed (the process's own error line, exit 2), not "the processes stopped"."""
    from opzo.launch import _conclude, _Report

    report = _Report()
    report.errors.append(f"opzo: error: cannot write {tmp_path}/checkpoint.pt: the disk is full")
    report.failures.append((0, 2, ""))
    assert _conclude(2, [signal.SIGINT], report, tmp_path, 2) == 2
    err = capsys.readouterr().err
    assert err.strip() == report.errors[0]
    quiet = _Report()  # a stop that went well: 130, the stop line came from the processes
    quiet.stop_line = True
    assert _conclude(130, [signal.SIGINT], quiet, tmp_path, 2) == 130
