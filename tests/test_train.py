import json

import pytest
import torch

from opzo import native
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
    assert summary["kernels"] == ("native" if native.available() else
                                  f"torch (native unavailable: {native.error()})")
    assert not list(run.glob("*.tmp"))


def test_summary_names_the_kernels_that_ran(tmp_path):
    cfg = _cfg(tmp_path, "t")
    cfg.kernels = "torch"
    assert run_training(cfg, tmp_path / "t", progress=False, log=lambda *_: None)["kernels"] \
        == "torch"
    lines: list[str] = []
    with native.unavailable("no C compiler found"), \
            pytest.warns(UserWarning, match="no C compiler found"):
        summary = run_training(_cfg(tmp_path, "n"), tmp_path / "n", progress=False,
                               log=lines.append)
    assert summary["kernels"] == "torch (native unavailable: no C compiler found)"
    assert "torch (native unavailable: no C compiler found) kernels" in lines[0]


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    quiet = dict(progress=False, log=lambda *_: None)
    run_training(_cfg(tmp_path, "a"), tmp_path / "a", **quiet)
    run_training(_cfg(tmp_path, "b"), tmp_path / "b", **quiet)
    run_training(_cfg(tmp_path, "c", seed=1), tmp_path / "c", **quiet)
    a, b, c = (_strip_time(_rows(tmp_path / n)) for n in "abc")
    assert a == b
    assert a != c


LL_IGL = {"local_learning": True, "igl_layer": 2, "hidden": [48, 32]}


@pytest.mark.parametrize("method,stop,extra", [("opzo", 3, {}), ("opzo", 4, {}), ("dkp", 5, {}),
                                               ("zo", 2, {}), ("opzo", 3, LL_IGL),
                                               ("opzo", 5, {"surrogate": "sparsegrad",
                                                            "localzo_delta": 0.5})])
def test_resume_equals_uninterrupted(tmp_path, method, stop, extra):
    quiet = dict(progress=False, log=lambda *_: None)
    cfg = _cfg(tmp_path, "full", method=method, dropout=0.2, **extra)
    run_training(cfg, tmp_path / "full", **quiet)
    cfg2 = _cfg(tmp_path, "cut", method=method, dropout=0.2, **extra)
    with pytest.raises(Interrupted):
        run_training(cfg2, tmp_path / "cut", stop_after_batches=stop, **quiet)
    torch.manual_seed(1234)  # whatever happens in between must not matter
    run_training(cfg2, tmp_path / "cut", resume=True, **quiet)
    assert _strip_time(_rows(tmp_path / "full")) == _strip_time(_rows(tmp_path / "cut"))
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for k in full["model"]:
        assert torch.equal(full["model"][k], cut["model"][k]), k
    if "local_learning" in extra:  # the local readouts resume too
        for l, r in full["rule"]["readouts"].items():
            for k, v in r.items():
                assert torch.equal(v, cut["rule"]["readouts"][l][k]), (l, k)


def test_config_errors_name_what_is_allowed(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'lamda_m'.*lambda_m"):
        TrainConfig.from_dict({"lamda_m": 0.9})
    with pytest.raises(ConfigError, match="choose one of"):
        TrainConfig.from_dict({"method": "backprop"})
    with pytest.raises(ConfigError, match="must be >= 1"):
        TrainConfig.from_dict({"T": 0})
    with pytest.raises(ConfigError, match="expects int"):
        TrainConfig.from_dict({"epochs": "many"})
    with pytest.raises(ConfigError, match="2 hidden layers; choose 2..2"):
        TrainConfig.from_dict({"hidden": [10, 10], "igl_layer": 3})
    with pytest.raises(ConfigError, match="bptt"):
        TrainConfig.from_dict({"method": "bptt", "local_learning": True})
    with pytest.raises(ConfigError, match="data_root"):
        TrainConfig.from_dict({"dataset": "mnist"})
    with pytest.raises(ConfigError, match="readout 'max' needs .* method 'bptt'"):
        TrainConfig.from_dict({"readout": "max"})
    with pytest.raises(ConfigError, match="detach_reset needs .* method 'bptt'"):
        TrainConfig.from_dict({"method": "dfa", "detach_reset": True})
    with pytest.raises(ConfigError, match="'readout_leak' applies to readout 'max'"):
        TrainConfig.from_dict({"method": "bptt", "readout_leak": 0.9})
    with pytest.raises(ConfigError, match="diagnostics"):
        TrainConfig.from_dict({"method": "bptt", "readout": "max", "diagnostics": True})


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


def test_diagnostics_are_recorded_and_do_not_change_the_run(tmp_path):
    quiet = dict(progress=False, log=lambda *_: None)
    run_training(_cfg(tmp_path, "plain", dropout=0.2), tmp_path / "plain", **quiet)
    cfg = _cfg(tmp_path, "diag", dropout=0.2, diagnostics=True, diag_every=2)
    run_training(cfg, tmp_path / "diag", **quiet)
    assert _strip_time(_rows(tmp_path / "plain")) == _strip_time(_rows(tmp_path / "diag"))
    rows = [json.loads(x) for x in (tmp_path / "diag" / "diagnostics.jsonl").read_text().split("\n")
            if x]
    cos = [r for r in rows if "cosine" in r]
    var = [r for r in rows if "variance" in r]
    assert [(r["epoch"], r["batch"]) for r in cos] == [(1, 0), (1, 2), (2, 0), (2, 2)]
    assert set(cos[0]["cosine"]) == {"hidden.0.weight", "readout.weight"}
    assert all(-1 <= v <= 1 for r in cos for v in r["cosine"].values())
    assert [r["epoch"] for r in var] == [1, 2] and all(v > 0 for v in var[0]["variance"].values())
    # the scale-free form is written too (benchmarks/run_alignment.py reads it)
    assert var[0]["relative_variance"].keys() == var[0]["variance"].keys()
    assert all(v > 0 for v in var[0]["relative_variance"].values())


@pytest.mark.parametrize("extra", [{}, {"readout": "max", "readout_leak": 0.9,
                                         "detach_reset": True}])
def test_bptt_method_trains(tmp_path, extra):
    summary = run_training(_cfg(tmp_path, "bptt", method="bptt", epochs=1, **extra),
                           tmp_path / "bptt", progress=False, log=lambda *_: None)
    assert summary["final_test_acc"] > 20


def test_sigterm_checkpoints_and_resume_matches(tmp_path):
    import os
    import signal

    quiet = dict(progress=False)
    run_training(_cfg(tmp_path, "full", epochs=3), tmp_path / "full", log=lambda *_: None,
                 **quiet)

    def log(msg):
        if msg.startswith("epoch   1/"):
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = _cfg(tmp_path, "cut", epochs=3)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted):
        run_training(cfg, tmp_path / "cut", log=log, **quiet)
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    run_training(cfg, tmp_path / "cut", resume=True, log=lambda *_: None, **quiet)
    assert _strip_time(_rows(tmp_path / "full")) == _strip_time(_rows(tmp_path / "cut"))


def test_plot_command_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    quiet = dict(progress=False, log=lambda *_: None)
    run_training(_cfg(tmp_path, "a", diagnostics=True, diag_every=2), tmp_path / "a", **quiet)
    run_training(_cfg(tmp_path, "b", method="dfa"), tmp_path / "b", **quiet)
    out = tmp_path / "fig.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert main(["plot", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err


def test_localzo_derivative_inside_opzo_trains(tmp_path):
    """A combination no paper reports: OPZO spatial credit with LocalZO local derivatives."""
    cfg = _cfg(tmp_path, "lz", surrogate="localzo", localzo_delta=0.5, localzo_m=5, epochs=4)
    summary = run_training(cfg, tmp_path / "lz", progress=False, log=lambda *_: None)
    assert summary["final_test_acc"] > 30  # chance is 10%; the sigmoid surrogate gets ~41
    # the fraction of neurons with a non-zero derivative is reported per epoch: with m = 5
    # draws and δ = 0.5 a good share of neurons, but not all, get a gradient
    fractions = [r["nonzero_grad_fraction"] for r in _rows(tmp_path / "lz")]
    assert len(fractions) == 4 and all(0.01 < f < 0.99 for f in fractions), fractions


def test_nmnist_training_from_bin_files(tmp_path):
    """N-MNIST trains from a folder of .bin files in the real format (written here)."""
    from .writers import write_nmnist_tree as _write_nmnist_tree

    _write_nmnist_tree(tmp_path / "data", {"Train": 6, "Test": 2}, count=40, t_max=15000)
    cfg = TrainConfig.from_dict(dict(dataset="nmnist", data_root=str(tmp_path / "data"), T=5,
                                     hidden=[32], epochs=2, batch_size=16, threads=1,
                                     limit_test=15))
    summary = run_training(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    rows = _rows(tmp_path / "run")
    assert len(rows) == 2 and summary["final_test_acc"] is not None
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["model"]["hidden.0.weight"].shape == (32, 2 * 34 * 34)
    with pytest.raises(ConfigError, match="frames"):
        TrainConfig.from_dict(dict(dataset="nmnist", data_root="x", encoding="rate"))


@pytest.mark.parametrize("text,argv,expect,missing", [
    # the data folder on the command line; without it the merged config is incomplete
    ('dataset = "fashion-mnist"\nencoding = "latency"\nT = 100\n', ["--data-root", "/some/dir"],
     {"dataset": "fashion-mnist", "data_root": "/some/dir", "encoding": "latency", "T": 100},
     "needs data_root"),
    # the network on the command line; a width alone scales nothing
    ('width = 0.5\ntrace = "approx_otpe"\n', ["--net", "conv5"],
     {"net": "conv5", "width": 0.5, "trace": "approx_otpe"}, "'width' scales the layers of 'net'"),
])
def test_config_file_may_leave_options_to_the_command_line(tmp_path, text, argv, expect, missing):
    import argparse

    from opzo.config import add_arguments, config_from_args

    cfg_file = tmp_path / "exp.toml"
    cfg_file.write_text(text)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(argv), str(cfg_file))
    assert {k: getattr(cfg, k) for k in expect} == expect
    with pytest.raises(ConfigError, match=missing):  # still required in the end
        config_from_args(parser.parse_args([]), str(cfg_file))
    cfg_file.write_text('encoding = "sometimes"\n')  # a bad value in the file is still caught
    with pytest.raises(ConfigError, match="not allowed"):
        config_from_args(parser.parse_args(argv), str(cfg_file))


def test_sequence_source_batches_in_order_and_checks_T():
    from opzo.data.sources import SequenceSource

    spikes = torch.arange(4 * 10 * 3, dtype=torch.float32).view(4, 10, 3)
    labels = torch.arange(10) % 3
    src = SequenceSource(spikes, labels, classes=3)
    assert (len(src), src.num_inputs) == (10, 3)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    got = list(src.batches(4, 4, permutation=perm, start_batch=1))
    assert [x.shape for x, _ in got] == [(4, 4, 3), (4, 2, 3)]
    assert torch.equal(got[0][0], spikes[:, perm[4:8]]) and torch.equal(got[1][1], labels[perm[8:]])
    assert len(src.head(6)) == 6
    with pytest.raises(ValueError, match="set T=4"):
        next(src.batches(4, 6))
    with pytest.raises(ValueError, match=r"\(T, N, F\)"):
        SequenceSource(spikes, labels[:5], classes=3)


def test_randman_config_rules():
    from opzo.config import ConfigError, TrainConfig

    cfg = TrainConfig.from_dict({"dataset": "randman-time", "T": 50})  # no data_root needed
    assert cfg.dataset == "randman-time"
    with pytest.raises(ConfigError, match="set T=50"):
        TrainConfig.from_dict({"dataset": "randman-rate", "T": 20})
    with pytest.raises(ConfigError, match="spike frames"):
        TrainConfig.from_dict({"dataset": "randman-rate", "T": 50, "encoding": "rate"})


def test_optimizer_choice_and_init_scale():
    from opzo.build import build_network, make_optimizer
    from opzo.config import TrainConfig

    for name, cls in (("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                      ("adamax", torch.optim.Adamax), ("sgd", torch.optim.SGD)):
        cfg = TrainConfig.from_dict({"optimizer": name, "lr": 0.01})
        net = build_network(cfg, 4, 2)
        opt = make_optimizer(net.parameters(), cfg)
        assert isinstance(opt, cls) and opt.param_groups[0]["lr"] == 0.01
    torch.manual_seed(3)
    plain = build_network(TrainConfig.from_dict({"hidden": [5, 6]}), 4, 2)
    torch.manual_seed(3)
    scaled = build_network(TrainConfig.from_dict({"hidden": [5, 6], "init_scale": 8.0}), 4, 2)
    for a, b in zip(plain.hidden, scaled.hidden):
        assert torch.allclose(b.weight, 8.0 * a.weight) and torch.equal(a.bias, b.bias)
    assert torch.equal(plain.readout.weight, scaled.readout.weight)


def test_evaluations_report_synaptic_operations(tmp_path, capsys):
    """metrics.jsonl, summary.json and opzo eval carry SynOps per sample, equal to a count
    made independently from the network's spikes and fan-outs (opzo.energy)."""
    from opzo.build import build_network, make_source
    from opzo.energy import count_synops

    cfg = _cfg(tmp_path, "s", epochs=1, hidden=[40, 24])
    summary = run_training(cfg, tmp_path / "s", progress=False, log=lambda *_: None)
    row = _rows(tmp_path / "s")[-1]
    test = make_source(cfg, "test")
    net = build_network(cfg, test.input_shape, test.classes)
    net.load_state_dict(torch.load(tmp_path / "s" / "checkpoint.pt",
                                   weights_only=False)["model"])
    x = torch.cat([x for x, _ in test.batches(1000, cfg.T)])
    expected = count_synops(net, x, cfg.T)
    assert row["synops"] == pytest.approx(expected["synops"], abs=0.1)
    assert row["synops_total"] == pytest.approx(expected["synops_total"], abs=0.1)
    assert summary["synops_total"] == row["synops_total"] > 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "s")]) == 0
    assert json.loads(capsys.readouterr().out)["synops_total"] == row["synops_total"]


def test_freeze_m_after_stops_updating_m_but_not_the_weights(tmp_path):
    """OPZO paper Table 9's ablation: M fixed after epoch 1 (also under LL/IGL's second M)."""
    quiet = dict(progress=False, log=lambda *_: None)

    def feedback(name, **kw):
        run_training(_cfg(tmp_path, name, **kw), tmp_path / name, **quiet)
        state = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)
        return state["model"], state["rule"]

    extra = {"local_learning": True, "igl_layer": 2, "hidden": [32, 24]}
    m1, r1 = feedback("one", epochs=1, **extra)
    m2, r2 = feedback("frozen", epochs=2, freeze_m_after=1, **extra)
    m3, r3 = feedback("free", epochs=2, **extra)
    assert torch.equal(r1["inner"]["feedback_t"], r2["inner"]["feedback_t"])
    assert torch.equal(r1["igl"]["feedback_t"], r2["igl"]["feedback_t"])
    assert not torch.equal(r1["inner"]["feedback_t"], r3["inner"]["feedback_t"])
    assert not torch.equal(m1["hidden.0.weight"], m2["hidden.0.weight"])  # weights still learn
