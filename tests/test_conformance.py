"""Conformance over the registries: every registered neuron, surrogate, rule and dataset is
checked by the checks of tests/conformance.py, with the small examples the part itself
supplies (``examples()``; a dataset's in tests/writers.py's ``EXAMPLES``). A newly registered
part is tested with no edit here; no test pins the list of registered names.

The last tests are tests of these checks: a deliberately wrong neuron, surrogate and rule
are registered for a while and each is caught.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from opzo.data import DATASETS
from opzo.neurons import LIF, NEURONS
from opzo.rules import RULES, SpatialBP
from opzo.surrogate import SURROGATES, FastSigmoidSurrogate
from opzo.traces import TRACES

from .conformance import (
    NETS,
    check_dataset,
    check_neuron_bptt,
    check_neuron_learning,
    check_neuron_steps,
    check_rule_deltas,
    check_surrogate,
)
from .writers import EXAMPLES


def neuron_cases() -> list[tuple[str, int]]:
    """(name, example index) of every registered neuron, read when called."""
    return [(n, i) for n in NEURONS for i in range(len(NEURONS[n].factory.examples()))]


def surrogate_cases() -> list[tuple[str, int]]:
    return [(n, i) for n in SURROGATES for i in range(len(SURROGATES[n].factory.examples()))]


def rule_cases() -> list[tuple[str, int]]:
    return [(n, i) for n in RULES for i in range(len(RULES[n].factory.examples()))]


def _neuron(name: str, i: int):
    return NEURONS[name].factory.examples()[i]


def _ids(cases):
    return [f"{n}-{i}" for n, i in cases]


# ------------------------------------------------------------------------------- neurons


@pytest.mark.parametrize("name,i", neuron_cases(), ids=_ids(neuron_cases()))
def test_neuron_in_place_step_equals_its_pure_step(name, i):
    check_neuron_steps(_neuron(name, i))


@pytest.mark.parametrize("kind", list(NETS))
@pytest.mark.parametrize("trace", list(TRACES))
@pytest.mark.parametrize("name,i", neuron_cases(), ids=_ids(neuron_cases()))
def test_neuron_bp_under_each_trace_it_supports_equals_autograd(name, i, trace, kind):
    check_neuron_learning(_neuron(name, i), trace, kind, static=(i % 2 == 1))


@pytest.mark.parametrize("kind", list(NETS))
@pytest.mark.parametrize("name,i", neuron_cases(), ids=_ids(neuron_cases()))
def test_neuron_bptt_equals_autograd(name, i, kind):
    check_neuron_bptt(_neuron(name, i), kind)


# ---------------------------------------------------------------------------- surrogates


@pytest.mark.parametrize("name,i", surrogate_cases(), ids=_ids(surrogate_cases()))
def test_surrogate_matches_its_documented_derivative(name, i):
    check_surrogate(SURROGATES[name].factory.examples()[i])


# --------------------------------------------------------------------------------- rules


@pytest.mark.parametrize("kind", list(NETS))
@pytest.mark.parametrize("neuron", list(NEURONS))
@pytest.mark.parametrize("name,i", rule_cases(), ids=_ids(rule_cases()))
def test_rule_delta_equals_its_closed_form_under_every_neuron(name, i, neuron, kind):
    rule = RULES[name].factory.examples()[i]
    check_rule_deltas(rule, _neuron(neuron, 0), kind)


# ------------------------------------------------------------------------------ datasets


@pytest.mark.parametrize("name", list(DATASETS))
def test_dataset_reads_batches_and_trains_one_epoch(name, tmp_path, monkeypatch):
    monkeypatch.setenv("OPZO_CACHE_DIR", str(tmp_path / "cache"))
    entry = DATASETS[name]
    options = {} if entry.builtin else None
    if options is None:
        writer = EXAMPLES.get(name)
        assert writer is not None, (
            f"dataset {name!r} reads files but tests/writers.py's EXAMPLES has no writer of a "
            "small example of them")
        root = tmp_path / "data"
        root.mkdir()
        options = writer(root, monkeypatch)
    if entry.steps is not None:
        options = {**options, "T": entry.steps}
    check_dataset(name, options, tmp_path / "run")


# ------------------------------------------------------------- the checks catch mistakes


@dataclass(frozen=True)
class _LeakyInPlace(LIF):
    """A LIF whose in-place step forgets the leak (its pure step is right)."""

    name = "wrong-in-place"

    def step_(self, state, current, scratch=False):
        u = state["u"] + current - self.v_th * state["s"]
        return {"u": u, "s": (u > self.v_th).to(u.dtype)}


@dataclass(frozen=True)
class _WrongTrace(LIF):
    """A LIF with a synaptic filter in its dynamics that its presynaptic trace leaves out."""

    name = "wrong-trace"
    state_vars = ("u", "s", "i")
    own_path_unsupported = "a synaptic current"

    def dynamics(self, state, current, ops):
        i = ops.leak(state["i"], 0.5, current)
        u = ops.membrane(state["u"], state["s"], i, self.lam, self.v_th, self.reset)
        return {"u": u, "s": ops.fire(u, self.v_th), "i": i}


class _UnsquaredFastSigmoid(FastSigmoidSurrogate):
    """ψ = 1/(k|x| + 1): not the derivative of the smooth function it inherits."""

    name = "wrong-fast-sigmoid"

    def __call__(self, u, v_th):
        return (self.k * (u - v_th).abs() + 1.0).reciprocal()


class _HalfBP(SpatialBP):
    """Spatial BP that halves δ at the first layer behind its back."""

    name = "half-bp"

    def deltas(self, ctx):
        out = super().deltas(ctx)
        out[0] = out[0] * 0.5
        return out


def test_the_checks_catch_a_wrong_neuron_surrogate_and_rule():
    NEURONS.register("wrong-in-place", _LeakyInPlace)
    NEURONS.register("wrong-trace", _WrongTrace)
    SURROGATES.register("wrong-fast-sigmoid", _UnsquaredFastSigmoid)
    RULES.register("half-bp", _HalfBP)
    try:
        # the registries' cases now hold them, so the parametrized suite would run them
        assert ("wrong-in-place", 0) in neuron_cases() and ("half-bp", 0) in rule_cases()
        assert ("wrong-fast-sigmoid", 0) in surrogate_cases()
        with pytest.raises(AssertionError, match="in place"):
            check_neuron_steps(_LeakyInPlace(lam=0.6))
        check_neuron_steps(_WrongTrace(lam=0.6))  # its two steps agree ...
        with pytest.raises(AssertionError, match="off by"):  # ... its trace does not
            check_neuron_learning(_WrongTrace(lam=0.6), "ottt", "fc")
        with pytest.raises(AssertionError, match="not the derivative of primitive"):
            check_surrogate(_UnsquaredFastSigmoid(k=2.0))
        with pytest.raises(AssertionError, match="closed form"):
            check_rule_deltas(_HalfBP(), LIF(lam=0.6), "fc")
    finally:
        for registry, name in ((NEURONS, "wrong-in-place"), (NEURONS, "wrong-trace"),
                               (SURROGATES, "wrong-fast-sigmoid"), (RULES, "half-bp")):
            registry.unregister(name)
