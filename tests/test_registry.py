"""The registries: every kind of part is named once, and the CLI, the config's checks and the
builders read it, so a part registered with one line is usable everywhere."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import warnings
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

from opzo import cli, deprecation
from opzo.build import build_network, build_rule, make_source
from opzo.config import ConfigError, TrainConfig, add_arguments, config_from_args
from opzo.data import DATASETS
from opzo.network import SpikingMLP, SpikingNet
from opzo.neurons import LIF, NEURONS, Neuron, fire, lif_step
from opzo.neurons.base import NEURON_OPTIONS
from opzo.pzo import UNTRUNCATED_METHODS
from opzo.registry import Option, Registry
from opzo.rules import DFA, RULES
from opzo.surrogate import SURROGATES, SigmoidSurrogate
from opzo.traces import TRACES, trace_names
from opzo.train import run_training


def test_registry_rejects_duplicates_unknown_traits_and_unknown_names():
    reg: Registry = Registry("widget", shiny=False)
    reg.register("a", int, "an a")
    reg.register("b", float, shiny=True)
    assert list(reg) == ["a", "b"] and len(reg) == 2 and "a" in reg
    assert reg["b"].shiny is True and reg["a"].shiny is False
    assert reg.names(shiny=True) == ("b",)
    assert reg.build("a", "7") == 7
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", str)
    with pytest.raises(ValueError, match="unknown trait"):
        reg.register("c", str, colour="red")
    with pytest.raises(ValueError, match=r"unknown widget 'z'; choose one of \['a', 'b'\]"):
        reg["z"]
    with pytest.raises(AttributeError, match="no trait"):
        reg["a"].colour  # noqa: B018
    reg.unregister("a")
    assert list(reg) == ["b"]


def _choices(name: str) -> list[str]:
    field = next(f for f in fields(TrainConfig) if f.name == name)
    return list(field.metadata["choices"])


def test_every_option_of_a_kind_offers_exactly_its_registry():
    assert _choices("neuron") == list(NEURONS)
    # the spatial rules, BPTT and Table 13's untruncated methods (opzo.pzo)
    assert _choices("method") == [*RULES, "bptt", *UNTRUNCATED_METHODS]
    assert _choices("surrogate") == list(SURROGATES)
    assert _choices("dataset") == list(DATASETS)
    assert _choices("trace") == [*TRACES, *(f"f_{n}" for n in TRACES)] == list(trace_names())
    helps = {f.name: f.metadata["help"] for f in fields(TrainConfig)}
    for option, registry in (("neuron", NEURONS), ("method", RULES), ("surrogate", SURROGATES),
                             ("dataset", DATASETS), ("trace", TRACES)):
        for name in registry:  # every entry is named and described in --help
            assert f"{name}: {registry[name].help}" in helps[option]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    usage = parser.format_usage()
    assert all(name in usage for name in [*NEURONS, *RULES, *SURROGATES, *DATASETS])


class _LoudLIF(LIF):
    """A neuron defined outside the package: LIF under another name."""

    name = "loud-lif"


class _TwiceDFA(DFA):
    """A rule defined outside the package: DFA with twice the feedback."""

    name = "dfa2"

    def deltas(self, ctx):
        return [2.0 * d for d in super().deltas(ctx)]


class _WideSigmoid(SigmoidSurrogate):
    name = "wide-sigmoid"

    @classmethod
    def from_config(cls, cfg):
        return cls(a=4 * cfg.sigmoid_a)


def _tiny_mnist(cfg, split):
    """A dataset defined outside the package: 64 / 32 samples of the embedded MNIST."""
    source = DATASETS["embedded-mnist"].factory(replace(cfg, dataset="embedded-mnist"), split)
    return source.head(64 if split == "train" else 32)


@pytest.fixture
def registered():
    """Register one part of each kind with its one line; remove them afterwards."""
    lines = [(NEURONS, "loud-lif", _LoudLIF, {}), (RULES, "dfa2", _TwiceDFA, {}),
             (SURROGATES, "wide-sigmoid", _WideSigmoid, {}),
             (DATASETS, "tiny-mnist", _tiny_mnist, {"builtin": True})]
    for registry, name, factory, traits in lines:
        registry.register(name, factory, f"test part {name}", **traits)
    try:
        yield
    finally:
        for registry, name, _, _ in lines:
            registry.unregister(name)


def test_a_part_registered_with_one_line_trains_from_the_command_line(registered, tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--neuron", "loud-lif", "--method", "dfa2", "--surrogate",
                              "wide-sigmoid", "--dataset", "tiny-mnist", "--hidden", "16",
                              "--epochs", "1", "--T", "2", "--batch-size", "32"])
    cfg = config_from_args(args, None)
    assert len(make_source(cfg, "train")) == 64
    summary = run_training(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    assert summary["final_test_acc"] is not None
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["neuron"], saved["method"], saved["surrogate"], saved["dataset"]) == (
        "loud-lif", "dfa2", "wide-sigmoid", "tiny-mnist")
    assert type(build_rule(cfg)) is _TwiceDFA
    net = build_network(cfg, (1, 28, 28), 10)
    assert type(net.neuron) is _LoudLIF and net.surrogate.a == 4 * cfg.sigmoid_a


def test_traits_drive_the_config_checks(registered):
    with pytest.raises(ConfigError, match="needs data_root"):
        TrainConfig(dataset="mnist").validate()
    TrainConfig(dataset="tiny-mnist").validate()  # builtin: no data_root
    DATASETS.register("tiny-vectors", _tiny_mnist, vectors=True, builtin=True, steps=3)
    try:
        with pytest.raises(ConfigError, match="has 3 time steps"):
            TrainConfig(dataset="tiny-vectors", T=4).validate()
        with pytest.raises(ConfigError, match="vectors of input neurons"):
            TrainConfig(dataset="tiny-vectors", T=3, net="4C3-FC").validate()
    finally:
        DATASETS.unregister("tiny-vectors")
    with pytest.raises(ConfigError, match="not allowed"):
        TrainConfig(dataset="tiny-vectors").validate()


def test_the_first_error_reported_is_the_one_to_fix_first():
    # bptt takes no IGL at all: saying the IGL layer is out of range would mislead
    with pytest.raises(ConfigError, match="'bptt' takes neither"):
        TrainConfig(method="bptt", igl_layer=3, hidden=[10, 10]).validate()
    with pytest.raises(ConfigError, match="choose 2..2"):
        TrainConfig(igl_layer=3, hidden=[10, 10]).validate()


# -- options belong to their part (issue 22 item 4) ---------------------------------------


@dataclasses.dataclass(frozen=True)
class _QIF(Neuron):
    """A quadratic integrate-and-fire neuron defined outside the package, with one parameter
    of its own: u[t+1] = λ(u[t] − V_th s[t]) + c u[t]² + I[t+1], s = H(u − V_th)."""

    lam: float = 0.5
    v_th: float = 1.0
    reset: str = "subtract"
    qif_param: float = 0.1

    name = "qif"
    options = (*NEURON_OPTIONS,
               Option("qif_param", 0.1, "neuron qif: weight c of the quadratic term",
                      min=0.0, max=1.0))

    def step(self, state, current, surrogate, detach_reset=False):
        u, s = state["u"], state["s"]
        fired = s.detach() if detach_reset else s
        u_new = self.lam * (u - self.v_th * fired) + self.qif_param * u * u + current
        return {"u": u_new, "s": fire(u_new, self.v_th, surrogate)}

    def step_(self, state, current, scratch=False):
        u, s = state["u"], state["s"]
        u_new = self.lam * (u - self.v_th * s) + self.qif_param * u * u + current
        return {"u": u_new, "s": (u_new > self.v_th).to(u_new.dtype)}


@pytest.fixture
def qif():
    """The QIF neuron and a small dataset, each registered with its one line."""
    NEURONS.register("qif", _QIF, "quadratic integrate-and-fire")
    DATASETS.register("tiny-mnist", _tiny_mnist, "test data", builtin=True)
    try:
        yield
    finally:
        NEURONS.unregister("qif")
        DATASETS.unregister("tiny-mnist")


def test_a_neuron_with_a_parameter_is_one_class_and_one_line(qif, tmp_path, capsys):
    """Registered after the config was made: its option is in --help (under the neuron's
    topic), parsed from --qif-param, checked, handed to the neuron, and recorded in
    config.json and the checkpoint; --resume reads it back."""
    assert "qif_param" not in {f.name for f in fields(TrainConfig)}  # a late option
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = capsys.readouterr().out
    topic = help_text.split("network and neuron:", 1)[1].split("\n\n", 1)[0]
    assert "--qif-param" in topic and "weight c of the quadratic term" in topic
    out = tmp_path / "run"
    argv = ["train", "--neuron", "qif", "--qif-param", "0.3", "--dataset", "tiny-mnist",
            "--hidden", "16", "--epochs", "1", "--T", "2", "--batch-size", "32",
            "--threads", "1", "--quiet", "--out", str(out)]
    assert cli.main(argv) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["neuron"] == "qif" and saved["qif_param"] == 0.3
    cfg = TrainConfig.from_dict(saved)
    assert cfg.qif_param == 0.3 and TrainConfig().qif_param == 0.1  # its default until set
    net = build_network(cfg, (1, 28, 28), 10)
    assert type(net.neuron) is _QIF and net.neuron.qif_param == 0.3
    assert net.neuron.lam == cfg.lif_lambda
    with pytest.raises(ConfigError, match=r"option 'qif_param' = 1.5 must be <= 1.0"):
        TrainConfig.from_dict({"neuron": "qif", "qif_param": 1.5})
    with pytest.raises(SystemExit):  # argparse: one line naming the option
        cli.main([*argv[:4], "--qif-param", "x"])
    assert "--qif-param" in capsys.readouterr().err
    # --resume reads the option back from config.json (a finished run: nothing left to do)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["config"]["qif_param"] == 0.3
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(out)]) == 0
    assert "finished all 1 epochs" in capsys.readouterr().out


def test_the_config_json_of_a_run_before_the_parts_declared_options_loads():
    """config.json written by the code before this change (tests/data/, a cuba / DFA /
    fast-sigmoid run with lif_lambda 0.6, syn_lambda 0.3) loads with every value as saved."""
    saved = json.loads((Path(__file__).parent / "data" / "config_before_part_options.json")
                       .read_text())
    cfg = TrainConfig.from_dict(saved)
    now = cfg.to_dict()
    assert {k: now[k] for k in saved} == saved
    assert (cfg.neuron, cfg.lif_lambda, cfg.leak, cfg.syn_lambda) == ("cuba", 0.6, 0.6, 0.3)
    neuron = build_network(cfg, (1, 28, 28), 10).neuron
    assert (neuron.lam, neuron.syn_lam) == (0.6, 0.3)


def test_leak_is_the_neuron_neutral_name_of_lif_lambda(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for flag in ("--leak", "--lif-lambda"):
        cfg = config_from_args(parser.parse_args([flag, "0.25"]), None)
        assert cfg.lif_lambda == 0.25 and cfg.to_dict()["lif_lambda"] == 0.25
    assert "leak" not in TrainConfig().to_dict()  # config.json keeps the key of before
    assert TrainConfig.from_dict({"leak": 0.7}).lif_lambda == 0.7
    assert TrainConfig(leak=0.4).lif_lambda == 0.4
    cfg = TrainConfig()
    cfg.leak = 0.9
    assert cfg.lif_lambda == 0.9 and "leak" not in vars(cfg)
    with pytest.raises(ConfigError, match="given twice"):
        TrainConfig.from_dict({"leak": 0.7, "lif_lambda": 0.7})
    with pytest.raises(ConfigError, match="option 'lif_lambda' = 1.5 must be <= 1.0"):
        TrainConfig.from_dict({"leak": 1.5})


def test_options_are_one_name_one_meaning():
    reg: Registry = Registry("widget")
    a = Option("size", 1, "the size", min=0)
    reg.register("a", int, options=(a,))
    reg.register("b", float, options=(a,))  # the same option, shared: fine
    assert reg.options() == (a,) and reg.option_values("a", argparse.Namespace(size=3)) == {
        "size": 3}
    with pytest.raises(ValueError, match="declared twice, differently"):
        reg.register("c", str, options=(Option("size", 2, "another size"),))
    with pytest.raises(ValueError, match="is taken by option 'size'"):
        reg.register("d", str, options=(Option("width", 2, "w", aliases=("size",)),))
    assert list(reg) == ["a", "b"]
    with pytest.raises(ValueError, match="give its type"):
        Option("maybe", None, "no type")
    assert Option("n", 3, "n", check=lambda v: "must be odd" if v % 2 == 0 else None
                  ).problem(4) == "= 4: must be odd"
    # a part's option may not take the name of an option of the run itself
    NEURONS.register("bad", _QIF, options=(Option("lr", 0.1, "clash"),))
    try:
        with pytest.raises(ValueError, match="declared twice|run"):
            TrainConfig.from_dict({})
    finally:
        NEURONS.unregister("bad")


def test_part_options_are_fields_under_the_topic_of_their_kind():
    from opzo.config import OPTION_TOPICS, option_topic

    declared = {"lif_lambda": NEURONS, "syn_lambda": NEURONS, "adapt_beta": NEURONS,
                "sigmoid_a": SURROGATES, "localzo_m": SURROGATES, "feedback_lr": RULES,
                "lambda_m": RULES, "alpha": RULES, "otpe_gbar": TRACES, "augment": DATASETS}
    names = {f.name for f in fields(TrainConfig)}
    for name, registry in declared.items():
        assert name in {o.name for o in registry.options()} and name in names
    assert option_topic("syn_lambda") == "network and neuron"
    assert option_topic("alpha") == "method: noise (opzo, zo)"  # the topic its option names
    neuron_topic = OPTION_TOPICS["network and neuron"]
    assert neuron_topic.index("neuron") + 1 == neuron_topic.index("lif_lambda")


# -- old names (issue 22 item 8) ---------------------------------------------------------


@pytest.fixture
def fresh_warnings():
    """Forget which old names warned, so each test sees its first use."""
    saved = set(deprecation._warned)
    deprecation._warned.clear()
    yield
    deprecation._warned.clear()
    deprecation._warned.update(saved)


def _future(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, FutureWarning)]


@pytest.mark.parametrize("make", [
    lambda n: SpikingMLP([6, 8, 3], lif=n),
    lambda n: SpikingNet("8-FC", (6,), 3, lif=n),
], ids=["SpikingMLP", "SpikingNet"])
def test_the_lif_keyword_warns_once_and_names_neuron(make, fresh_warnings):
    neuron = LIF(lam=0.6)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        net = make(neuron)
        make(neuron)
    (message,) = _future(record)
    assert "(lif=...)" in message and "(neuron=...)" in message
    assert net.neuron is neuron
    with pytest.raises(ValueError, match="give the neuron model once"):
        make_twice = SpikingMLP if "MLP" in message else None
        if make_twice is not None:
            SpikingMLP([6, 8, 3], lif=neuron, neuron=neuron)
        else:
            SpikingNet("8-FC", (6,), 3, lif=neuron, neuron=neuron)


def test_lifparams_warns_once_and_is_lif(fresh_warnings):
    import opzo
    import opzo.neurons

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert opzo.LIFParams is LIF and opzo.LIFParams is LIF
        assert opzo.neurons.LIFParams is LIF and opzo.neurons.LIFParams is LIF
    messages = _future(record)
    assert len(messages) == 2, messages
    assert "opzo.LIF" in messages[0] and "opzo.neurons.LIF" in messages[1]
    assert "LIFParams" not in opzo.__all__ and "LIF" in opzo.__all__


def test_the_module_opzo_neuron_warns_once_and_names_opzo_neurons(fresh_warnings):
    sys.modules.pop("opzo.neuron", None)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        old = importlib.import_module("opzo.neuron")
        sys.modules.pop("opzo.neuron")
        importlib.import_module("opzo.neuron")  # a second import in the process: silent
    (message,) = _future(record)
    assert "opzo.neuron" in message and "opzo.neurons" in message
    assert old.LIFParams is LIF and old.lif_step is lif_step
