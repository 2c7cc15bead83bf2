import json

import pytest
import torch

from opzo.cli import main
from opzo.config import ConfigError, TrainConfig, load_config_file
from opzo.train import Interrupted, run_training


def _cfg(tmp_path, name, **kw):
    base = dict(hidden=[48], T=3, epochs=2, batch_size=128, limit_train=512, limit_test=200,
                eval_batch_size=200, threads=1, out=str(tmp_path / name))
    base.update(kw)
    return TrainConfig.from_dict(base)


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _strip_time(rows):
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]


def test_run_folder_contents(tmp_path):
    cfg = _cfg(tmp_path, "a")
    summary = run_training(cfg, tmp_path / "a", progress=False, log=lambda *_: None)
    run = tmp_path / "a"
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "summary.json",
                                               "checkpoint.pt"}
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict()
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert summary["final_test_acc"] == rows[-1]["test_acc"]
    assert json.loads((run / "summary.json").read_text())["final_test_acc"] == rows[-1]["test_acc"]
    assert not list(run.glob("*.tmp"))


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    quiet = dict(progress=False, log=lambda *_: None)
    run_training(_cfg(tmp_path, "a"), tmp_path / "a", **quiet)
    run_training(_cfg(tmp_path, "b"), tmp_path / "b", **quiet)
    run_training(_cfg(tmp_path, "c", seed=1), tmp_path / "c", **quiet)
    a, b, c = (_strip_time(_rows(tmp_path / n)) for n in "abc")
    assert a == b
    assert a != c


@pytest.mark.parametrize("method,stop", [("opzo", 3), ("opzo", 4), ("dkp", 5), ("zo", 2)])
def test_resume_equals_uninterrupted(tmp_path, method, stop):
    quiet = dict(progress=False, log=lambda *_: None)
    cfg = _cfg(tmp_path, "full", method=method, dropout=0.2)
    run_training(cfg, tmp_path / "full", **quiet)
    cfg2 = _cfg(tmp_path, "cut", method=method, dropout=0.2)
    with pytest.raises(Interrupted):
        run_training(cfg2, tmp_path / "cut", stop_after_batches=stop, **quiet)
    torch.manual_seed(1234)  # whatever happens in between must not matter
    run_training(cfg2, tmp_path / "cut", resume=True, **quiet)
    assert _strip_time(_rows(tmp_path / "full")) == _strip_time(_rows(tmp_path / "cut"))
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for k in full["model"]:
        assert torch.equal(full["model"][k], cut["model"][k]), k


def test_config_errors_name_what_is_allowed(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'lamda_m'.*lambda_m"):
        TrainConfig.from_dict({"lamda_m": 0.9})
    with pytest.raises(ConfigError, match="choose one of"):
        TrainConfig.from_dict({"method": "backprop"})
    with pytest.raises(ConfigError, match="must be >= 1"):
        TrainConfig.from_dict({"T": 0})
    with pytest.raises(ConfigError, match="expects int"):
        TrainConfig.from_dict({"epochs": "many"})
    with pytest.raises(ConfigError, match="data_root"):
        TrainConfig.from_dict({"dataset": "mnist"})


def test_toml_config_and_cli_override(tmp_path, capsys):
    path = tmp_path / "exp.toml"
    path.write_text('method = "dfa"\nhidden = [32]\nT = 2\nepochs = 1\nlimit-train = 256\n'
                    'limit_test = 100\nthreads = 1\n')
    assert load_config_file(path)["method"] == "dfa"
    out = tmp_path / "run"
    code = main(["train", "--config", str(path), "--epochs", "2", "--out", str(out), "--quiet"])
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "dfa" and cfg["epochs"] == 2 and cfg["hidden"] == [32]
    assert "final test accuracy" in capsys.readouterr().out
    # a second run into the same folder is refused, --resume of a finished run is a no-op
    assert main(["train", "--config", str(path), "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["eval", str(out)]) == 0
    assert '"acc"' in capsys.readouterr().out


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rate = 0.1\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown key 'learning_rate'" in capsys.readouterr().err
    assert main(["train", "--dataset", "mnist", "--out", str(tmp_path / "x")]) == 2
    assert "never downloads" in capsys.readouterr().err
    missing = tmp_path / "nothing"
    missing.mkdir()
    assert main(["train", "--dataset", "mnist", "--data-root", str(missing),
                 "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "train-images-idx3-ubyte" in err
    with pytest.raises(SystemExit):
        main(["train", "--method", "backprop"])
    assert "invalid choice" in capsys.readouterr().err
