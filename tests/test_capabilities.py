"""Neurons declare their capabilities (native kernel, NIR node, untruncated PZO, OSTL / OTPE
eligibility) for their own dynamics: a LIF subclass that changes the dynamics loses them,
one that changes nothing of them keeps them; and a run reports the kernels its network ran."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from opzo import native
from opzo.build import kernels_in_use
from opzo.network import SpikingMLP
from opzo.neurons import LIF, CubaLIF
from opzo.neurons.base import LayerState, fire, same_dynamics
from opzo.surrogate import SigmoidSurrogate
from opzo.traces import make_trace

DRIFT = 0.3


@dataclass(frozen=True)
class DriftLIF(LIF):
    """LIF plus a constant drift current: u[t+1] = λ(u[t] − V_th s[t]) + I[t+1] + c."""

    def step(self, state: LayerState, current: Tensor, surrogate, detach_reset: bool = False
             ) -> LayerState:
        u = self.lam * (state["u"] - self.v_th * state["s"]) + current + DRIFT
        return {"u": u, "s": fire(u, self.v_th, surrogate)}

    def step_(self, state: LayerState, current: Tensor, scratch: bool = False) -> LayerState:
        u = self.lam * (state["u"] - self.v_th * state["s"]) + current + DRIFT
        return {"u": u, "s": (u > self.v_th).to(u.dtype)}


@dataclass(frozen=True)
class NamedLIF(LIF):
    """LIF with another description only: the same model."""

    def describe(self) -> str:
        return "named " + super().describe()


def _outputs(neuron, kernels: str, x: Tensor, T: int = 6) -> Tensor:
    torch.manual_seed(0)
    net = SpikingMLP([5, 7, 6, 3], neuron=neuron, kernels=kernels)
    with torch.no_grad():
        return torch.stack([o for o, _ in net.run(x, T)])


def _reference(neuron, x: Tensor, T: int = 6) -> Tensor:
    """The subclass's own pure step, layer by layer, with the same weights."""
    torch.manual_seed(0)
    net = SpikingMLP([5, 7, 6, 3], neuron=neuron, kernels="torch")
    states = [neuron.initial_state(x.shape[0], n, x) for n in net.hidden_sizes]
    outs = []
    with torch.no_grad():
        for _ in range(T):
            inp = x
            for l, layer in enumerate(net.hidden):
                states[l] = neuron.step(states[l], layer.op(layer.op_input(inp)),
                                        SigmoidSurrogate())
                inp = states[l]["s"]
            outs.append(net.readout.op(net.readout.op_input(inp)))
    return torch.stack(outs)


def test_a_lif_subclass_with_other_dynamics_runs_them_on_both_paths():
    x = torch.rand(4, 5) * 2
    drift = DriftLIF(lam=0.6)
    assert not drift.uses_native_kernel() and not same_dynamics(drift, LIF)
    on_native, on_torch = _outputs(drift, "native", x), _outputs(drift, "torch", x)
    assert torch.equal(on_native, on_torch)
    torch.testing.assert_close(on_native, _reference(drift, x), rtol=1e-6, atol=1e-6)
    assert not torch.equal(on_native, _outputs(LIF(lam=0.6), "torch", x))  # it is not LIF


def test_a_lif_subclass_with_the_same_dynamics_keeps_the_kernel():
    x = torch.rand(4, 5) * 2
    named = NamedLIF(lam=0.6)
    assert named.uses_native_kernel() and named.exports_to_nir()
    assert named.supports_untruncated_pzo() and named.own_path_problem() is None
    net = SpikingMLP([5, 7, 3], neuron=named)
    with torch.no_grad():
        assert net.uses_native_kernels(x) == native.ready()
    assert torch.equal(_outputs(named, "native", x), _outputs(LIF(lam=0.6), "native", x))


def test_capabilities_are_the_models_not_their_names():
    drift = DriftLIF()
    assert drift.name == "lif"  # inherited: the name says nothing of the dynamics
    assert not drift.exports_to_nir() and not drift.supports_untruncated_pzo()
    with pytest.raises(ValueError, match="own_path_factor"):
        make_trace("ostl", drift)
    for neuron in (CubaLIF(), drift):
        assert not neuron.uses_native_kernel()
    from opzo.pzo import DFAThroughTime, UntruncatedLearner

    with pytest.raises(ValueError, match="LIF"):
        UntruncatedLearner(SpikingMLP([5, 7, 3], neuron=drift), DFAThroughTime(), 3)
    UntruncatedLearner(SpikingMLP([5, 7, 3], neuron=NamedLIF()), DFAThroughTime(), 3)
    pytest.importorskip("nir")
    from opzo.nir import NIRError, to_nir

    with pytest.raises(NIRError, match="--neuron lif"):
        to_nir(SpikingMLP([5, 7, 3], neuron=drift), approximate=True)
    to_nir(SpikingMLP([5, 7, 3], neuron=NamedLIF()), approximate=True)


def test_kernels_in_use_reads_the_network():
    assert kernels_in_use(SpikingMLP([5, 7, 3], neuron=CubaLIF())).startswith(
        "torch (the cuba neuron")
    assert kernels_in_use(SpikingMLP([5, 7, 3], neuron=DriftLIF())).startswith("torch")
    assert kernels_in_use(SpikingMLP([5, 7, 3], kernels="torch")) == "torch"
    assert kernels_in_use(SpikingMLP([5, 7, 3]).double()).startswith("torch (torch.float64")
    lif = kernels_in_use(SpikingMLP([5, 7, 3]))
    assert lif == "native" if native.available() else lif.startswith("torch (native")


def test_a_cuba_run_reports_torch_kernels(tmp_path, capsys):
    from opzo.cli import main

    out = tmp_path / "cuba"
    assert main(["train", "--neuron", "cuba", "--hidden", "16", "--T", "2", "--epochs", "1",
                 "--limit-train", "64", "--limit-test", "32", "--threads", "1",
                 "--method", "dfa", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kernels"].startswith("torch (the cuba neuron")
    printed = capsys.readouterr()
    start = [line for line in (printed.out + printed.err).splitlines()
             if line.startswith("opzo: dfa on")]
    assert len(start) == 1 and "torch (the cuba neuron (CubaLIF) has no native kernel) kernels" \
        in start[0]
