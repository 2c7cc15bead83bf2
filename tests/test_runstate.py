"""One record of a run's state (opzo.train.RunState): the checkpoint is written from it and
restore reads it; the file's fields are the record's, and older checkpoints get defaults."""

from __future__ import annotations

from dataclasses import fields

import torch

from opzo.cli import main
from opzo.rundir import CHECKPOINT
from opzo.train import RunState


def test_the_checkpoint_is_the_run_state_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--hidden", "8", "--T", "2", "--limit-train", "64", "--limit-test", "32",
            "--threads", "1", "--method", "dfa", "--out", str(out), "--quiet"]
    assert main([*args, "--epochs", "1"]) == 0
    state = torch.load(out / CHECKPOINT, weights_only=False)
    assert set(state) == {f.name for f in fields(RunState)}
    st = RunState.from_dict(state)
    again = st.to_dict()
    assert list(again) == [f.name for f in fields(RunState)]
    assert all(again[k] is state[k] for k in state)  # nothing copied, nothing dropped
    assert st.epoch == 1 and st.batch == 0 and st.world_size == 1
    assert len(st.metrics_rows) == 1
    # restore reads it back: a finished run resumes to nothing, its rows kept
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    assert "has finished all 1 epochs" in capsys.readouterr().out
    st2 = RunState.from_dict(torch.load(out / CHECKPOINT, weights_only=False))
    assert st2.metrics_rows == st.metrics_rows


def test_an_older_checkpoint_gets_defaults():
    rng = torch.get_rng_state()
    st = RunState.from_dict({"model": {}, "optimizer": {"param_groups": []}, "epoch": 3,
                             "batch": 0, "config": {}, "partial": {}, "rng": rng})
    assert st.rng_states == [{"cpu": rng, "cuda": None}]
    assert (st.world_size, st.device, st.wall_time_s) == (1, "cpu", 0.0)
    assert st.metrics_rows is None and st.threads is None and st.scheduler is None
