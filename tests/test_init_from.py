"""Starting a run from trained weights: a run folder, a checkpoint or a NIR file (--init-from)."""

from __future__ import annotations

import json

import pytest
import torch

from opzo import SpikingMLP
from opzo.build import load_weights
from opzo.cli import main
from opzo.config import TrainConfig
from opzo.train import Interrupted, run_training

QUIET = dict(progress=False, log=lambda *_: None)


def _cfg(tmp_path, name, **kw) -> TrainConfig:
    base = dict(hidden=[48], T=3, epochs=1, batch_size=50, limit_train=400, limit_test=200,
                eval_batch_size=200, threads=1, reset="zero", out=str(tmp_path / name))
    base.update(kw)
    return TrainConfig.from_dict(base)


def _model(run):
    return torch.load(run / "checkpoint.pt", weights_only=False)["model"]


def test_a_run_starts_from_another_runs_weights_with_a_fresh_optimizer(tmp_path):
    a = run_training(_cfg(tmp_path, "a", epochs=2), tmp_path / "a", **QUIET)
    # lr 0: the weights stay those loaded, so the accuracy is the first run's
    b = run_training(_cfg(tmp_path, "b", lr=0.0, init_from=str(tmp_path / "a")),
                     tmp_path / "b", **QUIET)
    assert b["final_test_acc"] == a["final_test_acc"]
    for k, v in _model(tmp_path / "a").items():
        assert torch.equal(v, _model(tmp_path / "b")[k]), k
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert state["optimizer"]["state"][0]["step"] == 8  # fresh: this run's 8 steps only
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["init_from"] == str(tmp_path / "a")
    # from the checkpoint file itself, and a fine-tune that moves
    c = run_training(_cfg(tmp_path, "c", init_from=str(tmp_path / "a" / "checkpoint.pt")),
                     tmp_path / "c", **QUIET)
    assert c["final_test_acc"] > 25  # learned from a start far above chance (10%)
    assert not torch.equal(_model(tmp_path / "c")["hidden.0.weight"],
                           _model(tmp_path / "a")["hidden.0.weight"])


def test_a_network_that_does_not_fit_names_the_layer_and_both_shapes(tmp_path, capsys):
    run_training(_cfg(tmp_path, "a"), tmp_path / "a", **QUIET)
    net = SpikingMLP([784, 32, 10])
    with pytest.raises(ValueError, match=r"hidden\.0\.weight has shape \(48, 784\) there and "
                                         r"\(32, 784\) here"):
        load_weights(net, tmp_path / "a")
    with pytest.raises(ValueError, match="it has no hidden.1.weight"):
        load_weights(SpikingMLP([784, 48, 48, 10]), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(net, tmp_path / "nothing")
    assert main(["train", "--hidden", "32", "--epochs", "1", "--limit-train", "100",
                 "--quiet", "--out", str(tmp_path / "x"), "--init-from",
                 str(tmp_path / "a")]) == 2
    assert "(48, 784) there and (32, 784) here" in capsys.readouterr().err


def test_a_nir_file_gives_the_network_and_its_weights_and_resume_is_exact(tmp_path):
    pytest.importorskip("nir")
    a = run_training(_cfg(tmp_path, "a", epochs=2), tmp_path / "a", **QUIET)
    model = tmp_path / "a.nir"
    assert main(["export", str(tmp_path / "a"), "--out", str(model)]) == 0
    # another config net: the file's network is used
    b = run_training(_cfg(tmp_path, "b", hidden=[16], lr=0.0, init_from=str(model)),
                     tmp_path / "b", **QUIET)
    assert b["final_test_acc"] == a["final_test_acc"]
    full = run_training(_cfg(tmp_path, "full", epochs=2, method="bp", init_from=str(model)),
                        tmp_path / "full", **QUIET)
    cut_cfg = _cfg(tmp_path, "cut", epochs=2, method="bp", init_from=str(model))
    with pytest.raises(Interrupted):
        run_training(cut_cfg, tmp_path / "cut", stop_after_batches=5, **QUIET)
    cut = run_training(cut_cfg, tmp_path / "cut", resume=True, **QUIET)
    assert cut["final_test_acc"] == full["final_test_acc"]
    for k, v in _model(tmp_path / "full").items():
        assert torch.equal(v, _model(tmp_path / "cut")[k]), k
