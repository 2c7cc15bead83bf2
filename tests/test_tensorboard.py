"""``opzo train --tensorboard``: the event files, read back with TensorBoard's own reader.

* The per-epoch scalars are metrics.jsonl's rows, the per-batch ones average to the epoch's
  training loss and accuracy, the cosines and variances are diagnostics.jsonl's, and the
  histograms hold every weight and OPZO's M as the checkpoint has them.
* A run stopped mid-epoch and resumed has exactly one value per step, equal to the
  uninterrupted run's; after a SIGKILL the events written past the checkpoint are purged.
* Only process 0 of a distributed run writes; --overwrite removes the old run's events.
* Without the tensorboard package: one error line naming the extra to install; a run
  without the option never imports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from opzo.config import TrainConfig
from opzo.train import Interrupted, run_training

from .test_faults import KILL_AT_BATCH, QUIET, _args, _driver

pytest.importorskip("tensorboard", reason="needs pip install 'opzo[tensorboard]'")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

BATCHES = 10  # 500 samples in batches of 50


def _cfg(tmp_path: Path, name: str, **kw) -> TrainConfig:
    base = dict(hidden=[48, 32], T=3, epochs=2, batch_size=50, limit_train=500, limit_test=200,
                eval_batch_size=200, threads=1, out=str(tmp_path / name), tensorboard=True,
                tensorboard_every=1)
    base.update(kw)
    return TrainConfig.from_dict(base)


def _events(run: Path) -> EventAccumulator:
    """Every event of the run (size guidance 0: keep all, no sampling), as TensorBoard
    shows them (purges applied)."""
    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0,
                                                                    "histograms": 0})
    ea.Reload()
    return ea


def _scalars(ea: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def _histograms(ea: EventAccumulator) -> dict[str, list[tuple[int, tuple]]]:
    out = {}
    for tag in ea.Tags()["histograms"]:
        out[tag] = [(e.step, (e.histogram_value.min, e.histogram_value.max,
                              e.histogram_value.num, e.histogram_value.sum,
                              tuple(e.histogram_value.bucket))) for e in ea.Histograms(tag)]
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_scalars_and_histograms_are_the_runs_own_numbers(tmp_path):
    run = tmp_path / "a"
    run_training(_cfg(tmp_path, "a", diagnostics=True, diag_every=4, surrogate="localzo"),
                 run, **QUIET)
    scalars = _scalars(_events(run))
    rows = _jsonl(run / "metrics.jsonl")
    assert scalars["epoch"] == [(BATCHES * r["epoch"], r["epoch"]) for r in rows]
    per_epoch = {"train_loss": "loss/train", "test_loss": "loss/test",
                 "train_acc": "accuracy/train", "test_acc": "accuracy/test",
                 "synops_total": "synops/total", "lr": "optim/lr", "alpha": "noise/alpha",
                 "nonzero_grad_fraction": "localzo/nonzero_grad_fraction",
                 "epoch_time_s": "time/epoch_s"}
    for key, tag in per_epoch.items():
        assert [s for s, _ in scalars[tag]] == [BATCHES * r["epoch"] for r in rows], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([r[key] for r in rows],
                                                             rel=1e-6), tag
    for key in ("firing_rate", "synops"):
        for layer in (1, 2):
            got = [v for _, v in scalars[f"{key}/layer{layer}"]]
            assert got == pytest.approx([r[key][layer - 1] for r in rows], rel=1e-6)
    # every batch (tensorboard_every 1), steps 1..20; each epoch's batches average to its row
    assert [s for s, _ in scalars["batch/loss"]] == list(range(1, 2 * BATCHES + 1))
    for r in rows:
        epoch = slice(BATCHES * (r["epoch"] - 1), BATCHES * r["epoch"])
        losses = [v for _, v in scalars["batch/loss"][epoch]]
        accs = [v for _, v in scalars["batch/acc"][epoch]]
        assert sum(losses) / BATCHES == pytest.approx(r["train_loss"], rel=1e-5)
        assert sum(accs) / BATCHES == pytest.approx(r["train_acc"], rel=1e-5)
    # diagnostics: the cosines at the batch they were measured on, the epoch's variances
    diag = _jsonl(run / "diagnostics.jsonl")
    cosines = [d for d in diag if "cosine" in d]
    assert len(cosines) == 6  # batches 0, 4, 8 of each epoch
    for name in cosines[0]["cosine"]:
        assert scalars[f"cosine/{name}"] == [
            (BATCHES * (d["epoch"] - 1) + d["batch"] + 1, pytest.approx(d["cosine"][name]))
            for d in cosines]
    for d in (d for d in diag if "variance" in d):
        for name, value in d["variance"].items():
            assert (BATCHES * d["epoch"], pytest.approx(value, rel=1e-6)) in \
                scalars[f"variance/{name}"]
    # histograms: every parameter, and OPZO's M per layer as the checkpoint holds it
    hist = _histograms(_events(run))
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    for name, param in state["model"].items():
        if name.endswith(("weight", "bias")):
            steps = [s for s, _ in hist[f"weights/{name}"]]
            assert steps == [BATCHES, 2 * BATCHES], name
            lo, hi, num, total, _ = hist[f"weights/{name}"][-1][1]
            assert (lo, hi, num) == (pytest.approx(float(param.min())),
                                     pytest.approx(float(param.max())), param.numel())
            assert total == pytest.approx(float(param.double().sum()), rel=1e-4, abs=1e-4)
    m = state["rule"]["feedback_t"]
    for layer, block in enumerate(m.split([48, 32], dim=1), start=1):
        lo, hi, num, _, _ = hist[f"M/layer{layer}"][-1][1]
        assert (lo, hi, num) == (pytest.approx(float(block.min())),
                                 pytest.approx(float(block.max())), block.numel())
        assert float(block.abs().max()) > 0  # M has learned: the histogram is not of zeros


def _same_curves(a: Path, b: Path) -> None:
    """The same tags, steps and values (wall time per epoch aside), one value per step."""
    ea, eb = _events(a), _events(b)
    sa, sb = _scalars(ea), _scalars(eb)
    assert sorted(sa) == sorted(sb)
    for tag in sa:
        steps = [s for s, _ in sb[tag]]
        assert len(steps) == len(set(steps)), f"{tag}: a step with two values"
        if tag != "time/epoch_s":
            assert sa[tag] == sb[tag], tag
    assert _histograms(ea) == _histograms(eb)


def test_a_run_stopped_mid_epoch_and_resumed_continues_the_same_curves(tmp_path):
    run_training(_cfg(tmp_path, "full"), tmp_path / "full", **QUIET)
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        run_training(_cfg(tmp_path, "cut"), cut, stop_after_batches=13, **QUIET)
    before = _scalars(_events(cut))
    assert before["batch/loss"][-1][0] == 13  # epoch 2, batch 3
    run_training(_cfg(tmp_path, "cut"), cut, resume=True, **QUIET)
    assert len(list((cut / "tensorboard").glob("events.out.tfevents.*"))) == 2
    _same_curves(tmp_path / "full", cut)


FLUSH_EVERY_BATCH = """
import opzo.tensorboard as TB
_log = TB.TensorBoardLogger.log_batch
def _log_and_flush(self, *a, **k):  # the events of every batch reach the disk at once
    _log(self, *a, **k)
    self.flush()
TB.TensorBoardLogger.log_batch = _log_and_flush
"""


def test_events_written_after_the_checkpoint_of_a_killed_run_are_purged(tmp_path):
    run_training(_cfg(tmp_path, "full", dropout=0.2), tmp_path / "full", **QUIET)
    cut = tmp_path / "cut"
    proc = _driver(FLUSH_EVERY_BATCH + KILL_AT_BATCH.format(n=16),
                   _args(cut, "--checkpoint-every", "3", "--tensorboard",
                         "--tensorboard-every", "1"))
    assert proc.returncode < 0, proc.stderr  # SIGKILLed in batch 16
    state = torch.load(cut / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["batch"]) == (1, 3)  # global step 13
    # batches 14 and 15 were logged after the checkpoint: the resume must drop them
    assert [s for s, _ in _scalars(_events(cut))["batch/loss"]][-2:] == [14, 15]
    run_training(_cfg(tmp_path, "cut", dropout=0.2, checkpoint_every=3), cut, resume=True,
                 **QUIET)
    _same_curves(tmp_path / "full", cut)


def test_only_process_0_writes_under_torchrun(tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "opzo", "train",
         *_args(out, "--nproc", "2", "--tensorboard", "--tensorboard-every", "5", "--epochs",
                "1")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    files = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    rows = _jsonl(out / "metrics.jsonl")
    scalars = _scalars(_events(out))
    assert scalars["loss/test"] == [(BATCHES, pytest.approx(rows[0]["test_loss"], rel=1e-6))]
    assert [s for s, _ in scalars["batch/loss"]] == [5, BATCHES]


def test_overwrite_removes_the_old_runs_events(tmp_path):
    run = tmp_path / "a"
    run_training(_cfg(tmp_path, "a", epochs=2), run, **QUIET)
    run_training(_cfg(tmp_path, "a", epochs=1, seed=1), run, overwrite=True, **QUIET)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    scalars = _scalars(_events(run))
    assert [s for s, _ in scalars["batch/loss"]] == list(range(1, BATCHES + 1))
    assert scalars["loss/test"] == [
        (BATCHES, pytest.approx(_jsonl(run / "metrics.jsonl")[0]["test_loss"], rel=1e-6))]


def test_without_the_package_one_error_line_and_a_run_without_the_option_works(tmp_path):
    shim = tmp_path / "shim" / "tensorboard"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'tensorboard'\", name='tensorboard')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shim.parent), env.get("PYTHONPATH", "")])

    def train(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "opzo", "train",
                               *_args(tmp_path / "run", "--epochs", "1", *extra)],
                              capture_output=True, text=True, timeout=300, env=env)

    proc = train("--tensorboard")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "opzo: error: --tensorboard needs the tensorboard package, which is not installed: "
        'pip install "opzo[tensorboard]" (or turn the option off)']
    assert not (tmp_path / "run").exists()  # stopped before the run folder was made
    proc = train()
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "run" / "tensorboard").exists()
