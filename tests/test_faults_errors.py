"""Errors, not tracebacks, everywhere (issue 21, section 6): one test per case.

* ``opzo export`` of a damaged or foreign checkpoint, ``eval``/``export``/``plot`` of a missing
  folder or of a file: one ``opzo: error:`` line naming the file.
* A checkpoint field of the wrong type (for eval, export, resume, --init-from): one line
  naming the field.
* ``opzo plot`` of a run folder whose name is not UTF-8: the plot is drawn.
* Ctrl-C (SIGINT) during start-up (importing torch, building the data) and during eval: one
  line, exit 130, no traceback.
* A config file with binary bytes: named. Negative or NaN ``opzo eval`` chip options: refused,
  each naming itself.
* MNIST asked for, Fashion-MNIST given (and the reverse): refused, naming what the folder
  holds. A built-in dataset with ``--data-root``: refused (train and eval); eval never reports
  a data root it did not read.
* The Python API: labels that are not int64, inputs of another dtype than the network's, an
  empty batch, an optimizer holding none of the network's parameters: a ValueError naming
  the argument. ``load_dataset`` of an unknown name lists every dataset.
* Stop and warning lines go to stderr, progress to stdout; an argparse error is one line with
  a pointer to ``--help``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from opzo.build import build_learner, build_network
from opzo.cli import main
from opzo.config import TrainConfig
from opzo.data import DATASETS, DatasetError, load_dataset, load_mnist_like
from opzo.data.datasets import KNOWN_LABELS, labels_digest
from opzo.learner import evaluate_batch
from opzo.losses import InstantLoss
from opzo.pzo import PZOFeedback, UntruncatedLearner
from opzo.train import run_training

from .conftest import SHARED_DATA

QUIET = dict(progress=False, log=lambda *_: None)
SRC = Path(__file__).resolve().parents[1] / "src"


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(hidden=[48, 32], T=3, epochs=1, batch_size=50, limit_train=500, limit_test=200,
                eval_batch_size=200, threads=1, reset="zero", out=str(out))
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished tiny run (reset to zero, so that it exports exactly)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    run_training(_cfg(run), run, **QUIET)
    return run


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    (to / ".lock").unlink(missing_ok=True)
    return to


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def _opzo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m opzo ARGS`` in a fresh interpreter (this tree's opzo)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH",
                                                                                  "")]))
    return subprocess.run([sys.executable, "-m", "opzo", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


# ---- damaged, foreign and mistyped checkpoints ---------------------------------------------

@pytest.mark.parametrize("damage", ["garbage", "foreign", "not-a-dict"])
def test_export_of_a_damaged_or_foreign_checkpoint_is_one_line_naming_it(
        trained, tmp_path, capsys, damage):
    run = _copy(trained, tmp_path / "run")
    ckpt = run / "checkpoint.pt"
    if damage == "garbage":  # UnpicklingError / a bare ValueError from torch.load
        ckpt.write_bytes(b"garbage\n" * 8)
    elif damage == "foreign":  # a torch file without 'config' (KeyError before)
        torch.save({"weights": torch.zeros(3)}, ckpt)
    else:
        torch.save([1, 2, 3], ckpt)
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "m.nir")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("opzo: error:") and str(ckpt) in line
    assert not (tmp_path / "m.nir").exists()
    # a folder that does not exist, or a file given as the folder: one line, the path named
    afile = tmp_path / "afile"
    afile.write_text("x")
    for where in (tmp_path / "missing", afile):
        for argv in (["export", str(where), "--out", str(tmp_path / "m.nir")],
                     ["eval", str(where)], ["plot", str(where), "--out", str(tmp_path / "p.png")]):
            assert main(argv) == 2, argv
            line = _one_line(capsys.readouterr().err)
            assert line.startswith("opzo: error:") and str(where) in line


BAD_FIELDS = {
    "epoch": "'1'",
    "batch": "None",
    "model": "[1, 2]",
    "config": "['method', 'opzo']",
    "optimizer": "3",
    "data": "7",
    "partial": "None",
    "rng_states": "3",
    "world_size": "'two'",
    "metrics_rows": "'rows'",
    "diag_rows": "[1, 2]",
    "chip": "{'grid': 4}",
}


@pytest.mark.parametrize("field", sorted(BAD_FIELDS))
def test_a_checkpoint_field_of_the_wrong_type_is_named(trained, tmp_path, capsys, field):
    run = _copy(trained, tmp_path / "run")
    ckpt = run / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    state[field] = eval(BAD_FIELDS[field])
    torch.save(state, ckpt)
    capsys.readouterr()
    for argv in (["eval", str(run)], ["export", str(run), "--out", str(tmp_path / "m.nir")],
                 ["train", "--resume", str(run), "--quiet"]):
        assert main(argv) == 2, argv
        line = _one_line(capsys.readouterr().err)
        assert line.startswith("opzo: error:") and str(ckpt) in line
        assert f"field {field!r}" in line, line
    if field == "model":  # --init-from reads the weights alone
        out = tmp_path / "new"
        assert main(["train", "--hidden", "48", "32", "--T", "3", "--epochs", "1",
                     "--limit-train", "100", "--limit-test", "100", "--quiet",
                     "--init-from", str(run), "--out", str(out)]) == 2
        assert str(ckpt) in _one_line(capsys.readouterr().err)


def test_a_checkpoint_without_its_partial_statistics_is_one_line_on_resume(trained, tmp_path,
                                                                            capsys):
    run = _copy(trained, tmp_path / "run")
    ckpt = run / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    del state["partial"]
    torch.save(state, ckpt)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("opzo: error:") and "partial" in line and str(ckpt) in line


def test_plot_and_eval_of_a_run_folder_whose_name_is_not_utf8(trained, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    name = os.fsdecode(os.fsencode(str(tmp_path / "run")) + b"\xff")  # as sys.argv holds it
    try:
        _copy(trained, Path(name))
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses file names that are not UTF-8")
    out = tmp_path / "p.png"
    capsys.readouterr()
    assert main(["plot", name, "--out", str(out)]) == 0
    assert out.stat().st_size > 1000 and not list(tmp_path.glob(".*.tmp"))
    capsys.readouterr()
    assert main(["eval", name]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 200


# ---- Ctrl-C outside the training loop ------------------------------------------------------

TRAIN = ["train", "--hidden", "48", "32", "--T", "3", "--epochs", "1", "--limit-train", "500",
         "--limit-test", "200", "--threads", "1", "--quiet"]


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child: SIGINT's default action, as a program started from a terminal has it.
    A test run started in the background by a non-interactive shell (``cmd &``) inherits
    SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_after(delay: float, args: list[str]) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH",
                                                                                  "")]))
    proc = subprocess.Popen([sys.executable, "-m", "opzo", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_ctrl_c_as_in_a_terminal)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5])
def test_sigint_during_start_up_is_one_line_and_exit_130(tmp_path, delay):
    """Ctrl-C while Python imports torch and opzo, or builds the data: before, a traceback
    of the import and the status of a process killed by SIGINT."""
    code, out, err = _interrupt_after(delay, [*TRAIN, "--out", str(tmp_path / "run")])
    assert code == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    if "opzo: opzo on" not in out:  # stopped before the training loop: one line
        assert _one_line(err).startswith("opzo")
    assert not (tmp_path / "run" / "checkpoint.pt").exists() or "stopped" in err


#: ``python -m opzo`` (what runpy does for -m) after a fault injector
DRIVER = """
import os, runpy, signal, sys
{inject}
runpy.run_module("opzo", run_name="__main__", alter_sys=True)
"""

#: a real SIGINT while the data are read (before training) or while eval evaluates
SIGINT_IN = """
import {module} as _m
_orig = _m.{name}
def _interrupted(*a, **k):
    os.kill(os.getpid(), signal.SIGINT)
    import time; time.sleep(5)
    return _orig(*a, **k)
_m.{name} = _interrupted
"""


@pytest.mark.parametrize("where,module,name,args", [
    ("data", "opzo.data.datasets", "load_embedded_mnist", TRAIN),
    ("eval", "opzo.train", "evaluate", ["eval"]),
])
def test_sigint_while_building_the_data_or_evaluating_is_one_line(
        trained, tmp_path, where, module, name, args):
    script = DRIVER.format(inject=textwrap.dedent(SIGINT_IN.format(module=module, name=name)))
    argv = [*args, "--out", str(tmp_path / "run")] if where == "data" else [*args, str(trained)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH",
                                                                                  "")]))
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                          timeout=120, env=env, preexec_fn=_ctrl_c_as_in_a_terminal)
    assert proc.returncode == 130, proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith(f"opzo {args[0]}: interrupted (SIGINT)"), line
    if where == "data":
        assert not (tmp_path / "run").exists()  # the data come before the folder


# ---- options and input files ---------------------------------------------------------------

@pytest.mark.parametrize("suffix,data", [(".toml", b"epochs = 1\n\xff\x00\n"),
                                         (".json", b'{"epochs": 1, "x": "\xff\x00"}')])
def test_a_config_file_with_binary_bytes_names_the_file(tmp_path, capsys, suffix, data):
    path = tmp_path / f"bin{suffix}"
    path.write_bytes(data)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("opzo: error:") and str(path) in line and "UTF-8" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags,option", [
    (["--hw-weight-noise", "-2"], "--hw-weight-noise"),
    (["--hw-noise", "0.1", "--hw-noise-kind", "fixed", "--hw-weight-noise", "-2"],
     "--hw-weight-noise"),
    (["--hw-noise", "0.1", "--hw-noise-kind", "fixed", "--hw-weight-noise", "nan"],
     "--hw-weight-noise"),
    (["--hw-repeats", "0"], "--hw-repeats"),
    (["--hw-noise", "0.1", "--hw-repeats", "-3"], "--hw-repeats"),
    (["--hw-noise", "-1"], "--hw-noise"),
    (["--hw-noise", "nan"], "--hw-noise"),
    (["--hw-noise", "inf"], "--hw-noise"),
    (["--hw-noise", "0.1", "--hw-seed", "-1"], "--hw-seed"),
])
def test_eval_refuses_negative_or_nan_chip_options(trained, capsys, flags, option):
    capsys.readouterr()
    assert main(["eval", str(trained), *flags]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"opzo: error: {option} ") and ">= " in line, line


def test_argparse_errors_are_one_line_with_a_pointer_to_help(capsys):
    for argv, helped in ((["train", "--epochs", "x"], "opzo train --help"),
                         (["train", "--method", "backprop"], "opzo train --help"),
                         (["eval"], "opzo eval --help"), ([], "opzo --help"),
                         (["export", "run"], "opzo export --help"),
                         (["cost", "--bogus"], "opzo cost --help")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        line = _one_line(capsys.readouterr().err)
        assert line.startswith("opzo: error:") and helped in line, line


# ---- data that are not what they are called -----------------------------------------------

def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


def test_the_known_label_digests_are_those_of_the_official_files():
    for name in ("mnist", "fashion-mnist"):
        for split in ("train", "test"):
            labels = load_mnist_like(_shared(name), split, name).labels
            assert labels_digest(labels) == KNOWN_LABELS[(name, split)]


@pytest.mark.parametrize("asked,given", [("mnist", "fashion-mnist"), ("fashion-mnist", "mnist")])
def test_a_folder_of_another_known_dataset_is_refused(tmp_path, capsys, asked, given):
    out = tmp_path / "run"
    capsys.readouterr()
    assert main([*TRAIN, "--dataset", asked, "--data-root", str(_shared(given)),
                 "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    pretty = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
    assert line.startswith("opzo: error:") and str(_shared(given)) in line
    assert f"holds {pretty[given]}" in line and f"--dataset {given}" in line
    assert not out.exists()
    with pytest.raises(DatasetError, match=f"holds {pretty[given]}"):
        load_dataset(asked, _shared(given), "test")


def test_a_builtin_dataset_with_a_data_root_is_refused_and_never_reported(
        trained, tmp_path, capsys):
    folder = tmp_path / "some-folder"
    folder.mkdir()
    out = tmp_path / "run"
    capsys.readouterr()
    assert main([*TRAIN, "--data-root", str(folder), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "embedded-mnist" in line and "data_root" in line and not out.exists()
    assert main(["eval", str(trained), "--data-root", str(folder)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("opzo: error: --data-root") and "embedded-mnist" in line
    # a run that recorded a data root it never read (as opzo train allowed): not reported
    old = _copy(trained, tmp_path / "old")
    state = torch.load(old / "checkpoint.pt", weights_only=False)
    state["config"]["data_root"] = str(folder)
    torch.save(state, old / "checkpoint.pt")
    assert main(["eval", str(old)]) == 0
    assert json.loads(capsys.readouterr().out)["data_root"] is None


# ---- the Python API ------------------------------------------------------------------------

def _learner(kind: str):
    torch.manual_seed(0)
    cfg = TrainConfig(hidden=[5], T=3, method="bp" if kind == "online" else "bptt")
    net = build_network(cfg, (6,), 3)
    if kind == "pzo":
        return net, UntruncatedLearner(net, PZOFeedback(), steps=3)
    return net, build_learner(cfg, net, InstantLoss())


X = torch.rand(4, 6)
Y = torch.tensor([0, 1, 2, 1])
API_CASES = {
    "float labels": (X, Y.float(), "y"),
    "int32 labels": (X, Y.int(), "y"),
    "float64 input": (X.double(), Y, "x"),
    "float16 input": (X.half(), Y, "x"),
    "integer input": ((X * 3).long(), Y, "x"),
    "empty batch": (X[:0], Y[:0], "x"),
    "foreign optimizer": (X, Y, "optimizer"),
}


@pytest.mark.parametrize("kind", ["online", "bptt", "pzo"])
@pytest.mark.parametrize("case", sorted(API_CASES))
def test_the_python_api_names_the_argument_that_does_not_fit(kind, case):
    x, y, argument = API_CASES[case]
    net, learner = _learner(kind)
    params = torch.nn.Linear(2, 2).parameters() if argument == "optimizer" else net.parameters()
    opt = torch.optim.SGD(params, lr=0.5)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        learner.train_batch(x, y, opt, T=3)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    # int64 labels and float32 inputs train
    learner.train_batch(X, Y, torch.optim.SGD(net.parameters(), lr=0.5), T=3)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_inference_names_the_argument_that_does_not_fit():
    net, _ = _learner("online")
    with pytest.raises(ValueError, match="^y .*int64"):
        evaluate_batch(net, X, Y.int(), InstantLoss(), T=3)
    with pytest.raises(ValueError, match="^x .*float64"):
        net(X.double(), T=3)
    assert evaluate_batch(net, X, Y, InstantLoss(), T=3).count == 4


def test_load_dataset_of_an_unknown_name_lists_every_dataset():
    with pytest.raises(DatasetError) as err:
        load_dataset("bogus")
    assert all(name in str(err.value) for name in DATASETS)
    with pytest.raises(DatasetError, match="make_source"):
        load_dataset("cifar10")


# ---- where the lines go --------------------------------------------------------------------

STOP_AT_BATCH = """
import os, signal
import opzo.learner as _L
_orig, _n = _L.OnlineLearner.train_batch, [0]
def _tb(self, *a, **k):
    _n[0] += 1
    if _n[0] == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return _orig(self, *a, **k)
_L.OnlineLearner.train_batch = _tb
"""


def test_stop_and_warning_lines_go_to_stderr_progress_to_stdout(tmp_path):
    script = DRIVER.format(inject=textwrap.dedent(STOP_AT_BATCH))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH",
                                                                                  "")]))
    # --limit-test above --limit-train: the warning about swapped splits
    argv = [*TRAIN, "--limit-train", "100", "--limit-test", "200", "--batch-size", "20",
            "--out", str(tmp_path / "run")]
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 130, proc.stderr
    assert "opzo: opzo on embedded-mnist" in proc.stdout  # progress: stdout
    for line in ("SIGTERM: stopping at a batch boundary", "stopped at epoch 1, batch 3",
                 "warning: the test split"):
        assert line in proc.stderr and line not in proc.stdout, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
