"""Temporal traces (opzo.traces): each equals autograd of the approximation it claims.

References (autograd, float64), each written independently of the forward-mode traces:

* :func:`bptt_reference` — the plain surrogate-gradient unroll through layers and time, with
  either reset, dropout masks and optionally the loss on the leaky sum of the outputs;
* :func:`eligibility_reference` — OSTL / OTPE as autograd of a rewritten graph: each layer's
  own temporal path (u, s through time, inputs detached) carries the gradient to its weights,
  the spikes reach the next layer through their post-synaptic estimate P = λ P + s (OTPE) or
  s alone (OSTL), and the error crosses to the layer below only at the current step with the
  local derivative D (ḡ or ψ);
* :func:`presynaptic_reference` — OTTT / approximate OTPE: u rewritten as const + W A + b A^b
  with A = â (OTTT) or ẑ (approximate OTPE) attached to the current input only, and the spike
  derivative D = ψ or ḡ.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from opzo import InstantLoss, OnlineLearner, SpatialBP, SpikingMLP
from opzo.bptt import BPTTLearner
from opzo.neuron import LIFParams
from opzo.rules import RULES
from opzo.surrogate import FastSigmoidSurrogate, SigmoidSurrogate, make_surrogate
from opzo.traces import (
    GBAR_MODES,
    ApproxOTPETrace,
    OSTLTrace,
    OTPETrace,
    OTTTTrace,
    leaky_mean,
    make_output_trace,
    make_trace,
    trace_names,
)

from .reference import bptt_layers_autograd_grads, leaky_readout, presynaptic_autograd_grads

TRACE_NAMES = trace_names()


# ---------------------------------------------------------------------------------------
# autograd references


def _zero_grads(net):
    for p in net.parameters():
        p.grad = None


def _lif(lif, u_prev, s_prev, current):
    if lif.reset == "subtract":
        return lif.lam * (u_prev - lif.v_th * s_prev) + current
    return lif.lam * u_prev * (1.0 - s_prev) + current


def _collect(net):
    return {name: p.grad.clone() for name, p in net.named_parameters()}


def bptt_reference(net, x, y, T, loss, masks=None, output_leak=0.0):
    """Exact BPTT of (1/T) Σ_t mean_b L(O[t]), O[t] = output_leak·O[t−1] + o[t]."""
    return bptt_layers_autograd_grads(net, x, y, T, loss, masks=masks, output_leak=output_leak)


def _spike(u, v_th, sur):
    from opzo.surrogate import spike_with_surrogate

    return spike_with_surrogate(u, v_th, sur)


def _with_derivative(value, u, d):
    """A tensor equal to ``value`` whose derivative with respect to u is d (elementwise)."""
    return value + d * (u - u.detach())


def eligibility_reference(net, x, y, T, loss, kind, masks=None, leaky=False):
    """OSTL (kind "ostl") or OTPE ("otpe") with spatial BP, by autograd (module docstring)."""
    _zero_grads(net)
    lif, sur = net.neuron, net.surrogate
    lam = lif.lam
    n = len(net.hidden)
    batch = y.shape[0]
    u_own = [x.new_zeros(batch, k) for k in net.hidden_sizes]
    s_own = [x.new_zeros(batch, k) for k in net.hidden_sizes]
    post_sum = [None] * n
    psi_sum = [0.0] * n
    hist = None
    total = 0.0
    for t in range(T):
        inp = x if x.dim() == 2 else x[t]
        for l, lin in enumerate(net.hidden):
            u = _lif(lif, u_own[l], s_own[l], F.linear(inp.detach(), lin.weight, lin.bias))
            s = _spike(u, lif.v_th, sur)
            psi = sur(u.detach(), lif.v_th)
            psi_sum[l] = lam * psi_sum[l] + psi
            gbar = psi_sum[l] / (t + 1)
            estimate = kind == "otpe" and (l < n - 1 or leaky)
            if estimate:
                post_sum[l] = s if post_sum[l] is None else lam * post_sum[l] + s
                p, d = post_sum[l], gbar
            else:
                p, d = s, psi
            cross = F.linear(inp, lin.weight.detach())
            value = _with_derivative(s.detach() + (p - p.detach()), cross, d)
            u_own[l], s_own[l] = u, s
            inp = value if masks is None else value * masks[l]
        out, hist = leaky_readout(net, inp, hist, lam, leaky)
        total = total + loss.per_sample(out, y).mean() / T
    total.backward()
    return _collect(net)


def presynaptic_reference(net, x, y, T, loss, kind, masks=None, leaky=False):
    """OTTT (kind "ottt") or approximate OTPE ("approx_otpe") with spatial BP, by autograd."""
    return presynaptic_autograd_grads(net, x, y, T, loss, kind=kind, masks=masks, leaky=leaky)


# ---------------------------------------------------------------------------------------
# helpers


def _net(sizes, reset="subtract", surrogate=None, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    net = SpikingMLP(list(sizes), lif=LIFParams(reset=reset),
                     surrogate=surrogate or FastSigmoidSurrogate(5.0), dropout=dropout).double()
    with torch.no_grad():  # larger weights so that neurons spike often
        for lin in net.hidden:
            lin.weight.mul_(4.0)
    return net


def _data(sizes, static, T=5, batch=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    if static:
        x = torch.randn(batch, sizes[0], generator=g, dtype=torch.float64)
    else:
        x = torch.rand(T, batch, sizes[0], generator=g, dtype=torch.float64) * 1.5
    y = torch.randint(0, sizes[-1], (batch,), generator=g)
    return x, y


def _ours(net, trace, x, y, T, loss, masks=None, rule=None):
    _zero_grads(net)
    OnlineLearner(net, rule or SpatialBP(), loss, trace=trace).accumulate(x, y, T=T, masks=masks)
    return _collect(net)


def _masks(net, batch):
    net.train()
    masks = net.dropout_masks(batch, torch.zeros(1, dtype=torch.float64))
    assert masks is not None
    return masks


def _assert_close(ours, ref, keys=None, atol=1e-10):
    for k in keys or ref:
        assert torch.allclose(ours[k], ref[k], atol=atol, rtol=1e-7), (
            k, float((ours[k] - ref[k]).abs().max()))


def _differ(a, b):
    return not torch.allclose(a, b, atol=1e-6)


DEEP = (7, 9, 8, 6, 4)  # three hidden layers
LOSS = InstantLoss("mix", 0.2)


# ---------------------------------------------------------------------------------------
# exactness against BPTT


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_bptt_learner_equals_plain_autograd_unroll(reset, static):
    sizes = (7, 9, 8, 4)
    net = _net(sizes, reset=reset, dropout=0.3)
    x, y = _data(sizes, static)
    masks = _masks(net, 6)
    _zero_grads(net)
    BPTTLearner(net, LOSS).accumulate(x, y, T=5, masks=masks)
    ours = _collect(net)
    ref = bptt_reference(net, x, y, 5, LOSS, masks=masks)
    _assert_close(ours, ref, atol=1e-12)
    assert ref["hidden.0.weight"].abs().sum() > 0


@pytest.mark.parametrize("surrogate", [SigmoidSurrogate(0.5), FastSigmoidSurrogate(5.0)])
@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_ostl_is_exact_bptt_for_the_layer_that_feeds_the_readout(reset, static, surrogate):
    """OSTL's eligibility is exact for a layer whose spikes reach the loss at the same step:
    with one hidden layer all its gradients are BPTT's; deeper, the last hidden layer's
    (and the readout's) are, the first layer's are not."""
    sizes = (7, 9, 4)
    net = _net(sizes, reset=reset, surrogate=surrogate, dropout=0.3)
    x, y = _data(sizes, static)
    masks = _masks(net, 6)
    ref = bptt_reference(net, x, y, 5, LOSS, masks=masks)
    _assert_close(_ours(net, "ostl", x, y, 5, LOSS, masks), ref)
    # OTTT ignores the reset, so it is not exact (the test can fail)
    assert _differ(_ours(net, "ottt", x, y, 5, LOSS, masks)["hidden.0.weight"],
                   ref["hidden.0.weight"])
    # the non-F OTPE family reduces to OSTL at the readout (memoryless consumer)
    _assert_close(_ours(net, "otpe", x, y, 5, LOSS, masks), ref)

    net = _net(DEEP, reset=reset, surrogate=surrogate)
    x, y = _data(DEEP, static)
    ref = bptt_reference(net, x, y, 5, LOSS)
    ours = _ours(net, "ostl", x, y, 5, LOSS)
    _assert_close(ours, ref, ["hidden.2.weight", "hidden.2.bias", "readout.weight",
                              "readout.bias"])
    assert _differ(ours["hidden.0.weight"], ref["hidden.0.weight"])


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_f_otpe_is_exact_bptt_of_the_leaky_sum_loss(reset, static):
    """OTPE paper 3.2: with the loss on O[t] = λ O[t−1] + o[t], R̂ gives the exact gradient of
    the layer that feeds the readout (all of a one-hidden-layer network)."""
    sizes = (7, 9, 4)
    net = _net(sizes, reset=reset, dropout=0.3)
    x, y = _data(sizes, static)
    masks = _masks(net, 6)
    lam = net.neuron.lam
    ref = bptt_reference(net, x, y, 5, LOSS, masks=masks, output_leak=lam)
    _assert_close(_ours(net, "f_otpe", x, y, 5, LOSS, masks), ref)
    # the plain loss is a different function (the test can fail)
    plain = bptt_reference(net, x, y, 5, LOSS, masks=masks)
    assert _differ(plain["hidden.0.weight"], ref["hidden.0.weight"])
    # F-OSTL under the same loss misses the readout's leak for the hidden layer
    f_ostl = _ours(net, "f_ostl", x, y, 5, LOSS, masks)
    _assert_close(f_ostl, ref, ["readout.weight", "readout.bias"])
    assert _differ(f_ostl["hidden.0.weight"], ref["hidden.0.weight"])

    net = _net(DEEP, reset=reset)
    x, y = _data(DEEP, static)
    ref = bptt_reference(net, x, y, 5, LOSS, output_leak=lam)
    ours = _ours(net, "f_otpe", x, y, 5, LOSS)
    _assert_close(ours, ref, ["hidden.2.weight", "hidden.2.bias", "readout.weight",
                              "readout.bias"])
    assert _differ(ours["hidden.0.weight"], ref["hidden.0.weight"])


# ---------------------------------------------------------------------------------------
# each trace equals autograd of its own approximation (deep nets)


@pytest.mark.parametrize("trace", TRACE_NAMES)
@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_each_trace_equals_autograd_of_its_approximation(trace, reset, static):
    """OSTL / OTPE against their eligibility construction, OTTT / approximate OTPE against
    autograd with the stated parts detached (and the f_ variants with the leaky-sum loss)."""
    net = _net(DEEP, reset=reset, dropout=0.3)
    x, y = _data(DEEP, static)
    masks = _masks(net, 6)
    kind = trace.removeprefix("f_")
    reference = eligibility_reference if kind in ("ostl", "otpe") else presynaptic_reference
    ref = reference(net, x, y, 5, LOSS, kind, masks, leaky=trace.startswith("f_"))
    _assert_close(_ours(net, trace, x, y, 5, LOSS, masks), ref)


def test_otpe_reaches_across_layers_with_gbar():
    """In a deep net the traces differ where they claim to: OTPE from OSTL and approximate
    OTPE from OTTT below the last hidden layer (R̂, ẑ and ḡ), equal at the readout."""
    net = _net(DEEP)
    x, y = _data(DEEP, static=False)
    g = {tr: _ours(net, tr, x, y, 5, LOSS) for tr in ("ottt", "ostl", "otpe", "approx_otpe")}
    for a, b in (("otpe", "ostl"), ("approx_otpe", "ottt"), ("otpe", "approx_otpe")):
        assert _differ(g[a]["hidden.0.weight"], g[b]["hidden.0.weight"]), (a, b)
        assert _differ(g[a]["hidden.1.weight"], g[b]["hidden.1.weight"]), (a, b)
        _assert_close(g[a], g[b], ["readout.weight", "readout.bias"])
    # at the last hidden layer OTPE is OSTL and approximate OTPE is OTTT (plain readout)
    _assert_close(g["otpe"], g["ostl"], ["hidden.2.weight", "hidden.2.bias"])
    _assert_close(g["approx_otpe"], g["ottt"], ["hidden.2.weight", "hidden.2.bias"])


class _Record:
    """A minimal step record: u of one layer and a deterministic surrogate."""

    def __init__(self, u, sur):
        self.u, self.spikes, self.surrogate, self.v_th = [u], [(u > 1.0).double()], sur, 1.0


@pytest.mark.parametrize("cls", [OTPETrace, ApproxOTPETrace])
def test_gbar_is_the_papers_leaky_mean_of_surrogates(cls):
    """ḡ[T] = (1/T) Σ_{t≤T} λ^{T−t} ψ(u[t]) (OTPE paper section 3.1), naive sum."""
    lam, T = 0.7, 6
    sur = SigmoidSurrogate(0.5)
    lif = LIFParams(lam=lam)
    tr = cls(lif) if cls is OTPETrace else cls(lam)
    us = [torch.randn(3, 4, dtype=torch.float64) + 1.0 for _ in range(T)]
    for u in us:
        tr.push(torch.rand(3, 5, dtype=torch.float64), _Record(u, sur), 0)
    want = sum(lam ** (T - 1 - t) * sur(u, 1.0) for t, u in enumerate(us)) / T
    assert torch.allclose(tr.local_derivative(), want, atol=1e-14)


@pytest.mark.parametrize("cls", [OTPETrace, ApproxOTPETrace])
def test_normalised_gbar_is_a_weighted_mean_of_surrogates(cls):
    """gbar="normalised": ḡ[T] = Σ_t λ^{T−t} ψ(u[t]) / Σ_t λ^{T−t} (weights summing to 1)."""
    lam, T = 0.7, 6
    sur = SigmoidSurrogate(0.5)
    tr = cls(LIFParams(lam=lam), gbar="normalised") if cls is OTPETrace else cls(
        lam, gbar="normalised")
    us = [torch.randn(3, 4, dtype=torch.float64) + 1.0 for _ in range(T)]
    for u in us:
        tr.push(torch.rand(3, 5, dtype=torch.float64), _Record(u, sur), 0)
    weights = [lam ** (T - 1 - t) for t in range(T)]
    want = sum(w * sur(u, 1.0) for w, u in zip(weights, us)) / sum(weights)
    assert torch.allclose(tr.local_derivative(), want, atol=1e-14)
    # a constant ψ gives ḡ = ψ exactly (a mean), where the paper's form gives ψ (1 − λ^T)/((1 − λ)T)
    assert torch.allclose(leaky_mean(torch.full((2,), 3.0), 4, 1.0, "normalised"),
                          torch.full((2,), 0.75))
    with pytest.raises(ValueError, match="normalisation"):
        cls(LIFParams(), gbar="mean") if cls is OTPETrace else cls(0.5, gbar="mean")


def test_gbar_option_reaches_the_traces_from_the_config():
    """--otpe-gbar normalised changes approx-OTPE's gradient (and not OTTT's)."""
    from opzo.build import build_learner
    from opzo.config import TrainConfig

    x, y = _data(DEEP, static=False, T=5)
    grads = {}
    for trace in ("approx_otpe", "ottt"):
        for mode in GBAR_MODES:
            net = _net(DEEP)
            cfg = TrainConfig.from_dict({"method": "bp", "trace": trace, "otpe_gbar": mode})
            learner = build_learner(cfg, net, LOSS)
            assert learner.gbar == mode
            learner.accumulate(x, y, 5)
            grads[trace, mode] = net.hidden[0].weight.grad.clone()
    assert not torch.allclose(grads["approx_otpe", "paper"], grads["approx_otpe", "normalised"])
    assert torch.equal(grads["ottt", "paper"], grads["ottt", "normalised"])


@pytest.mark.parametrize("trace", TRACE_NAMES)
def test_static_input_fast_path_equals_the_repeated_sequence(trace):
    x, y = _data(DEEP, static=True)
    results = []
    for inp in (x, x.expand(5, *x.shape)):
        net = _net(DEEP)
        results.append(_ours(net, trace, inp, y, 5, LOSS))
    _assert_close(results[0], results[1])


@pytest.mark.parametrize("trace", ["ostl", "otpe", "approx_otpe", "f_otpe"])
def test_per_step_updates_flush_the_traces(trace):
    """update="step" with T=1 is one update per batch; with T=4 it runs and stays finite."""
    x, y = _data((7, 9, 8, 4), static=False, T=1)
    params = []
    for update in ("batch", "step"):
        net = _net((7, 9, 8, 4))
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        OnlineLearner(net, SpatialBP(), LOSS, trace=trace, update=update).train_batch(
            x, y, opt, T=1)
        params.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.allclose(a, b) for a, b in zip(*params))
    for static in (True, False):
        x, y = _data((7, 9, 8, 4), static=static, T=4)
        net = _net((7, 9, 8, 4))
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        OnlineLearner(net, SpatialBP(), LOSS, trace=trace, update="step").train_batch(
            x, y, opt, T=4)
        assert all(torch.isfinite(p).all() for p in net.parameters())


# ---------------------------------------------------------------------------------------
# every trace with every rule and every surrogate


def _check_grads(net, rule_name):
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert torch.isfinite(p.grad).all(), name
        if rule_name != "dkp" or name.startswith("readout"):  # DKP's feedback starts at 0
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("trace", TRACE_NAMES)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_trace_runs_with_every_rule(rule, trace):
    torch.manual_seed(2)
    net = SpikingMLP([10, 12, 8, 3], dropout=0.2)
    with torch.no_grad():  # so that both hidden layers spike
        for lin in net.hidden:
            lin.weight.mul_(4.0)
    learner = OnlineLearner(net, RULES.build(rule), trace=trace)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for x in (torch.rand(5, 10) * 3, torch.rand(4, 5, 10) * 3):  # static and per-step input
        learner.train_batch(x, torch.randint(0, 3, (5,)), opt, T=4)
        _check_grads(net, rule)


@pytest.mark.parametrize("trace", TRACE_NAMES)
@pytest.mark.parametrize("surrogate", ["sigmoid", "fast-sigmoid", "localzo"])
def test_every_trace_runs_with_every_surrogate(surrogate, trace):
    torch.manual_seed(3)
    params = {"localzo": {"delta": 0.5}}.get(surrogate, {})
    net = SpikingMLP([10, 12, 8, 3], surrogate=make_surrogate(surrogate, **params))
    with torch.no_grad():  # so that both hidden layers spike
        for lin in net.hidden:
            lin.weight.mul_(4.0)
    x, y = torch.rand(4, 6, 10) * 3, torch.randint(0, 3, (6,))
    for rule in ("bp", "opzo"):
        _zero_grads(net)
        OnlineLearner(net, RULES.build(rule), trace=trace).accumulate(x, y, T=4)
        for name, p in net.named_parameters():
            assert p.grad.shape == p.shape and torch.isfinite(p.grad).all(), (rule, name)
        assert net.readout.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------
# names, memory, configuration


def test_unknown_trace_names_the_allowed_ones():
    for make in (lambda: make_trace("eprop", 0.5), lambda: make_output_trace("eprop", 0.5),
                 lambda: OnlineLearner(SpikingMLP([4, 5, 2]), SpatialBP(), trace="eprop")):
        with pytest.raises(ValueError, match="unknown temporal trace 'eprop'") as err:
            make()
        assert all(name in str(err.value) for name in TRACE_NAMES)


def test_make_trace_builds_what_each_layer_needs():
    lif = LIFParams()
    assert type(make_trace("ottt", lif)) is OTTTTrace
    assert type(make_trace("otpe", lif)) is OTPETrace
    assert type(make_trace("approx_otpe", lif)) is ApproxOTPETrace
    # a layer feeding the memoryless readout: OTPE -> OSTL, approximate OTPE -> OTTT
    assert type(make_trace("otpe", lif, feeds_readout=True)) is OSTLTrace
    assert type(make_trace("approx_otpe", lif, feeds_readout=True)) is OTTTTrace
    # ... unless the loss is on the leaky sum of the outputs (F-variants)
    assert type(make_trace("f_otpe", lif, feeds_readout=True)) is OTPETrace
    assert type(make_trace("f_approx_otpe", lif, feeds_readout=True)) is ApproxOTPETrace
    assert make_output_trace("otpe", 0.5).leak == 0.0
    assert make_output_trace("f_otpe", 0.5).leak == 0.5


@pytest.mark.parametrize("trace,order", [("ottt", 1), ("approx_otpe", 1), ("ostl", 2),
                                         ("otpe", 2)])
def test_trace_memory_per_sample_follows_table_1(trace, order):
    """OTPE paper Table 1: O(n) for OTTT and approximate OTPE, O(n²) for OSTL and OTPE."""
    per_sample = []
    for n in (16, 64):
        tr = make_trace(trace, LIFParams())
        u = torch.randn(2, n) + 1.0
        rec = _Record(u, SigmoidSurrogate())
        for _ in range(3):
            tr.push(torch.rand(2, n), rec, 0)
        per_sample.append(tr.state_nbytes() / 2)
    ratio = per_sample[1] / per_sample[0]
    assert 0.8 * 4**order < ratio <= 4**order * 1.01, ratio  # n × 4 → memory × 4 or × 16


def test_config_trace_option_reaches_the_learner(tmp_path):
    import argparse

    from opzo.build import build_learner
    from opzo.config import ConfigError, TrainConfig, add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--trace", "f_otpe"]), None)
    assert cfg.trace == "f_otpe"
    net = SpikingMLP([4, 5, 2])
    learner = build_learner(cfg, net, InstantLoss())
    assert learner.trace_name == "f_otpe"
    with pytest.raises(ConfigError, match="approx_otpe"):
        TrainConfig(trace="eprop").validate()
    with pytest.raises(ConfigError, match="bptt"):
        TrainConfig(method="bptt", trace="otpe").validate()


@pytest.mark.parametrize("static", [True, False])
def test_bptt_learner_with_an_output_leak_is_exact_for_the_f_loss(static):
    """BPTTLearner(output_leak=λ) is the F-variants' reference: the exact gradient of the
    loss on O[t] = λ O[t−1] + o[t]; F-OTPE on one hidden layer matches it, so the diagnostics'
    cosine of F-OTPE with BPTT is 1."""
    from opzo.diagnostics import gradient_cosine

    sizes = (7, 9, 4)
    net = _net(sizes, dropout=0.0)
    x, y = _data(sizes, static)
    lam = net.neuron.lam
    for p in net.parameters():
        p.grad = None
    BPTTLearner(net, LOSS, output_leak=lam).accumulate(x, y, T=5)
    ours = {n: p.grad.clone() for n, p in net.named_parameters()}
    _assert_close(ours, bptt_reference(net, x, y, 5, LOSS, output_leak=lam))
    cos = gradient_cosine(net, SpatialBP(), x, y, 5, LOSS, reference="bptt", trace="f_otpe")
    assert all(c > 1 - 1e-9 for c in cos.values()), cos
    # against the plain-loss BPTT it would not be exact (the test can fail)
    plain = bptt_reference(net, x, y, 5, LOSS)
    assert _differ(plain["hidden.0.weight"], ours["hidden.0.weight"])


def _bptt_outputs(net, x, masks):
    """o[t] of a forward pass with the given dropout masks (the LIF step written out)."""
    static = x.dim() == 2
    batch = masks[0].shape[0]
    u = [x.new_zeros(batch, n) for n in net.hidden_sizes]
    s = [x.new_zeros(batch, n) for n in net.hidden_sizes]
    outs = []
    for t in range(5):
        inp = x if static else x[t]
        for l, layer in enumerate(net.hidden):
            u[l] = _lif(net.neuron, u[l], s[l], layer(inp))
            s[l] = (u[l] > net.neuron.v_th).to(u[l].dtype)
            inp = s[l] * masks[l]
        outs.append(net.readout(inp))
    return outs


@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("static", [True, False])
def test_bptt_learner_with_a_max_over_time_readout_is_exact(static, detach_reset):
    """BPTTLearner(readout=MaxOverTime(λ_o)) is the exact gradient of the loss on
    max_t Y[t], Y[t] = λ_o Y[t−1] + o[t] (SparseGrad's readout), with or without the
    reset detached; its accuracy is that of the max scores."""
    from opzo.losses import MaxOverTime

    sizes = (7, 9, 8, 4)
    net = _net(sizes, dropout=0.3)
    x, y = _data(sizes, static)
    masks = _masks(net, 6)
    _zero_grads(net)
    stats = BPTTLearner(net, LOSS, readout=MaxOverTime(0.8),
                        detach_reset=detach_reset).accumulate(x, y, T=5, masks=masks)
    ours = _collect(net)
    ref = bptt_layers_autograd_grads(net, x, y, 5, LOSS, masks=masks, max_leak=0.8,
                                     detach_reset=detach_reset)
    _assert_close(ours, ref, atol=1e-12)
    assert ref["hidden.0.weight"].abs().sum() > 0
    # the accuracy it reports is that of the max scores
    with torch.no_grad():
        scores = MaxOverTime(0.8).scores(_bptt_outputs(net, x, masks))
    assert stats.correct == int((scores.argmax(1) == y).sum())
    # either change is visible in the gradient (so the test can fail)
    other = bptt_layers_autograd_grads(net, x, y, 5, LOSS, masks=masks, max_leak=0.8,
                                       detach_reset=not detach_reset)
    assert _differ(other["hidden.0.weight"], ours["hidden.0.weight"])
    summed = bptt_reference(net, x, y, 5, LOSS, masks=masks)
    assert _differ(summed["readout.weight"], ours["readout.weight"])


def test_max_over_time_scores_and_evaluation():
    """MaxOverTime's scores are the maxima of the leaky integrals (a hand-computed case),
    and evaluate_batch classifies by them instead of by Σ_t o[t]."""
    from opzo import evaluate_batch
    from opzo.losses import MaxOverTime

    o = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]])]
    # Y = (2, 0), (1, 1), (0.5, 1.5): maxima (2, 1.5); Σ o = (2, 2)
    scores = MaxOverTime(0.5).scores(o)
    assert torch.allclose(scores, torch.tensor([[2.0, 1.5]]))
    assert torch.allclose(MaxOverTime(0.0).scores(o), torch.tensor([[2.0, 1.0]]))
    with pytest.raises(ValueError, match="leak"):
        MaxOverTime(1.0)

    sizes = (7, 9, 4)
    net = _net(sizes, dropout=0.0)
    x, y = _data(sizes, static=False, batch=40)
    readout = MaxOverTime(0.7)
    with torch.no_grad():
        outs = [o for o, _ in net.run(x)]
    want_max = readout.scores(outs).argmax(1)
    want_sum = torch.stack(outs).sum(0).argmax(1)
    assert (want_max != want_sum).any()  # the two readouts disagree somewhere here
    got = evaluate_batch(net, x, y, LOSS, readout=readout)
    assert got.correct == int((want_max == y).sum())
    assert got.loss_sum == pytest.approx(float(LOSS.per_sample(readout.scores(outs), y).sum()))
    assert evaluate_batch(net, x, y, LOSS).correct == int((want_sum == y).sum())
