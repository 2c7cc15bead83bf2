"""What a run folder promises under faults, one test per case (issue 16).

* SIGTERM / SIGINT mid-epoch, at any batch, for every rule, LL/IGL and BPTT: the run stops at
  the end of the batch; resume equals the uninterrupted run bit for bit.
* A second signal stops at once; the last checkpoint stands.
* SIGKILL at any moment: with mid-epoch checkpoints only the batches since the last one are
  lost; resume from it equals the uninterrupted run.
* SIGKILL during a checkpoint write: the previous checkpoint is whole; resume is exact.
* Two processes on one folder, two resumes of one folder: the second stops, naming the
  holder's PID; a stale lock does not block.
* A folder holding a run is never reused without --overwrite.
* Eval on another dataset stops unless --dataset names it; its output names the dataset,
  the split and the sample count.
* A test split larger than the training split: a warning on the start line.
* NaN / inf input to inference: ValueError.
* Damaged, truncated, foreign checkpoints: one ``opzo: error:`` line naming the file.
* Divergence: exit 3, the message says how to resume with a lower lr; no NaN checkpoint.
* Config files with syntax errors, torn config.json or metrics.jsonl: the file is named; a
  torn last metrics line is repaired.
* --out a file, an unwritable --out or plot --out, a folder unwritable mid-run: one error
  line naming the path.
* NaN options, a negative seed, IGL on one layer, a finished run, wall time over resumes, an
  edited config, an empty plot, a far too high lr: clear errors or warnings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import opzo.bptt as bptt_module
import opzo.learner as learner_module
import opzo.train as train_module
from opzo import SpikingMLP
from opzo.cli import main
from opzo.config import ConfigError, TrainConfig, load_config_file
from opzo.rundir import RunLock, WriteError
from opzo.train import Diverged, Interrupted, RunError, run_training

from .conftest import SHARED_DATA

QUIET = dict(progress=False, log=lambda *_: None)


def _cfg(tmp_path: Path, name: str, **kw) -> TrainConfig:
    base = dict(hidden=[48, 32], T=3, epochs=2, batch_size=50, limit_train=500, limit_test=200,
                eval_batch_size=200, threads=1, dropout=0.2, out=str(tmp_path / name))
    base.update(kw)
    return TrainConfig.from_dict(base)


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]


def _same_checkpoints(a: Path, b: Path) -> None:
    sa = torch.load(a / "checkpoint.pt", weights_only=False)
    sb = torch.load(b / "checkpoint.pt", weights_only=False)
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k

    def walk(x, y, path):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), path
        elif isinstance(x, dict):
            for k in x:
                walk(x[k], y[k], f"{path}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{path}[{i}]")

    walk(sa["rule"], sb["rule"], "rule")
    walk(sa["optimizer"]["state"], sb["optimizer"]["state"], "optimizer")
    walk(sa["rng_states"], sb["rng_states"], "rng")


def _signal_at(monkeypatch, cls, calls: set[int], times: int = 1):
    """SIGTERM this process during the given calls of ``cls.train_batch`` (1-based)."""
    original = cls.train_batch
    count = {"n": 0}

    def train_batch(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] in calls:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "train_batch", train_batch)


CASES = {
    "opzo": {},
    "dkp": {"method": "dkp"},
    "zo": {"method": "zo"},
    "opzo-ll-igl": {"local_learning": True, "igl_layer": 2},
    "bptt": {"method": "bptt"},
    "bp-step": {"method": "bp", "update": "step"},
    "opzo-sparsegrad": {"surrogate": "sparsegrad", "localzo_delta": 0.5},
}


@pytest.mark.parametrize("case,batch", [("opzo", 3), ("opzo", 10), ("opzo", 17), ("dkp", 4),
                                        ("zo", 13), ("opzo-ll-igl", 6), ("bptt", 14),
                                        ("bp-step", 2), ("opzo-sparsegrad", 7)])
def test_a_signal_mid_epoch_stops_at_the_batch_end_and_resume_is_bit_exact(
        tmp_path, monkeypatch, case, batch):
    extra = CASES[case]
    run_training(_cfg(tmp_path, "full", **extra), tmp_path / "full", **QUIET)
    cls = bptt_module.BPTTLearner if case == "bptt" else learner_module.OnlineLearner
    _signal_at(monkeypatch, cls, {batch})
    cfg = _cfg(tmp_path, "cut", **extra)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Interrupted):
        run_training(cfg, tmp_path / "cut", **QUIET)
    assert {s: signal.getsignal(s) for s in before} == before  # handlers put back
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    # 10 batches per epoch; a stop after an epoch's last batch saves (epoch, 10)
    assert (state["epoch"], state["batch"]) == ((batch - 1) // 10, (batch - 1) % 10 + 1)
    monkeypatch.undo()
    torch.manual_seed(1234)  # whatever happens in between must not matter
    run_training(cfg, tmp_path / "cut", resume=True, **QUIET)
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    _same_checkpoints(tmp_path / "full", tmp_path / "cut")


def test_a_second_signal_stops_at_once_and_the_last_checkpoint_stands(tmp_path, monkeypatch):
    _signal_at(monkeypatch, learner_module.OnlineLearner, {14}, times=2)
    with pytest.raises(Interrupted):
        run_training(_cfg(tmp_path, "a"), tmp_path / "a", **QUIET)
    state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["batch"]) == (1, 0)


def _driver(code: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run ``opzo train ARGS`` in a fresh interpreter after ``code`` (a fault injector)."""
    script = textwrap.dedent(code) + "\nimport sys\nfrom opzo.cli import main\n" \
        "sys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", script, "train", *args], capture_output=True,
                          text=True, timeout=300)


def _args(out: Path, *extra: str) -> list[str]:
    return ["--hidden", "48", "32", "--T", "3", "--epochs", "2", "--batch-size", "50",
            "--limit-train", "500", "--limit-test", "200", "--eval-batch-size", "200",
            "--threads", "1", "--quiet", "--out", str(out), *extra]


KILL_AT_BATCH = """
import os, signal
import opzo.learner as L
_orig, _n = L.OnlineLearner.train_batch, [0]
def _tb(self, *a, **k):
    _n[0] += 1
    if _n[0] == {n}:
        os.kill(os.getpid(), signal.SIGKILL)
    return _orig(self, *a, **k)
L.OnlineLearner.train_batch = _tb
"""


def test_sigkill_after_a_mid_epoch_checkpoint_loses_only_the_batches_since(tmp_path):
    run_training(_cfg(tmp_path, "full"), tmp_path / "full", **QUIET)
    proc = _driver(KILL_AT_BATCH.format(n=15), _args(tmp_path / "cut", "--checkpoint-every",
                                                      "3"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["batch"]) == (1, 3)  # batch 13 of 20, its last multiple of 3
    cfg = _cfg(tmp_path, "cut", checkpoint_every=3)
    run_training(cfg, tmp_path / "cut", resume=True, **QUIET)
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    _same_checkpoints(tmp_path / "full", tmp_path / "cut")


KILL_IN_SAVE = """
import os, signal, torch
import opzo.train as T
_save, _n = torch.save, [0]
def _half_save(obj, f, *a, **k):
    _n[0] += 1
    if _n[0] == 3:  # the third checkpoint: write half of it, then die
        import io
        buf = io.BytesIO(); _save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *a, **k)
T.torch.save = _half_save
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    run_training(_cfg(tmp_path, "full"), tmp_path / "full", **QUIET)
    proc = _driver(KILL_IN_SAVE, _args(tmp_path / "cut", "--checkpoint-every", "4"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp_path / "cut" / "checkpoint.pt.tmp").is_file()  # the torn write
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert (state["epoch"], state["batch"]) == (0, 8)  # the second checkpoint
    run_training(_cfg(tmp_path, "cut", checkpoint_every=4), tmp_path / "cut", resume=True,
                 **QUIET)
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    _same_checkpoints(tmp_path / "full", tmp_path / "cut")


def test_one_writer_per_folder_names_the_holder_and_stale_locks_do_not_block(tmp_path):
    run = tmp_path / "a"
    run.mkdir()
    lock = RunLock(run)
    try:
        with pytest.raises(RunError, match=f"PID {os.getpid()}"):
            run_training(_cfg(tmp_path, "a"), run, **QUIET)
        assert not (run / "config.json").exists()  # nothing written
    finally:
        lock.release()
    (run / ".lock").write_text("999999\n")  # left by a process killed long ago
    run_training(_cfg(tmp_path, "a", epochs=1), run, **QUIET)
    lock = RunLock(run)  # a second resume of the same folder is refused too
    try:
        with pytest.raises(RunError, match="in use by another opzo process"):
            run_training(_cfg(tmp_path, "a", epochs=1), run, resume=True, **QUIET)
    finally:
        lock.release()


def test_two_processes_racing_for_one_folder_leave_one_consistent_run(tmp_path):
    out = tmp_path / "race"
    procs = [subprocess.Popen([sys.executable, "-m", "opzo", "train", *_args(out, "--seed",
                                                                            str(seed))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (0, 1)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "in use by another opzo process" in loser or "already holds a run" in loser
    winner_seed = next(s for s, (code, _) in zip((0, 1), results) if code == 0)
    assert json.loads((out / "config.json").read_text())["seed"] == winner_seed
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["config"]["seed"] == winner_seed
    assert [r["epoch"] for r in _rows(out)] == [1, 2]


def test_a_folder_holding_a_run_is_never_reused_without_overwrite(tmp_path, capsys):
    run = tmp_path / "a"
    run_training(_cfg(tmp_path, "a", epochs=1), run, **QUIET)
    (run / "checkpoint.pt").unlink()
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(RunError, match="--overwrite"):
        run_training(_cfg(tmp_path, "a", epochs=1, seed=5), run, **QUIET)
    assert main(["train", *_args(run)[:-2], "--out", str(run), "--epochs", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before
    assert main(["train", *_args(run), "--epochs", "1", "--seed", "5", "--overwrite"]) == 0
    assert json.loads((run / "config.json").read_text())["seed"] == 5


def test_eval_names_what_it_measured_and_refuses_another_dataset(tmp_path, capsys):
    mnist, fashion = SHARED_DATA / "mnist", SHARED_DATA / "fashion-mnist"
    if not mnist.is_dir() or not fashion.is_dir():
        pytest.skip("../shared/data not present")
    run = tmp_path / "m"
    run_training(_cfg(tmp_path, "m", dataset="mnist", data_root=str(mnist), epochs=1),
                 run, **QUIET)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["dataset"], out["split"], out["samples"]) == ("mnist", "test", 200)
    assert main(["eval", str(run), "--data-root", str(fashion)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opzo: error:") and "--dataset" in err
    assert main(["eval", str(run), "--data-root", str(fashion), "--dataset",
                 "fashion-mnist"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "fashion-mnist"


def test_a_test_split_larger_than_the_training_split_is_pointed_out(tmp_path):
    lines: list[str] = []
    run_training(_cfg(tmp_path, "w", epochs=1, limit_train=100, limit_test=None), tmp_path / "w",
                 progress=False, log=lines.append)
    assert any("larger than the training split" in ln and "swapped" in ln for ln in lines)


def test_nan_or_inf_input_to_inference_raises():
    net = SpikingMLP([4, 5, 3])
    x = torch.rand(2, 4, device="cpu")
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        net(x, T=2)
    x[1, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        net.eval()(x, T=2)


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "foreign"])
def test_damaged_checkpoints_give_one_error_line_naming_the_file(tmp_path, capsys, damage):
    run = tmp_path / "a"
    run_training(_cfg(tmp_path, "a", epochs=1), run, **QUIET)
    ckpt = run / "checkpoint.pt"
    data = ckpt.read_bytes()
    if damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "garbage":
        ckpt.write_bytes(b"this is not a checkpoint" * 10)
    elif damage == "truncated":
        ckpt.write_bytes(data[: len(data) // 3])
    else:
        torch.save({"weights": torch.zeros(3)}, ckpt)
    for argv in (["train", "--resume", str(run), "--quiet"], ["eval", str(run)]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("opzo: error:") and str(ckpt) in err[0]


NAN_AFTER_BATCH = 7


def _poison_weights(monkeypatch):
    """After batch NAN_AFTER_BATCH's update, a weight becomes NaN (as an overflow would)."""
    original = learner_module.OnlineLearner.train_batch
    count = {"n": 0}

    def train_batch(self, *args, **kwargs):
        stats = original(self, *args, **kwargs)
        count["n"] += 1
        if count["n"] == NAN_AFTER_BATCH:
            with torch.no_grad():
                self.net.hidden[0].weight[0, 0] = float("nan")
        return stats

    monkeypatch.setattr(learner_module.OnlineLearner, "train_batch", train_batch)


def test_divergence_exits_3_keeps_the_last_good_checkpoint_and_says_how_to_resume(
        tmp_path, monkeypatch, capsys):
    run_training(_cfg(tmp_path, "a", epochs=1), tmp_path / "a", **QUIET)  # a good checkpoint
    _poison_weights(monkeypatch)
    with pytest.raises(Diverged, match="--lr"):  # mid-epoch checkpoint due at batch 7: refused
        run_training(_cfg(tmp_path, "b", checkpoint_every=NAN_AFTER_BATCH), tmp_path / "b",
                     **QUIET)
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    capsys.readouterr()
    monkeypatch.undo()
    _poison_weights(monkeypatch)  # counting from the CLI run's first batch
    assert main(["train", *_args(tmp_path / "c")]) == 3  # diverges in epoch 1: no checkpoint
    err = capsys.readouterr().err
    assert err.startswith("opzo: error: training diverged") and "--lr" in err
    assert "start again" in err
    with pytest.raises(Interrupted):
        run_training(_cfg(tmp_path, "d", epochs=3), tmp_path / "d", stop_after_batches=1,
                     **QUIET)
    monkeypatch.undo()
    _poison_weights(monkeypatch)
    assert main(["train", "--resume", str(tmp_path / "d"), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert f"--resume {tmp_path / 'd'} --lr" in err
    monkeypatch.undo()
    state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_resume_with_a_lower_learning_rate(tmp_path, capsys):
    run = tmp_path / "a"
    with pytest.raises(Interrupted):
        run_training(_cfg(tmp_path, "a"), run, stop_after_batches=4, **QUIET)
    assert main(["train", "--resume", str(run), "--lr", "1e-5", "--quiet"]) == 0
    rows = _rows(run)
    assert rows[0]["lr"] < 1e-5 * 1.01  # the cosine schedule, from the new base
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-5


@pytest.mark.parametrize("suffix,text", [(".toml", "epochs = [\n"), (".json", "{\"epochs\": 3,"),
                                         (".toml", "lr = 'abc'\n")])
def test_config_file_errors_name_the_file(tmp_path, suffix, text, capsys):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)):
        TrainConfig.from_dict(load_config_file(path), source=str(path))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    assert str(path) in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_torn_run_files_on_resume(tmp_path, capsys):
    run = tmp_path / "a"
    with pytest.raises(Interrupted):
        run_training(_cfg(tmp_path, "a", epochs=3), run, stop_after_batches=15, **QUIET)
    metrics = run / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"epoch": 2, "train_lo')  # a killed append
    run_training(_cfg(tmp_path, "a", epochs=3), run, resume=True, **QUIET)
    assert [r["epoch"] for r in _rows(run)] == [1, 2, 3]
    lines = metrics.read_text().splitlines()  # a damaged line in the middle
    metrics.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["epoch"], state["batch"] = 1, 0
    state["metrics_rows"] = state["metrics_rows"][:1]
    torch.save(state, run / "checkpoint.pt")  # the checkpoint's rows rebuild the file
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert [r["epoch"] for r in _rows(run)] == [1, 2, 3]
    assert metrics.read_text().splitlines()[0] == lines[0]
    metrics.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    del state["metrics_rows"]  # a checkpoint of an older opzo: the damaged line is named
    torch.save(state, run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert f"{metrics}, line 2" in capsys.readouterr().err
    (run / "config.json").write_text('{"method": "opzo", "epo')  # torn config.json
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert str(run / "config.json") in capsys.readouterr().err


def test_unusable_output_paths_give_one_error_line(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(["train", *_args(afile)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0]
    assert main(["train", *_args(Path("/proc/opzo-test-run"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("opzo: error:") and "/proc/opzo-test-run" in err[0]
    run = tmp_path / "a"
    run_training(_cfg(tmp_path, "a", epochs=1), run, **QUIET)
    pytest.importorskip("matplotlib")
    assert main(["plot", str(run), "--out", "/proc/opzo-test.png"]) == 2
    assert capsys.readouterr().err.startswith("opzo: error:")


def test_a_folder_that_becomes_unwritable_mid_run_is_named(tmp_path, monkeypatch):
    def refuse(obj, path):
        raise WriteError(path, PermissionError(13, "Permission denied", str(path)))

    monkeypatch.setattr(train_module, "atomic_save", refuse)
    with pytest.raises(RunError, match="cannot write .*checkpoint.pt: permission denied"):
        run_training(_cfg(tmp_path, "a", epochs=1), tmp_path / "a", **QUIET)


def test_bad_options_stop_before_any_folder_is_made(tmp_path, capsys):
    for flags, message in ((["--lr", "nan"], "finite"), (["--seed", "-1"], ">= 0"),
                           (["--alpha", "inf"], "finite")):
        out = tmp_path / f"r{len(flags)}{flags[0]}"
        assert main(["train", *flags, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    with pytest.raises(ConfigError, match="at least 2 hidden layers"):
        TrainConfig(hidden=[64], igl_layer=5).validate()


def test_a_finished_run_resumes_to_nothing_and_wall_time_adds_up(tmp_path):
    run = tmp_path / "a"
    with pytest.raises(Interrupted):
        run_training(_cfg(tmp_path, "a"), run, stop_after_batches=12, **QUIET)
    first = torch.load(run / "checkpoint.pt", weights_only=False)["wall_time_s"]
    assert first > 0
    summary = run_training(_cfg(tmp_path, "a"), run, resume=True, **QUIET)
    assert summary["wall_time_s"] > first
    lines: list[str] = []
    again = run_training(_cfg(tmp_path, "a"), run, resume=True, progress=False,
                         log=lines.append)
    assert any("has finished all 2 epochs" in ln for ln in lines)
    assert again == summary == json.loads((run / "summary.json").read_text())


def test_an_edited_config_is_refused_on_resume(tmp_path, capsys):
    run = tmp_path / "a"
    with pytest.raises(Interrupted):
        run_training(_cfg(tmp_path, "a"), run, stop_after_batches=4, **QUIET)
    cfg = json.loads((run / "config.json").read_text())
    cfg["epochs"] = 5
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "epochs (2 -> 5)" in err and "config.json" in err


def test_plot_of_an_empty_run_is_an_error(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "a"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 2
    assert "no finished epoch" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_a_far_too_high_learning_rate_is_warned_about(tmp_path):
    lines: list[str] = []
    run_training(_cfg(tmp_path, "a", epochs=1, lr=1e2, dropout=0.0), tmp_path / "a",
                 progress=False, log=lines.append)
    assert any("learning rate" in ln and "too high" in ln for ln in lines), lines
