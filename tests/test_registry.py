"""The registries: every kind of part is named once, and the CLI, the config's checks and the
builders read it, so a part registered with one line is usable everywhere."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace

import pytest

from opzo.build import build_network, build_rule, make_source
from opzo.config import ConfigError, TrainConfig, add_arguments, config_from_args
from opzo.data import DATASETS
from opzo.neurons import LIF, NEURONS
from opzo.registry import Registry
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
    assert _choices("method") == [*RULES, "bptt"]
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
