"""What a run folder promises when its writes are cut short or refused (issue 21, items 3-5).

* No crash point loses a row of metrics.jsonl: a SIGKILL inside the end-of-epoch checkpoint
  write, between it and the append, or inside the append; after --resume the rows equal the
  uninterrupted run's and summary.json's best accuracy counts every epoch.
* A write that fails (a full disk, a file-size limit, ...) ends the run with one
  ``opzo: error:`` line naming the file and the cause; no temporary file is left and the last
  good checkpoint stands.
* A finished run's files do not change when it is resumed (with --lr too).
* A resume with another number of CPU threads warns; the same number does not.
* A kill before the first checkpoint: one clear way on (--overwrite), and the first
  checkpoint comes early.
* A stop request mid-batch takes effect within seconds; the partial batch is discarded and
  resume is exact.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

import opzo.network as network_module
import opzo.neurons.lif as lif_module
import opzo.train as train_module
from opzo.cli import main
from opzo.train import Interrupted, run_training

from .test_faults import CASES, KILL_AT_BATCH, QUIET, _args, _cfg, _driver, _rows, _same_checkpoints


def _files(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run folder but its lock: (bytes, mtime in ns)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.iterdir())
            if p.name != ".lock"}


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("opzo: error:"), stderr
    return lines[0]


# ---- 3. no crash point loses a row --------------------------------------------------------

KILL_IN_LAST_CHECKPOINT = """
import io, os, signal, torch
import opzo.train as T
_save, _n = torch.save, [0]
def _half_save(obj, f, *a, **k):
    _n[0] += 1
    if _n[0] == 2:  # the end of epoch 2: half of the checkpoint, then die
        buf = io.BytesIO(); _save(obj, buf)
        if hasattr(f, "write"):
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
        else:
            with open(f, "wb") as fh:
                fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *a, **k)
T.torch.save = _half_save
"""

KILL_AT_LAST_APPEND = """
import json, os, signal
import opzo.train as T
_append = T.append_jsonl
def _append_or_die(path, row):
    if path.name == "metrics.jsonl" and row.get("epoch") == 2:
        if {torn}:  # inside the append: half of the line is on disk
            with open(path, "a") as fh:
                text = json.dumps(row) + "\\n"
                fh.write(text[: len(text) // 2]); fh.flush(); os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)  # (else: after the checkpoint, before the append)
    return _append(path, row)
T.append_jsonl = _append_or_die
"""


@pytest.mark.parametrize("where", ["inside the checkpoint write",
                                   "between the checkpoint and the append",
                                   "inside the append"])
def test_no_crash_point_at_an_epoch_end_loses_a_metrics_row(tmp_path, where):
    full = run_training(_cfg(tmp_path, "full"), tmp_path / "full", **QUIET)
    code = (KILL_IN_LAST_CHECKPOINT if where.startswith("inside the checkpoint")
            else KILL_AT_LAST_APPEND.format(torn=where == "inside the append"))
    cut = tmp_path / "cut"
    proc = _driver(code, _args(cut))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    assert sum(ln.endswith("}") for ln in lines) == 1  # epoch 2's row is not (wholly) there
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0
    assert _rows(cut) == _rows(tmp_path / "full")
    summary = json.loads((cut / "summary.json").read_text())
    best = max(r["test_acc"] for r in _rows(tmp_path / "full"))
    assert summary["best_test_acc"] == best == full["best_test_acc"]
    assert summary["final_test_acc"] == full["final_test_acc"]
    _same_checkpoints(tmp_path / "full", cut)


# ---- 4. write failures say which file and why ----------------------------------------------

def _limited(limit: int):
    """preexec_fn: a file-size limit of ``limit`` bytes, and SIGXFSZ ignored, so that a write
    past it fails with EFBIG (as under ulimit -f in a shell that ignores the signal)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _opzo(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opzo", "train", *args], capture_output=True,
                          text=True, timeout=300, **kw)


def test_a_file_size_limit_names_the_checkpoint_and_keeps_the_last_good_one(tmp_path):
    run = tmp_path / "a"
    with pytest.raises(Interrupted):  # a checkpoint at the end of epoch 1's last batch
        run_training(_cfg(tmp_path, "a"), run, stop_after_batches=10, **QUIET)
    ckpt = run / "checkpoint.pt"
    before = _files(run)
    limit = ckpt.stat().st_size // 2  # the next checkpoint cannot be written
    proc = _opzo(["--resume", str(run), "--quiet"], preexec_fn=_limited(limit))
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert f"cannot write {ckpt}: the file is too large" in line
    assert "the last checkpoint" in line and f"--resume {run}" in line
    assert not (run / "checkpoint.pt.tmp").exists()
    assert _files(run) == before  # the checkpoint, rows and config as they were
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # without the limit: on
    run_training(_cfg(tmp_path, "full"), tmp_path / "full", **QUIET)
    assert _rows(run) == _rows(tmp_path / "full")
    # a new run whose first checkpoint cannot be written: nothing to resume, say so
    proc = _opzo(_args(tmp_path / "b"), preexec_fn=_limited(limit))
    line = _one_error_line(proc.stderr)
    assert proc.returncode == 2 and "too large" in line and "--overwrite" in line
    assert "--resume" not in line
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        ".lock", "config.json", "metrics.jsonl"]


@pytest.mark.parametrize("name", ["config.json", "checkpoint.pt", "summary.json"])
def test_a_full_disk_names_the_file_and_leaves_no_temporary_file(tmp_path, name):
    """The file's temporary twin points at /dev/full, whose writes fail with ENOSPC: the disk
    is full for that one file."""
    run = tmp_path / "a"
    run.mkdir()
    (run / f"{name}.tmp").symlink_to("/dev/full")
    proc = _opzo(_args(run, "--epochs", "1"))
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert f"cannot write {run / name}: the disk is full" in line, line
    assert not os.path.lexists(run / f"{name}.tmp")
    if name == "summary.json":  # the last checkpoint stands; a resume writes the summary
        assert f"--resume {run}" in line
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
        assert json.loads((run / "summary.json").read_text())["best_test_acc"] is not None
    else:
        assert "no checkpoint was written" in line and "--overwrite" in line


FULL_AFTER_FIRST_CHECKPOINT = """
import os
import opzo.train as T
_checkpoint = T._Run.checkpoint
def _checkpoint_then_full(self, *a, **k):
    _checkpoint(self, *a, **k)
    target = self.run_dir / {name!r}
    target.unlink()
    target.symlink_to("/dev/full")  # from now on every write to it finds the disk full
T._Run.checkpoint = _checkpoint_then_full
"""


@pytest.mark.parametrize("name", ["metrics.jsonl", "diagnostics.jsonl"])
def test_a_full_disk_at_an_append_keeps_every_row(tmp_path, name):
    extra = ["--diagnostics", "--diag-every", "4"]
    full = tmp_path / "full"
    assert _opzo([*_args(full), *extra]).returncode == 0
    run = tmp_path / "a"
    proc = _driver(FULL_AFTER_FIRST_CHECKPOINT.format(name=name), [*_args(run), *extra])
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert f"cannot write {run / name}: the disk is full" in line, line
    assert f"the last checkpoint in {run} stands" in line and f"--resume {run}" in line
    (run / name).unlink()  # room made (the file is gone with the disk's contents)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert _rows(run) == _rows(full)
    assert (run / "diagnostics.jsonl").read_text() == (full / "diagnostics.jsonl").read_text()
    best = [json.loads((r / "summary.json").read_text())["best_test_acc"] for r in (run, full)]
    assert best[0] == best[1]


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (the test is skipped where mounting is not
    permitted)."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_disk_mid_run_keeps_the_last_checkpoint_and_the_resume_is_exact(tmp_path):
    probe = tmp_path / "probe"  # how large a checkpoint of this run is
    with pytest.raises(Interrupted):
        run_training(_cfg(tmp_path, "probe"), probe, stop_after_batches=10, **QUIET)
    size = (probe / "checkpoint.pt").stat().st_size
    run_training(_cfg(tmp_path, "full"), tmp_path / "full", **QUIET)
    # room for one checkpoint and a half: the first fits, the second (written next to the
    # first before it replaces it) does not
    with _tmpfs(tmp_path / "disk", f"{size * 3 // 2 // 1024}k") as disk:
        run = disk / "run"
        proc = _opzo(_args(run))
        assert proc.returncode == 2, proc.stderr
        line = _one_error_line(proc.stderr)
        assert f"cannot write {run / 'checkpoint.pt'}: the disk is full" in line, line
        assert f"--resume {run}" in line
        assert not (run / "checkpoint.pt.tmp").exists()
        state = torch.load(run / "checkpoint.pt", weights_only=False)
        assert (state["epoch"], state["batch"]) == (1, 0)
        subprocess.run(["mount", "-o", f"remount,size={size * 4 // 1024}k", str(disk)],
                       check=True)  # room made
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
        assert _rows(run) == _rows(tmp_path / "full")
        _same_checkpoints(tmp_path / "full", run)


# ---- 5. exact means exact ------------------------------------------------------------------

def test_resuming_a_finished_run_changes_none_of_its_files(tmp_path, capsys):
    run = tmp_path / "a"
    assert main(["train", *_args(run, "--epochs", "1")]) == 0
    before = _files(run)
    time.sleep(0.05)
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        for extra in ([], ["--lr", "1e-5"], ["--threads", "2"]):
            assert main(["train", "--resume", str(run), "--quiet", *extra]) == 0
            assert "nothing to resume" in capsys.readouterr().out
            assert _files(run) == before, extra
    finally:
        torch.set_num_threads(threads)


def test_a_resume_with_another_thread_count_warns(tmp_path):
    threads = torch.get_num_threads()
    try:
        run = tmp_path / "a"
        with pytest.raises(Interrupted):
            run_training(_cfg(tmp_path, "a", threads=1, epochs=3), run, stop_after_batches=4,
                         **QUIET)
        with warnings.catch_warnings():  # the same count: no word
            warnings.simplefilter("error")
            with pytest.raises(Interrupted):
                run_training(_cfg(tmp_path, "a", threads=1, epochs=3), run, resume=True,
                             stop_after_batches=2, **QUIET)
        with pytest.warns(UserWarning, match="trained with 1 CPU thread.* resumes with 2"):
            run_training(_cfg(tmp_path, "a", threads=2, epochs=3), run, resume=True, **QUIET)
    finally:
        torch.set_num_threads(threads)


#: test_faults' SIGKILL at batch n, with the first checkpoint after ``first`` seconds
KILL_AT = """
import opzo.train as T
T.FIRST_CHECKPOINT_S = {first}
""" + KILL_AT_BATCH


def test_a_kill_before_the_first_checkpoint_says_once_what_to_do(tmp_path, capsys):
    run = tmp_path / "a"
    proc = _driver(KILL_AT.format(first=60.0, n=4), _args(run))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (run / "checkpoint.pt").exists()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "first checkpoint" in err and "--overwrite" in err and "without --resume" not in err
    assert main(["train", *_args(run)]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert "nothing to resume" in err and "--overwrite" in err and "--resume" not in err
    # the advice works: the same run again
    assert main(["train", "--config", str(run / "config.json"), "--overwrite", "--quiet"]) == 0
    run_training(_cfg(tmp_path, "full"), tmp_path / "full", **QUIET)
    assert _rows(run) == _rows(tmp_path / "full")


def test_the_first_checkpoint_comes_early_so_a_kill_costs_little(tmp_path):
    run = tmp_path / "a"
    proc = _driver(KILL_AT.format(first=0.0, n=6), _args(run))  # (the 10-minute rule stays)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["batch"]) == (0, 1)  # after the first batch, then no other
    run_training(_cfg(tmp_path, "a"), run, resume=True, **QUIET)
    run_training(_cfg(tmp_path, "full"), tmp_path / "full", **QUIET)
    assert _rows(run) == _rows(tmp_path / "full")
    _same_checkpoints(tmp_path / "full", run)


def _signal_at_step(monkeypatch, case: str, batch: int, step: int, T: int) -> None:
    """SIGTERM this process at time step ``step`` of batch ``batch`` (1-based batches), from
    inside the network's step (the neuron's step for BPTT, two layers per time step)."""
    if case == "bptt":
        cls, per_step = lif_module.LIF, 2
    else:
        cls, per_step = network_module.SpikingNet, 1
    original = cls.step
    target = ((batch - 1) * T + step) * per_step + 1
    count = {"n": 0}

    def step_(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] == target:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "step", step_)


#: a conv net with per-step batch norm: its running averages move at every step too
NORM_CASES = {"opzo-bn": dict(net="4C3-AP2-FC", norm="bn", dropout=0.0)}


@pytest.mark.parametrize("case,batch", [("opzo", 4), ("dkp", 7), ("zo", 3), ("opzo-ll-igl", 5),
                                        ("bptt", 6), ("bp-step", 4), ("opzo-sparsegrad", 8),
                                        ("opzo-bn", 3)])
def test_a_stop_mid_batch_discards_the_batch_and_resume_is_bit_exact(
        tmp_path, monkeypatch, case, batch):
    extra = CASES[case] if case in CASES else NORM_CASES[case]
    run_training(_cfg(tmp_path, "full", **extra), tmp_path / "full", **QUIET)
    # no batch is short enough (raising=False: the same test on a tree without the grace)
    monkeypatch.setattr(train_module, "STOP_GRACE_S", 0.0, raising=False)
    _signal_at_step(monkeypatch, case, batch, step=1, T=3)
    cfg = _cfg(tmp_path, "cut", **extra)
    with pytest.raises(Interrupted):
        run_training(cfg, tmp_path / "cut", **QUIET)
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["batch"]) == (0, batch - 1)  # before the cut batch
    monkeypatch.undo()
    run_training(cfg, tmp_path / "cut", resume=True, **QUIET)
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    _same_checkpoints(tmp_path / "full", tmp_path / "cut")


MARK_BATCHES = """
import opzo.learner as L
_orig, _n = L.OnlineLearner.train_batch, [0]
def _tb(self, *a, **k):
    _n[0] += 1
    print(f"BATCH {_n[0]}", flush=True)
    return _orig(self, *a, **k)
L.OnlineLearner.train_batch = _tb
"""

LONG_T = 8000  # one batch of 50 samples takes several seconds (about 4 s on one core)


def test_a_stop_request_takes_effect_within_seconds_during_a_long_batch(tmp_path):
    """(Every rule, BPTT and --update step: test_a_stop_mid_batch_discards_the_batch_...)"""
    args = ["--hidden", "48", "32", "--T", str(LONG_T), "--epochs", "1", "--batch-size", "50",
            "--limit-train", "100", "--limit-test", "10", "--eval-batch-size", "10",
            "--threads", "1", "--quiet"]
    full = tmp_path / "full"
    assert _opzo([*args, "--out", str(full)]).returncode == 0
    cut = tmp_path / "cut"
    script = textwrap.dedent(MARK_BATCHES) + "\nimport sys\nfrom opzo.cli import main\n" \
        "sys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.Popen([sys.executable, "-c", script, "train", *args, "--out", str(cut)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # batch 2 has begun (the first one took seconds)
        if line.strip() == "BATCH 2":
            break
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    took = None
    assert proc.stderr is not None
    said = []
    for line in proc.stderr:  # the checkpoint is written, the run says so (on stderr)
        said.append(line)
        if line.startswith("stopped at epoch"):
            took = time.monotonic() - sent
            break
    code = proc.wait(timeout=120)  # (then the interpreter's own exit: a second or so)
    stderr = "".join(said) + proc.stderr.read()
    assert code == 130 and took is not None, stderr
    print(f"signal to stop: {took:.2f} s; to exit: {time.monotonic() - sent:.2f} s")
    assert took < 2.5, f"the stop took {took:.1f} s"
    state = torch.load(cut / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["batch"]) == (0, 1)  # the boundary before the cut batch
    assert _opzo(["--resume", str(cut), "--quiet"]).returncode == 0
    assert _rows(cut) == _rows(full)
    _same_checkpoints(full, cut)
