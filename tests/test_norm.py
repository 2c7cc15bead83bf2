"""Batch normalisation (issue 26 piece 1, :mod:`opzo.norm`): ``bn`` (per-step statistics),
``tdbn`` (over batch, time and space, scaled by α·V_th) and ``bn-all-t`` (over all steps).

References: ``F.batch_norm`` for the forward values and running averages (tdBN with its
weight multiplied by α·V_th, the sequence kinds on the T·B rows stacked); autograd for the
explicit transposes; a plain-torch conv net (F.conv2d, F.batch_norm, the LIF of eq. 1 with
the surrogate) for BPTT and for untruncated PZO with exact errors at the features.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from opzo import InstantLoss, OnlineLearner, SpatialBP, SpikingNet
from opzo.bptt import BPTTLearner
from opzo.build import build_network
from opzo.config import ConfigError, TrainConfig
from opzo.layers import ConvLayer, DenseLayer
from opzo.nets import ResNet19
from opzo.norm import Normed, SequenceNormError, apply_norm, normed_layers, whole_sequence
from opzo.pzo import TemporalFeedback, UnrolledBatch, UntruncatedLearner
from opzo.surrogate import spike_with_surrogate

LOSS = InstantLoss("mix", 0.3)


def _bn_ref(y4, layer: Normed, training=True, rm=None, rv=None):
    return F.batch_norm(y4, rm, rv, layer.bn_weight * layer.scale, layer.bn_bias,
                        training=training, momentum=0.1, eps=1e-5)


@pytest.mark.parametrize("kind", ["bn", "tdbn", "bn-all-t"])
def test_forward_values_and_running_averages_equal_torch_batch_norm(kind):
    torch.manual_seed(0)
    conv = ConvLayer((2, 5, 5), 3, 3).double()
    layer = Normed(conv, kind, alpha=1 / math.sqrt(2), v_th=0.7).double()
    assert layer.scale == (0.7 / math.sqrt(2) if kind == "tdbn" else 1.0)
    with torch.no_grad():
        layer.bn_weight.uniform_(0.5, 1.5)
        layer.bn_bias.uniform_(-0.5, 0.5)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    T, B = 3, 4
    xs = [torch.randn(B, 50, dtype=torch.float64) + t for t in range(T)]
    with torch.no_grad(), whole_sequence(layer):
        if kind == "bn":  # one call per step, statistics of that step
            for x in xs:
                y4 = F.conv2d(x.reshape(B, 2, 5, 5), conv.weight, conv.bias, padding=1)
                ref = _bn_ref(y4, layer, rm=rm, rv=rv)
                assert torch.allclose(layer.op(x), ref.flatten(1), atol=1e-12)
        else:  # one call on the T·B rows: statistics over batch, time and space
            x = torch.cat(xs)
            y4 = F.conv2d(x.reshape(T * B, 2, 5, 5), conv.weight, conv.bias, padding=1)
            ref = _bn_ref(y4, layer, rm=rm, rv=rv)
            out = layer.op(x)
            assert torch.allclose(out, ref.flatten(1), atol=1e-12)
            # and by hand: mean 0, variance (α V_th γ)² per channel before the shift
            z = (out.reshape(T * B, 3, 25) - layer.bn_bias[:, None])
            z = z / (layer.bn_weight * layer.scale)[:, None]
            assert torch.allclose(z.mean(dim=(0, 2)), torch.zeros(3, dtype=z.dtype),
                                  atol=1e-12)
            assert torch.allclose(z.var(dim=(0, 2), unbiased=False),
                                  torch.ones(3, dtype=z.dtype), atol=1e-3)
    assert torch.allclose(layer.running_mean, rm, atol=1e-12)
    assert torch.allclose(layer.running_var, rv, atol=1e-12)
    assert float((rm).abs().max()) > 0.01 and float((rv - 1).abs().max()) > 0.01  # moved
    layer.eval()  # evaluation: the running averages, one step at a time (causal)
    with torch.no_grad():
        y4 = F.conv2d(xs[0].reshape(B, 2, 5, 5), conv.weight, conv.bias, padding=1)
        ref = _bn_ref(y4, layer, training=False, rm=rm, rv=rv)
        assert torch.allclose(layer.op(xs[0]), ref.flatten(1), atol=1e-12)


@pytest.mark.parametrize("kind,training", [("bn", True), ("bn", False), ("tdbn", True),
                                           ("bn-all-t", True)])
@pytest.mark.parametrize("dense", [False, True])
def test_explicit_transposes_equal_autograd(kind, training, dense):
    """input_grad and accumulate_grad (γ, β, the op's W and b) = autograd of ⟨δ, BN(op(x))⟩,
    in training mode (batch statistics: the samples are coupled) and evaluation mode."""
    torch.manual_seed(1)
    inner = (DenseLayer(12, 5) if dense else ConvLayer((2, 6, 6), 3, 3, pool=2)).double()
    layer = Normed(inner, kind, alpha=0.8, v_th=1.3).double()
    with torch.no_grad():
        layer.bn_weight.uniform_(0.5, 1.5)
        layer.bn_bias.uniform_(-0.5, 0.5)
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    layer.train(training)
    x = torch.randn(7, inner.in_features if dense else 72, dtype=torch.float64,
                    requires_grad=True)
    delta = torch.randn(7, layer.out_features, dtype=torch.float64)
    with whole_sequence(layer):
        out = layer(x)
        params = list(layer.parameters())
        grads = torch.autograd.grad((delta * out).sum(), [x, *params], allow_unused=True)
        with torch.no_grad():
            layer.op(inner.op_input(x))  # the forward of these rows (statistics)
            gx = layer.input_grad(delta)
            for p in layer.parameters():
                p.grad = None
            layer.accumulate_grad(delta, inner.op_input(x), 1.0)
    assert torch.allclose(gx, grads[0], atol=1e-10)
    assert float(grads[0].abs().max()) > 1e-3
    for p, g in zip(params, grads[1:]):
        if g is None:  # the gain of an unstandardized conv: unused
            continue
        assert p.grad is not None
        assert torch.allclose(p.grad, g, atol=1e-10), (float((p.grad - g).abs().max()))
    # β is a bias, a synapse from a constant 1: with OTTT's trace b̂ its gradient is b̂ Σ δ
    layer.bn_bias.grad = None
    with torch.no_grad(), whole_sequence(layer):
        layer.accumulate_grad(delta, inner.op_input(x), 1.7)
    k = next(i for i, p in enumerate(params) if p is layer.bn_bias)
    assert torch.allclose(layer.bn_bias.grad, 1.7 * grads[1 + k])


# ---------------------------------------------------------------------------------------
# a plain-torch conv net: conv (no standardization) -> BN -> LIF, readout


def _norm_net(kind, seed=0):
    torch.manual_seed(seed)
    net = SpikingNet("3C3-4C3-FC", (2, 5, 5), 3).double()
    apply_norm(net, kind)
    with torch.no_grad():
        for layer in normed_layers(net):
            layer.bn_weight.uniform_(1.0, 2.0)
            layer.bn_bias.uniform_(0.3, 1.0)
        net.readout.weight.mul_(3.0)
    return net


def _ref_outputs(net, x, T, kind, keep=None):
    """o[t] of the net by torch primitives, layer by layer over the T steps (the values are
    those of the step-by-step order; the sequence kinds need all steps of a layer first)."""
    lif = net.neuron
    static = x.dim() == 2
    B = x.shape[0] if static else x.shape[1]
    inp = [x] * T if static else list(x)
    for l, layer in enumerate(net.hidden):
        conv = layer.inner
        c_in = conv.in_shape

        def cur_of(v, conv=conv, c_in=c_in):
            return F.conv2d(v.reshape(v.shape[0], *c_in), conv.weight, conv.bias, padding=1)

        if kind == "bn":
            cur = [_bn_ref(cur_of(v), layer).flatten(1) for v in inp]
        else:
            stacked = _bn_ref(cur_of(torch.cat(inp)), layer).flatten(1)
            cur = list(stacked.split(B))
        u = s = torch.zeros_like(cur[0])
        feats = []
        for t in range(T):
            u = lif.lam * (u - lif.v_th * s) + cur[t]
            s = spike_with_surrogate(u, lif.v_th, net.surrogate)
            f = s.clone()  # a node of its own (the reset reads s, the next layer f)
            if keep is not None:
                keep[l].append(f)
            feats.append(f)
        inp = feats
    return [F.linear(v, net.readout.weight, net.readout.bias) for v in inp]


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind,static", [("bn", False), ("bn", True), ("tdbn", True),
                                         ("tdbn", False), ("bn-all-t", False)])
def test_bptt_with_norm_equals_a_plain_torch_reference(kind, static):
    net = _norm_net(kind)
    T, B = 3, 4
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(B, 50, generator=g, dtype=torch.float64) * 2 if static
         else torch.rand(T, B, 50, generator=g, dtype=torch.float64) * 2)
    y = torch.tensor([0, 2, 1, 1])
    net.zero_grad(set_to_none=True)
    BPTTLearner(net, LOSS).accumulate(x, y, T=T)
    ours = _grads(net)
    net.zero_grad(set_to_none=True)
    outs = _ref_outputs(net, x, T, kind)
    (sum(LOSS.per_sample(o, y).mean() for o in outs) / T).backward()
    ref = _grads(net)
    assert set(ours) == set(ref)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=1e-10), (k, float((ours[k] - ref[k])
                                                                      .abs().max()))
    moving = [k for k in ref if float(ref[k].abs().max()) > 1e-8]
    assert {"hidden.0.bn_weight", "hidden.0.inner.weight", "hidden.1.bn_bias"} <= set(moving)
    # the statistics matter: the sequence kinds and per-step BN give other gradients
    if kind == "tdbn" and not static:
        net.zero_grad(set_to_none=True)
        outs = _ref_outputs(net, x, T, "bn")
        (sum(LOSS.per_sample(o, y).mean() for o in outs) / T).backward()
        other = _grads(net)
        assert not torch.allclose(other["hidden.0.inner.weight"],
                                  ref["hidden.0.inner.weight"], atol=1e-6)


class _ExactErrors(TemporalFeedback):
    """g_l[t] = ∂(Σ_t' ⟨e[t'], o[t']⟩)/∂x_l[t] by autograd through the plain-torch net (the
    whole batch: batch norm couples the samples)."""

    name = "exact"

    def __init__(self, net, kind):
        self.net, self.kind = net, kind

    def errors(self, e, batch: UnrolledBatch):
        with torch.enable_grad():
            keep = [[] for _ in self.net.hidden]
            outs = _ref_outputs(self.net, batch.x, batch.T, self.kind, keep=keep)
            total = sum((e[t] * o).sum() for t, o in enumerate(outs))
            feats = [f for per in keep for f in per]
            grads = torch.autograd.grad(total, feats)
        T = batch.T
        return torch.cat([torch.stack(grads[l * T:(l + 1) * T]) for l in range(len(keep))],
                         dim=2)


@pytest.mark.parametrize("static", [False, True])
def test_untruncated_pzo_with_bn_along_all_steps_and_exact_errors_gives_bptt(static):
    """Untruncated PZO's layer-major forward and its weight gradients through the normaliser
    over all T·B rows: with the exact errors at the features in place of M, BPTT's gradient."""
    net = _norm_net("bn-all-t", seed=2)
    T, B = 3, 4
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(B, 50, generator=g, dtype=torch.float64) * 2 if static
         else torch.rand(T, B, 50, generator=g, dtype=torch.float64) * 2)
    y = torch.tensor([0, 2, 1, 1])
    learner = UntruncatedLearner(net, _ExactErrors(net, "bn-all-t"), steps=T, loss=LOSS)
    net.zero_grad(set_to_none=False)
    learner.accumulate(x, y, T)
    ours = _grads(net)
    net.zero_grad(set_to_none=False)
    BPTTLearner(net, LOSS).accumulate(x, y, T=T)
    ref = _grads(net)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=1e-10), (k, float((ours[k] - ref[k])
                                                                      .abs().max()))
    assert float(ref["hidden.0.inner.weight"].abs().max()) > 1e-6


def test_online_bp_with_per_step_bn_equals_the_instantaneous_gradient_on_resnet19():
    """At T = 1 the online rule's gradient is the instantaneous one: spatial BP through
    ResNet-19 with per-step BN (its projection shortcuts' too) equals autograd (BPTT at T=1,
    whose normaliser the forward test checks against F.batch_norm)."""
    torch.manual_seed(0)
    net = ResNet19((2, 8, 8), 4, width=1 / 32, norm="bn").double()
    assert sum(1 for _ in normed_layers(net)) == 1 + 2 * 8 + 2  # every conv, projections too
    x = 2.0 * torch.randn(3, 128, dtype=torch.float64)
    y = torch.tensor([0, 1, 3])
    net.zero_grad(set_to_none=True)
    OnlineLearner(net, SpatialBP(), LOSS).accumulate(x, y, T=1)
    ours = _grads(net)
    net.zero_grad(set_to_none=True)
    BPTTLearner(net, LOSS).accumulate(x, y, T=1)
    ref = _grads(net)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=1e-10), (k, float((ours[k] - ref[k])
                                                                      .abs().max()))
    assert sum(float(v.abs().max()) > 1e-8 for v in ref.values()) > 0.6 * len(ref)


def test_sequence_norms_are_refused_where_a_step_would_see_the_future():
    base = dict(dataset="embedded-mnist", net="4C3-FC")
    for kind in ("tdbn", "bn-all-t"):
        for method in ("bp", "dfa", "opzo"):
            with pytest.raises(ConfigError, match=f"norm '{kind}' normalises over all time "
                                                  f"steps.*method 'bptt'"):
                TrainConfig(**base, norm=kind, method=method).validate()
        TrainConfig(**base, norm=kind, method="bptt").validate()  # allowed
        # the diagnostics' online reference gradient would see the future too
        with pytest.raises(ConfigError, match="--diag-reference bptt"):
            TrainConfig(**base, norm=kind, method="bptt", diagnostics=True).validate()
        TrainConfig(**base, norm=kind, method="bptt", diagnostics=True,
                    diag_reference="bptt").validate()
    TrainConfig(**base, norm="bn", method="opzo").validate()  # per-step statistics: online ok
    with pytest.raises(ConfigError, match="has none"):
        TrainConfig(dataset="embedded-mnist", norm="bn").validate()
    with pytest.raises(ConfigError, match="normaliser-free"):
        TrainConfig(dataset="embedded-mnist", net="nfresnet34", norm="bn").validate()
    # a config without the key (older runs) means none
    assert TrainConfig.from_dict({"dataset": "embedded-mnist"}).norm == "none"
    # the network built from a config; an online learner on a sequence norm stops at once
    net = build_network(TrainConfig(**base, norm="tdbn", method="bptt", dropout=0.0),
                        (1, 28, 28), 10)
    assert [m.kind for m in normed_layers(net)] == ["tdbn"]
    x, y = torch.rand(2, 784), torch.tensor([1, 2])
    with pytest.raises(SequenceNormError, match="one step cannot be trained"):
        OnlineLearner(net, SpatialBP(), LOSS).accumulate(x, y, T=2)
    net.eval()
    assert net(x, T=2).shape == (2, 10)  # evaluation: running averages, step by step
    with pytest.raises(ValueError, match="not per-step statistics"):
        UntruncatedLearner(_norm_net("bn"), _ExactErrors(None, "bn"), steps=2)
    with pytest.raises(ValueError, match="normaliser-free"):
        from opzo.nets import NFResNet
        apply_norm(NFResNet((2, 16, 16), 4, width=1 / 16, blocks=(1, 1, 1, 1)), "bn")


def test_command_line_refusals_are_one_line(tmp_path, capsys):
    from opzo.cli import main

    base = ["train", "--net", "4C3-FC", "--epochs", "1", "--out", str(tmp_path / "r")]
    assert main([*base, "--norm", "tdbn", "--method", "dfa"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("opzo: error: norm 'tdbn' normalises over all time steps")
    assert "\n" not in err
    # batch statistics per process would make the result depend on the number of processes
    assert main([*base, "--norm", "bn", "--nproc", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("opzo: error: norm 'bn' with several processes") and "\n" not in err


def test_table13_bn_row_on_the_command_line(tmp_path, capsys):
    """opzo train --method pzo / dfa-time with BN along all time steps (Table 13's second
    row): an epoch and opzo eval; per-step statistics refused for them in one line."""
    import json

    from opzo.cli import main

    for method in ("pzo", "dfa-time"):
        TrainConfig(dataset="embedded-mnist", net="4C3-FC", method=method,
                    norm="bn-all-t").validate()
        out = tmp_path / method
        assert main(["train", "--net", "4C3-AP2-8C3-FC", "--method", method, "--norm",
                     "bn-all-t", "--epochs", "1", "--limit-train", "64", "--limit-test", "32",
                     "--batch-size", "32", "--T", "2", "--out", str(out), "--quiet"]) == 0
        rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["epoch"] == 1 and 0.0 <= rows[-1]["test_acc"] <= 100.0
        assert main(["eval", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--net", "4C3-FC", "--method", "pzo", "--norm", "bn", "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("opzo: error: method 'pzo' takes batch norm along all time steps")
    assert "\n" not in err
