"""Extension in one file, for real (issue 22's evidence): a neuron with a parameter, a rule, a
surrogate, a trace and a dataset, written outside the package (tests/toy_parts.py) and
registered at run time with one line each, are taken by the conformance suite, ``opzo train``,
``opzo train --help`` and ``opzo cost``."""

from __future__ import annotations

import json

import pytest

from opzo.cli import main
from opzo.neurons import NEURONS
from opzo.rules import RULES

from .conformance import (
    NETS,
    check_dataset,
    check_neuron_bptt,
    check_neuron_learning,
    check_neuron_steps,
    check_rule_deltas,
    check_surrogate,
    supported_traces,
)
from .test_conformance import neuron_cases, rule_cases, surrogate_cases
from .toy_parts import (
    TOY_NAMES,
    CountingOTTT,
    DrivenLIF,
    SignSymmetricBP,
    TriangleSurrogate,
    register_toy_parts,
)


@pytest.fixture
def toys():
    undo = register_toy_parts()
    try:
        yield
    finally:
        undo()


def test_the_conformance_suite_takes_the_new_parts(toys, tmp_path, monkeypatch):
    # the parametrized suite reads the registries: the new parts are among its cases
    assert ("driven-lif", 1) in neuron_cases() and ("sign-bp", 0) in rule_cases()
    assert ("triangle", 1) in surrogate_cases()
    # ... and pass its checks
    for neuron in DrivenLIF.examples():
        check_neuron_steps(neuron)
        assert "counting-ottt" in supported_traces(neuron)
        for trace in ("counting-ottt", "ottt", "ostl"):
            check_neuron_learning(neuron, trace, "fc")
        check_neuron_bptt(neuron, "conv")
    assert CountingOTTT.pushes > 0  # the new trace ran
    for kind in NETS:
        check_rule_deltas(SignSymmetricBP(), DrivenLIF(lam=0.6), kind)
        for name in NEURONS:  # the new rule under every neuron, the old rules under the new
            check_rule_deltas(SignSymmetricBP(), NEURONS[name].factory.examples()[0], kind)
        for name in RULES:
            check_rule_deltas(RULES[name].factory(), DrivenLIF(lam=0.6), kind)
    for sur in TriangleSurrogate.examples():
        check_surrogate(sur)
    monkeypatch.setenv("OPZO_CACHE_DIR", str(tmp_path / "cache"))
    check_dataset("xor", {"T": 4}, tmp_path / "run")


def test_opzo_train_takes_the_new_parts(toys, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--neuron", "driven-lif", "--method", "sign-bp", "--surrogate",
            "triangle", "--trace", "f_counting-ottt", "--dataset", "xor", "--T", "4",
            "--hidden", "16", "--epochs", "2", "--batch-size", "16", "--threads", "1",
            "--lr", "1e-2", "--drive", "0.2", "--out", str(run), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    saved = json.loads((run / "config.json").read_text())
    assert saved["drive"] == 0.2  # the neuron's own option, declared in its file
    assert {k: saved[k] for k in TOY_NAMES} == {**TOY_NAMES, "trace": "f_counting-ottt"}
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["train_loss"] == r["train_loss"] for r in rows)


def test_opzo_train_help_lists_the_new_parts(toys, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in TOY_NAMES.values():
        assert name in out, name


def test_opzo_train_help_describes_the_new_parts(toys, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "BP with sign(W) in the backward pass" in out


def test_opzo_cost_takes_the_new_rule(toys, capsys):
    assert main(["cost", "--hidden", "32", "32", "--method", "sign-bp", "--json"]) == 0
    out = capsys.readouterr().out
    assert "sign-bp" in out
