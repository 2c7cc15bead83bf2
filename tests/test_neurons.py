"""The neuron seam (opzo.neurons): CubaLIF and ALIF against autograd of their equations, with
every rule and the OTTT / approximate-OTPE traces, on FC and conv nets; LIF keeps its native
kernel; OSTL / OTPE, PZO and NIR export refuse the new models with a clear message."""

from __future__ import annotations

import math

import pytest
import torch

from opzo import OPZO, InstantLoss, LocalLearning, OnlineLearner, SpatialBP
from opzo.bptt import BPTTLearner
from opzo.config import ConfigError, TrainConfig
from opzo.network import SpikingMLP
from opzo.neurons import ALIF, LIF, NEURONS, CubaLIF, LIFParams, make_neuron
from opzo.rules import RULES
from opzo.surrogate import SigmoidSurrogate, spike_with_surrogate
from opzo.traces import make_trace

from .reference import (
    bptt_layers_autograd_grads,
    presynaptic_autograd_grads,
    spiky_net,
)

NEW = {"cuba": lambda reset="subtract": CubaLIF(lam=0.6, syn_lam=0.4, reset=reset),
       "alif": lambda reset="subtract": ALIF(lam=0.7, beta=0.5, adapt_lam=0.8, reset=reset)}
NETS = [("10-8-FC", (6,)), ("3C3-AP2-4C3-FC", (1, 6, 6)), ("6-6+-FC", (5,))]


def _net(spec, shape, neuron, seed=0, **kw):
    return spiky_net(spec, shape, 4, seed, neuron=neuron, **kw)


def _data(shape, static, T=5, batch=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    f = math.prod(shape)
    x = (torch.randn(batch, f, generator=g, dtype=torch.float64) if static
         else torch.rand(T, batch, f, generator=g, dtype=torch.float64).mul(2.0))
    return x, torch.randint(0, 4, (batch,), generator=g)


def _grads(net):
    return {name: p.grad.clone() for name, p in net.named_parameters()}


def _close(ours, ref, atol=1e-10):
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=atol, rtol=1e-7), (
            k, float((ours[k] - ref[k]).abs().max()))


def neuron_step_reference(neuron, u, fired, extra, current, surrogate):
    """One step of CubaLIF or ALIF, their equations written out (independent of
    opzo.neurons): returns u, s and the model's own state (i or a), with autograd through
    everything (ALIF's threshold included: s = H(u − θ), ∂s/∂θ = −ψ)."""
    lam, v_th = neuron.lam, neuron.v_th

    def membrane(u, inp):
        if neuron.reset == "subtract":
            return lam * (u - v_th * fired) + inp
        return lam * u * (1.0 - fired) + inp

    if type(neuron) is CubaLIF:
        i = neuron.syn_lam * extra["i"] + current
        u = membrane(u, i)
        return {"u": u, "s": spike_with_surrogate(u, v_th, surrogate), "i": i,
                "a": extra["a"]}
    assert type(neuron) is ALIF
    theta = v_th + neuron.beta * extra["a"]
    u = membrane(u, current)
    s = spike_with_surrogate(u - theta, 0.0, surrogate)
    return {"u": u, "s": s, "i": extra["i"], "a": neuron.adapt_lam * extra["a"] + s}


def test_registry_builds_each_model():
    for name in NEURONS:  # every registered model builds from the training options
        assert isinstance(make_neuron(name), NEURONS[name].factory)
    assert LIFParams is LIF
    opts = dict(lam=0.4, v_th=0.9, reset="zero", syn_lambda=0.3, adapt_beta=0.1,
                adapt_lambda=0.7)
    assert make_neuron("lif", **opts) == LIF(0.4, 0.9, "zero")
    assert make_neuron("cuba", **opts) == CubaLIF(0.4, 0.9, "zero", 0.3)
    assert make_neuron("alif", **opts) == ALIF(0.4, 0.9, "zero", 0.1, 0.7)
    with pytest.raises(ValueError, match="choose one of"):
        make_neuron("izhikevich")
    with pytest.raises(ValueError, match="syn_lam"):
        CubaLIF(syn_lam=1.5)
    with pytest.raises(ValueError, match="beta"):
        ALIF(beta=-1.0)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("name", sorted(NEW))
def test_pure_and_fast_steps_follow_the_equations(name, reset):
    """The pure step (autograd) equals the equations written out, and the fast in-place step
    gives the same values (spikes bit for bit)."""
    neuron, sur = NEW[name](reset), SigmoidSurrogate()
    g = torch.Generator().manual_seed(0)
    pure = neuron.initial_state(4, 7, torch.zeros(1, dtype=torch.float64))
    fast = {k: v.clone() for k, v in pure.items()}
    ref = {"u": pure["u"].clone(), "s": pure["s"].clone(), "i": pure["u"].clone(),
           "a": pure["u"].clone()}
    fired = 0
    for _ in range(12):
        current = torch.rand(4, 7, generator=g, dtype=torch.float64) * 1.5
        pure = neuron.step(pure, current, sur)
        fast = neuron.step_(fast, current.clone(), scratch=True)
        ref = neuron_step_reference(neuron, ref["u"], ref["s"], ref, current, sur)
        for k in neuron.state_vars:
            assert torch.allclose(pure[k], ref[k], atol=1e-12), k
            assert torch.allclose(fast[k], pure[k], atol=1e-12), k
        assert torch.equal(fast["s"], pure["s"])
        fired += int(pure["s"].sum())
    assert fired > 0


def test_alif_threshold_rises_with_spikes_and_decays():
    neuron = ALIF(lam=1.0, beta=0.5, adapt_lam=0.5)
    st = neuron.initial_state(1, 1, torch.zeros(1))
    st = neuron.step_(st, torch.tensor([[1.5]]))
    assert float(st["s"]) == 1.0 and float(neuron.threshold(st)) == 1.5  # V_th + β·1
    st = neuron.step_(st, torch.tensor([[0.0]]))
    assert float(st["s"]) == 0.0 and float(neuron.threshold(st)) == 1.25  # a = 0.5


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("spec,shape", NETS)
@pytest.mark.parametrize("name", sorted(NEW))
@pytest.mark.parametrize("kind", ["ottt", "approx_otpe"])
def test_spatial_bp_equals_autograd_of_the_instantaneous_gradient(kind, name, spec, shape,
                                                                  static):
    """Spatial BP with the OTTT / approximate-OTPE trace equals autograd through the pure
    step within each time step (the presynaptic trace through the neuron's filters)."""
    net = _net(spec, shape, NEW[name]())
    x, y = _data(shape, static)
    loss = InstantLoss("mix", 0.3)
    OnlineLearner(net, SpatialBP(), loss, trace=kind).accumulate(x, y, T=5)
    ours = _grads(net)
    ref = presynaptic_autograd_grads(net, x, y, 5, loss, kind=kind)
    _close(ours, ref)
    assert ref["hidden.0.weight"].abs().sum() > 0


@pytest.mark.parametrize("name", sorted(NEW))
def test_spatial_bp_with_dropout_and_f_trace_equals_autograd(name):
    net = _net("10-8-FC", (6,), NEW[name](), dropout=0.3)
    x, y = _data((6,), False)
    masks = net.dropout_masks(5, x)
    loss = InstantLoss()
    OnlineLearner(net, SpatialBP(), loss, trace="f_approx_otpe").accumulate(x, y, T=5,
                                                                           masks=masks)
    ours = _grads(net)
    _close(ours, presynaptic_autograd_grads(net, x, y, 5, loss, kind="approx_otpe",
                                            masks=masks, leaky=True))


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("spec,shape", NETS)
@pytest.mark.parametrize("name", sorted(NEW))
def test_bptt_equals_autograd_of_the_equations(name, spec, shape, reset):
    net = _net(spec, shape, NEW[name](reset))
    x, y = _data(shape, False)
    loss = InstantLoss("mix", 0.3)
    BPTTLearner(net, loss).accumulate(x, y, T=5)
    ours = _grads(net)
    _close(ours, bptt_layers_autograd_grads(net, x, y, 5, loss))


@pytest.mark.parametrize("trace", ["ottt", "approx_otpe"])
@pytest.mark.parametrize("spec,shape", NETS[:2])
@pytest.mark.parametrize("name", sorted(NEW))
def test_every_rule_and_local_learning_train_with_the_new_neurons(name, spec, shape, trace):
    """Every rule (and LL with IGL on top of OPZO) gives finite, non-zero gradients and a
    training step changes the weights, in float32 on the network's default kernels."""
    x, y = _data(shape, False, T=4)
    x = x.float()
    rules = {k: RULES.build(k) for k in RULES}
    rules["opzo+ll"] = LocalLearning(OPZO(), local=True, igl_layer=1)
    for rname, rule in rules.items():
        net = _net(spec, shape, NEW[name]()).float()
        assert not net.uses_native_kernels(x)  # torch ops: the native kernel is LIF's
        learner = OnlineLearner(net, rule, InstantLoss(), trace=trace)
        opt = torch.optim.AdamW([*net.parameters(), *rule.parameters()], lr=1e-2)
        before = net.hidden[0].weight.detach().clone()
        stats = learner.train_batch(x, y, opt, T=4)
        assert math.isfinite(stats.loss_sum), rname
        for p in net.parameters():
            assert torch.isfinite(p).all(), rname
        assert not torch.equal(before, net.hidden[0].weight), rname


@pytest.mark.parametrize("name", sorted(NEW))
def test_ostl_otpe_pzo_and_nir_refuse_the_new_neurons_clearly(name):
    net = _net("10-8-FC", (6,), NEW[name]())
    for trace in ("ostl", "otpe", "f_ostl"):
        with pytest.raises(ValueError, match="second state|its own path"):
            make_trace(trace, net.neuron, layer=net.hidden[0])
        with pytest.raises(ValueError, match="ottt"):
            OnlineLearner(net, SpatialBP(), trace=trace).accumulate(*_data((6,), True), T=2)
        with pytest.raises(ConfigError, match="approx_otpe"):
            TrainConfig.from_dict({"neuron": name, "trace": trace})
    from opzo.pzo import DFAThroughTime, UntruncatedLearner

    with pytest.raises(ValueError, match="LIF"):
        UntruncatedLearner(net, DFAThroughTime(), 3)
    pytest.importorskip("nir")
    from opzo.nir import NIRError, to_nir

    with pytest.raises(NIRError, match="--neuron lif"):
        to_nir(net)


def test_lif_keeps_the_native_kernel_and_its_numbers():
    """LIF (the default) still runs on the fused kernel; a LIF net built with neuron= equals
    one built with the old lif= keyword."""
    torch.manual_seed(0)
    a = SpikingMLP([6, 8, 3], lif=LIFParams(lam=0.6))
    torch.manual_seed(0)
    b = SpikingMLP([6, 8, 3], neuron=LIF(lam=0.6))
    x = torch.rand(4, 6)
    from opzo import native

    with torch.no_grad():
        if native.ready():
            assert a.uses_native_kernels(x)
        assert torch.equal(a(x, 5), b(x, 5))
        assert not SpikingMLP([6, 8, 3], neuron=CubaLIF()).uses_native_kernels(x)
    with pytest.raises(ValueError, match="once"):
        SpikingMLP([6, 8, 3], lif=LIF(), neuron=ALIF())


@pytest.mark.parametrize("name", sorted(NEW))
def test_cli_trains_each_new_neuron_above_chance(tmp_path, name, capsys):
    from opzo.cli import main

    out = tmp_path / name
    assert main(["train", "--neuron", name, "--hidden", "64", "--T", "4", "--epochs", "2",
                 "--limit-train", "1024", "--limit-test", "300", "--threads", "1",
                 "--method", "opzo", "--out", str(out), "--quiet"]) == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_acc"] > 30  # chance: 10
    config = json.loads((out / "config.json").read_text())
    assert config["neuron"] == name
