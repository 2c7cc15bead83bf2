"""Convolutional SNNs: network strings, explicit rules against autograd, OPZO's M, training.

The references (tests/reference.py) write every op again with torch primitives (sWS from the
raw parameters, F.avg_pool2d, F.conv2d, F.linear) and differentiate by autograd, so they
share nothing with the layers' explicit maps (op_input, input_grad, accumulate_grad).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from opzo import (
    NETS,
    OPZO,
    InstantLoss,
    NoiseSampler,
    OnlineLearner,
    SpatialBP,
    SpikingMLP,
    SpikingNet,
    parse_net,
)
from opzo.bptt import BPTTLearner
from opzo.build import build_network, make_source
from opzo.cli import main
from opzo.config import ConfigError, TrainConfig
from opzo.layers import ConvLayer, DenseLayer
from opzo.netstring import net_string
from opzo.neuron import LIFParams
from opzo.rules import RULES
from opzo.rules.base import StepContext
from opzo.traces import make_trace, trace_names
from opzo.train import Interrupted, run_training

from .reference import bptt_layers_autograd_grads, presynaptic_autograd_grads, spiky_net

TRACE_NAMES = trace_names()


# (network string, input shape): pooling between convs, pooling of the input, floor-mode
# pooling (5x5 -> 2x2), a hidden FC layer after a conv, a 1x1 conv, pooling before the readout
NETS_UNDER_TEST = [
    ("4C3-AP2-6C3-FC", (2, 6, 6)),
    ("AP2-4C3-AP2-5-FC", (1, 10, 10)),
    ("3C3-5C1-GAP-FC", (1, 5, 5)),
    ("4C3-AP2-FC", (1, 6, 6)),
    # residual shortcuts: around one conv, around two layers, and fully connected
    ("3C3-3C3+-AP2-4C3-4C3-4C3+2-FC", (1, 6, 6)),
    ("6-6+-6+2-FC", (5,)),
]


def _grads(net):
    return {name: p.grad.clone() for name, p in net.named_parameters()}




def _data(shape, static, T=4, batch=5, outputs=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    if static:
        x = torch.randn(batch, math.prod(shape), generator=g, dtype=torch.float64)
    else:
        x = (torch.rand(T, batch, math.prod(shape), generator=g, dtype=torch.float64)
             < 0.4).double()
    return x, torch.randint(0, outputs, (batch,), generator=g)


def _assert_close(ours, ref, atol=1e-10):
    assert ours.keys() == ref.keys()
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=atol, rtol=1e-7), (
            k, float((ours[k] - ref[k]).abs().max()))


def _ours(net, x, y, T, loss, rule=None, trace="ottt", masks=None):
    for p in net.parameters():
        p.grad = None
    OnlineLearner(net, rule or SpatialBP(), loss, trace=trace).accumulate(x, y, T=T, masks=masks)
    return _grads(net)


# ---------------------------------------------------------------------------------------
# network strings


def test_paper_networks_parse_to_the_expected_layers_and_neurons():
    net5 = SpikingNet("conv5", (1, 28, 28), 10)
    assert net5.spec == NETS["conv5"] == "128C3-AP2-256C3-AP2-512C3-FC"
    assert [layer.token for layer in net5.hidden] == ["128C3", "AP2-256C3", "AP2-512C3"]
    assert net5.hidden_sizes == [128 * 28 * 28, 256 * 14 * 14, 512 * 7 * 7]
    assert net5.readout.in_features == 512 * 7 * 7 and net5.num_outputs == 10
    assert all(isinstance(layer, ConvLayer) and layer.kernel_size == 3 and layer.padding == 1
               for layer in net5.hidden)

    net9 = SpikingNet(NETS["conv9"], (1, 28, 28), 10)
    assert [layer.out_channels for layer in net9.hidden] == [64, 128, 256, 256, 512, 512,
                                                             512, 512]
    assert [layer.out_shape[1] for layer in net9.hidden] == [28, 28, 14, 14, 7, 7, 3, 3]
    assert [layer.pool for layer in net9.hidden] == [None, None, (2, 2), None, (2, 2), None,
                                                     (2, 2), None]
    assert net9.hidden_sizes == [64 * 784, 128 * 784, 256 * 196, 256 * 196, 512 * 49,
                                 512 * 49, 512 * 9, 512 * 9]
    # on 32x32 (CIFAR) the last maps are 4x4, as in the paper's networks
    assert SpikingNet("conv9", (3, 32, 32), 10).hidden_sizes[-1] == 512 * 16


def test_width_scales_channels_and_names_are_case_insensitive():
    net = SpikingNet("CONV5", (1, 28, 28), 10, width=0.25)
    assert net.spec == "32C3-AP2-64C3-AP2-128C3-FC"
    assert net.hidden_sizes == [32 * 784, 64 * 196, 128 * 49]
    assert [str(t) for t in parse_net("conv9", 0.125)][:3] == ["8C3", "16C3", "AP2"]
    assert str(parse_net("1C3-FC", 0.01)[0]) == "1C3"  # at least one channel
    assert [str(t) for t in parse_net("8c5-ap2-gap-fc".replace("-gap", ""))] == [
        "8C5", "AP2", "FC"]
    assert parse_net("100-FC", 0.5)[0].size == 50
    # the FC net as a string is the same network as SpikingMLP
    torch.manual_seed(0)
    a = SpikingMLP([12, 7, 5, 3])
    torch.manual_seed(0)
    b = SpikingNet("7-5-FC", 12, 3)
    assert a.sizes == b.sizes == [12, 7, 5, 3]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("spec,match", [
    ("128C3-X3-FC", r"unknown layer token 'X3'.*use <n>C<k> .*AP<k> .*FC \(the readout"),
    ("128C3-AP2", "readout 'FC' must appear once, as the last token"),
    ("FC-128C3", "readout 'FC' must appear once"),
    ("AP2-FC", "no hidden layer"),
    ("128C3--FC", "empty layer token"),
    ("", "empty network string"),
    ("8C3-AP2-AP2-FC", "two pooling tokens in a row"),
    ("64-8C3-FC", "cannot follow a fully connected layer"),
    ("64-AP2-FC", "pooling .* after a fully connected layer"),
    ("0C3-FC", "must be >= 1"),
    ("conv7", "unknown layer token 'conv7'.*conv5, .*conv9"),
])
def test_malformed_network_strings_say_what_is_allowed(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_net(spec)


def test_residual_networks_parse_and_shortcuts_need_equal_shapes():
    tokens = parse_net("8C3-8C3+-AP2-16C3-16C3-16C3+2-10-10+-FC")
    assert [t.skip for t in tokens] == [0, 1, 0, 0, 0, 2, 0, 1, 0]
    assert net_string(tokens) == "8C3-8C3+-AP2-16C3-16C3-16C3+2-10-10+-FC"
    net = SpikingNet("8C3-8C3+-AP2-16C3-16C3-16C3+2-10-10+-FC", (1, 8, 8), 3)
    assert net.skips == [None, 0, None, None, 2, None, 5]
    assert SpikingNet("conv9r", (1, 28, 28), 10).skips == [None, None, None, 2, None, 4,
                                                            None, 6]
    # ResNet-18 / -34: 17 / 33 conv layers, then the readout; every block has a shortcut
    r18 = SpikingNet("resnet18", (3, 32, 32), 10, width=0.125)
    r34 = SpikingNet("resnet34", (3, 32, 32), 10, width=0.125)
    assert len(r18.hidden) == 17 and len(r34.hidden) == 33
    assert sum(j is not None for j in r18.skips) == 8
    assert sum(j is not None for j in r34.skips) == 16
    assert r18.readout.in_features == 64  # 512 x 0.125 channels after global pooling
    with pytest.raises(ValueError, match="a shortcut needs equal shapes"):
        SpikingNet("8C3-16C3+-FC", (1, 8, 8), 3)
    with pytest.raises(ValueError, match="a shortcut needs equal shapes"):
        SpikingNet("8C3-AP2-8C3+-FC", (1, 8, 8), 3)
    with pytest.raises(ValueError, match="only 1 hidden layers precede it"):
        parse_net("8C3-8C3+2-FC")
    with pytest.raises(ValueError, match="only 0 hidden layers"):
        parse_net("8C3+-FC")


def test_residual_shortcut_adds_the_source_spikes_to_the_current():
    """I_l = op_l(x_{l−1}) + b_l + x_j: with zero weights and biases, layer 2 integrates
    exactly what layer 0 delivered."""
    net = SpikingNet("4-4-4+2-FC", (3,), 2).double()
    with torch.no_grad():
        net.hidden[0].weight.fill_(2.0)
        net.hidden[0].bias.zero_()
        for layer in net.hidden[1:]:
            layer.weight.zero_()
            layer.bias.zero_()
    x = torch.ones(1, 3, dtype=torch.float64)
    state = net.initial_state(1, x)
    _, rec = net.step(state, x)
    assert torch.equal(rec.spikes[0], torch.ones(1, 4, dtype=torch.float64))
    assert torch.equal(rec.u[1], torch.zeros(1, 4, dtype=torch.float64))
    assert torch.equal(rec.u[2], rec.out[0])


def test_network_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"needs an image-shaped input \(C, H, W\)"):
        SpikingNet("8C3-FC", 784, 10)
    with pytest.raises(ValueError, match="does not fit a 1x1"):
        SpikingNet("8C3-AP2-8C3-AP2-FC", (1, 2, 2), 10)
    with pytest.raises(ValueError, match="width"):
        parse_net("conv5", width=0.0)


def test_inputs_shaped_or_flat_give_the_same_output_and_bad_shapes_are_named():
    net = spiky_net("4C3-AP2-6C3-FC", (2, 6, 6))
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    torch.manual_seed(0)
    a = net(x, T=3)
    assert torch.equal(a, net(x.flatten(1), T=3))
    seq = x.expand(3, *x.shape)
    assert torch.allclose(a, net(seq)) and torch.allclose(a, net(seq.flatten(2)))
    with pytest.raises(ValueError, match=r"\(B, 2, 6, 6\) or \(B, 72\) static"):
        net(torch.zeros(3, 1, 6, 6), T=2)
    with pytest.raises(ValueError, match="expects 72"):
        net(torch.zeros(3, 71), T=2)


# ---------------------------------------------------------------------------------------
# explicit gradients against autograd


@pytest.mark.parametrize("spec,shape", NETS_UNDER_TEST)
def test_conv_bp_equals_autograd_for_one_step(spec, shape):
    net = spiky_net(spec, shape)
    x, y = _data(shape, static=True)
    loss = InstantLoss("mix", 0.3)
    ours = _ours(net, x, y, 1, loss)
    ref = presynaptic_autograd_grads(net, x, y, 1, loss)
    _assert_close(ours, ref)
    # every parameter gets a gradient, including the sWS gains, and the test can fail
    assert all(g.abs().sum() > 0 for g in ref.values())
    assert "hidden.0.gain" in ref or not isinstance(net.hidden[0], ConvLayer)


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("spec,shape", NETS_UNDER_TEST)
def test_conv_bp_equals_autograd_ottt_over_time(spec, shape, reset, static):
    """OTTT: spatial BP within each step, detached temporal state, accumulated over T."""
    net = spiky_net(spec, shape, lif=LIFParams(reset=reset), dropout=0.3)
    x, y = _data(shape, static, T=5)
    masks = net.dropout_masks(5, x)
    loss = InstantLoss("mix", 0.05)
    ours = _ours(net, x, y, 5, loss, masks=masks)
    ref = presynaptic_autograd_grads(net, x, y, 5, loss, masks=masks)
    _assert_close(ours, ref)
    assert masks is not None and ref["hidden.0.weight"].abs().sum() > 0
    # OTTT is not the exact BPTT gradient: the references tell them apart
    exact = bptt_layers_autograd_grads(net, x, y, 5, loss)
    ottt = presynaptic_autograd_grads(net, x, y, 5, loss)
    assert not torch.allclose(exact["hidden.0.weight"], ottt["hidden.0.weight"], atol=1e-6)


def test_conv_bp_float32_matches_float64_autograd_to_1e_5():
    net = spiky_net("4C3-AP2-6C3-FC", (2, 6, 6))
    x, y = _data((2, 6, 6), static=False, T=4)
    loss = InstantLoss("mix", 0.05)
    ref = presynaptic_autograd_grads(net, x, y, 4, loss)
    ours = _ours(net.float(), x.float(), y, 4, loss)
    for k in ref:
        scale = float(ref[k].abs().max())
        assert float((ours[k].double() - ref[k]).abs().max()) <= 1e-5 * max(scale, 1.0), k


@pytest.mark.parametrize("static", [True, False])
def test_approx_otpe_on_conv_layers_equals_its_autograd_construction(static):
    """Approximate OTPE keeps a presynaptic trace ẑ = λ ẑ + â, so it works on conv layers too
    (∇W = conv weight-gradient of δ against ẑ, ḡ in place of ψ)."""
    spec, shape = "4C3-AP2-6C3-5-FC", (1, 6, 6)
    net = spiky_net(spec, shape)
    x, y = _data(shape, static, T=5)
    loss = InstantLoss("mix", 0.2)
    ours = _ours(net, x, y, 5, loss, trace="approx_otpe")
    _assert_close(ours, presynaptic_autograd_grads(net, x, y, 5, loss, kind="approx_otpe"))
    ottt = _ours(net, x, y, 5, loss)
    assert not torch.allclose(ours["hidden.0.weight"], ottt["hidden.0.weight"], atol=1e-6)


@pytest.mark.parametrize("trace", ["ostl", "otpe", "f_ostl", "f_otpe"])
def test_per_synapse_traces_refuse_conv_layers(trace):
    net = SpikingNet("4C3-FC", (1, 4, 4), 3)
    with pytest.raises(ValueError, match="fully connected layers only.*4C3.*'ottt'"):
        OnlineLearner(net, SpatialBP(), trace=trace)
    with pytest.raises(ValueError, match="fully connected layers only"):
        make_trace(trace, LIFParams(), layer=net.hidden[0])
    with pytest.raises(ConfigError, match="fully connected layers only"):
        TrainConfig(net="4C3-FC", trace=trace).validate()
    # a dense layer after the convs is fine for the trace itself
    assert make_trace(trace, LIFParams(), layer=DenseLayer((3, 2, 2), 5)) is not None


@pytest.mark.parametrize("spec,shape", [("AP2-4C3-AP2-5-FC", (1, 10, 10)),
                                        ("3C3-3C3+-AP2-4C3-4C3-4C3+2-FC", (1, 6, 6))])
@pytest.mark.parametrize("static", [True, False])
def test_bptt_learner_on_conv_net_equals_plain_autograd_unroll(static, spec, shape):
    net = spiky_net(spec, shape)
    x, y = _data(shape, static, T=4)
    loss = InstantLoss("mix", 0.2)
    for p in net.parameters():
        p.grad = None
    BPTTLearner(net, loss).accumulate(x, y, T=4)
    _assert_close(_grads(net), bptt_layers_autograd_grads(net, x, y, 4, loss), atol=1e-12)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_static_input_fast_path_equals_the_repeated_sequence_on_conv(rule):
    """The first layer's current and weight gradient computed once for a static input."""
    spec, shape = "AP2-4C3-AP2-5-FC", (1, 10, 10)
    x, y = _data(shape, static=True)
    results = []
    for inp in (x, x.expand(4, *x.shape)):
        net = spiky_net(spec, shape)
        torch.manual_seed(3)
        results.append(_ours(net, inp, y, 4, InstantLoss(), rule=RULES.build(rule)))
    _assert_close(results[0], results[1])


# ---------------------------------------------------------------------------------------
# OPZO's momentum feedback on conv layers


def _linear_conv_probe(seed=0):
    """A conv net used linearly: x_l = op_l(x_{l−1}) + (noise after the 'neuron'), o = readout.

    Returns the net, its output function and Jᵀ, the stacked transposed Jacobians of o with
    respect to each layer's output perturbation, (Σ n_l, m), by autograd.
    """
    torch.manual_seed(seed)
    net = SpikingNet("3C3-AP2-4C3-FC", (1, 6, 6), 3).double()

    def output(inp, perturbation):
        h = inp
        for layer, p in zip(net.hidden, perturbation):
            h = layer(h) + p
        return net.readout(h)

    inp = torch.zeros(1, 36, dtype=torch.float64)
    zeros = tuple(torch.zeros(1, n, dtype=torch.float64) for n in net.hidden_sizes)
    jac = torch.autograd.functional.jacobian(lambda *p: output(inp, p), zeros)
    JT = torch.cat([j.reshape(net.num_outputs, -1).t() for j in jac], dim=0).detach()
    return net, output, JT


def _run_opzo_on_conv_probe(steps, lambda_m=0.99999, batch=16, seed=0):
    net, output, JT = _linear_conv_probe()
    rule = OPZO(NoiseSampler(alpha=0.2, position="after"), lambda_m=lambda_m, alpha_factor=True)
    rule.bind(net)
    assert rule.M.shape == JT.shape == (3 * 36 + 4 * 9, 3)  # dense over all C·H·W neurons
    torch.manual_seed(seed)
    like = torch.zeros(1, dtype=torch.float64)
    with torch.no_grad():
        for t in range(steps):
            noise = rule.perturbation(t, batch, like)
            x = torch.rand(batch, 36, dtype=torch.float64)
            o = output(x, [rule.noise.alpha * z for z in noise])
            rule.update_feedback(StepContext(t, 1, o, o, o[:, 0], None, net))
    M = rule.M / (1 - lambda_m**steps)  # remove the bias of the zero initialisation
    return float((M - JT).norm() / JT.norm())


def test_conv_opzo_momentum_converges_to_the_jacobian_transpose():
    errors = [_run_opzo_on_conv_probe(steps) for steps in (50, 3200)]
    assert errors[1] < errors[0] / 4, errors  # ~1/sqrt(samples): 8x less error expected
    assert errors[1] < 0.15, errors


# ---------------------------------------------------------------------------------------
# every rule, noise option and trace runs on a conv net


def _check_grads(net, rule):
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert torch.isfinite(p.grad).all(), name
        if rule != "dkp" or name.startswith("readout"):  # DKP's feedback starts at 0
            assert p.grad.abs().sum() > 0, (rule, name)


@pytest.mark.parametrize("position", ["after", "before"])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_and_noise_position_trains_a_small_conv_net(rule, position):
    torch.manual_seed(2)
    net = SpikingNet("8C3-AP2-16C3-FC", (1, 8, 8), 3, dropout=0.2)
    with torch.no_grad():
        for layer in net.hidden:
            layer.gain.mul_(3.0)
    kw = {}
    if rule in ("zo", "opzo"):
        kw["noise"] = NoiseSampler(alpha=0.2, alpha_final=0.01, position=position,
                                   antithetic=True)
    r = RULES.build(rule, **kw)
    learner = OnlineLearner(net, r)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    y = torch.randint(0, 3, (6,))
    for x in (torch.randn(6, 1, 8, 8), (torch.rand(3, 6, 1, 8, 8) < 0.3).float()):
        learner.train_batch(x, y, opt, T=3)
        _check_grads(net, rule)
    if r.noise is not None:
        r.set_progress(1.0)
        assert r.noise.alpha == pytest.approx(0.01)
        learner.train_batch(torch.randn(6, 1, 8, 8), y, opt, T=3)
    if rule in ("dfa", "dkp", "opzo"):
        assert r.feedback.shape == (8 * 64 + 16 * 16, 3)
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize("trace", [t for t in TRACE_NAMES if "ostl" not in t and "otpe" != t
                                   and "f_otpe" != t])
def test_presynaptic_traces_and_per_step_updates_run_on_conv(trace):
    net = SpikingNet("4C3-AP2-6C3-FC", (1, 6, 6), 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for update in ("batch", "step"):
        OnlineLearner(net, OPZO(), trace=trace, update=update).train_batch(
            torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,)), opt, T=3)
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_opzo_on_a_spiking_conv_net_aligns_with_bp():
    """With frozen weights, M learned from noise gives hidden gradients aligned with BP's."""
    torch.manual_seed(0)
    net = SpikingNet("4C3-AP2-6C3-FC", (1, 6, 6), 3).double()
    with torch.no_grad():
        for layer in net.hidden:
            layer.gain.mul_(3.0)
    x = torch.randn(64, 36, dtype=torch.float64)
    y = x[:, :3].argmax(1)
    learner = OnlineLearner(net, OPZO(NoiseSampler(alpha=0.2), lambda_m=0.999,
                                      alpha_factor=True))
    for _ in range(300):
        for p in net.parameters():
            p.grad = None
        learner.accumulate(x, y, T=3)
    opzo = _grads(net)
    bp = _ours(net, x, y, 3, InstantLoss())

    def cos(a, b):
        return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))

    assert cos(opzo["hidden.1.weight"], bp["hidden.1.weight"]) > 0.5
    assert cos(opzo["hidden.0.weight"], bp["hidden.0.weight"]) > 0.2


def test_gradient_diagnostics_on_a_conv_net_with_image_shaped_input():
    from opzo.diagnostics import gradient_cosine

    net = spiky_net("4C3-AP2-6C3-FC", (2, 6, 6), outputs=3)
    x = torch.randn(8, 2, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    loss = InstantLoss()
    same = gradient_cosine(net, SpatialBP(), x, y, 3, loss)
    assert set(same) == {"hidden.0.weight", "hidden.1.weight", "readout.weight"}
    assert all(v == pytest.approx(1.0) for v in same.values())
    vs_bptt = gradient_cosine(net, SpatialBP(), x, y, 3, loss, reference="bptt")
    assert all(-1.0 <= v <= 1.0 for v in vs_bptt.values())
    assert vs_bptt["readout.weight"] > 0.5


# ---------------------------------------------------------------------------------------
# configuration, command line, checkpoints


def test_config_net_and_width_options():
    cfg = TrainConfig.from_dict({"net": "conv5", "width": 0.25})
    net = build_network(cfg, (1, 28, 28), 10)
    assert net.spec == "32C3-AP2-64C3-AP2-128C3-FC"
    with pytest.raises(ConfigError, match="option 'net': unknown layer token 'X3'"):
        TrainConfig.from_dict({"net": "128C3-X3-FC"})
    with pytest.raises(ConfigError, match="'width' scales the layers of 'net'"):
        TrainConfig.from_dict({"width": 0.5})
    with pytest.raises(ConfigError, match="not images"):
        TrainConfig.from_dict({"net": "conv5", "dataset": "randman-time", "T": 50})
    # init_scale scales the gain of a standardized conv (its raw weight scale is ignored)
    scaled = build_network(TrainConfig.from_dict({"net": "4C3-FC", "init_scale": 2.0}),
                           (1, 4, 4), 3)
    assert torch.equal(scaled.hidden[0].gain, torch.full_like(scaled.hidden[0].gain, 2.0))
    # the image sources declare their shape
    assert make_source(TrainConfig(limit_test=10), "test").input_shape == (1, 28, 28)


def _conv_cfg(tmp_path, name, **kw):
    base = dict(net="4C3-AP2-8C3-FC", T=2, epochs=2, batch_size=32, limit_train=96,
                limit_test=50, eval_batch_size=50, threads=1, out=str(tmp_path / name))
    base.update(kw)
    return TrainConfig.from_dict(base)


def _rows(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_opzo_train_conv_net_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "cli"
    code = main(["train", "--net", "4C3-AP2-8C3-FC", "--width", "0.5", "--limit-train", "64",
                 "--limit-test", "40", "--epochs", "1", "--T", "2", "--batch-size", "32",
                 "--threads", "1", "--quiet", "--out", str(run)])
    assert code == 0
    assert json.loads((run / "config.json").read_text())["net"] == "4C3-AP2-8C3-FC"
    assert "2C3-AP2-4C3-FC on (1, 28, 28)" in capsys.readouterr().out
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["model"]["hidden.0.gain"].shape == (2, 1, 1, 1)
    assert main(["eval", str(run)]) == 0
    assert '"acc"' in capsys.readouterr().out
    code = main(["train", "--net", "4C3-Y-FC", "--out", str(tmp_path / "bad")])
    assert code == 2 and "unknown layer token 'Y'" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["opzo", "bp"])
def test_conv_resume_equals_uninterrupted(tmp_path, method):
    quiet = dict(progress=False, log=lambda *_: None)
    run_training(_conv_cfg(tmp_path, "full", method=method), tmp_path / "full", **quiet)
    cfg = _conv_cfg(tmp_path, "cut", method=method)
    with pytest.raises(Interrupted):
        run_training(cfg, tmp_path / "cut", stop_after_batches=4, **quiet)
    torch.manual_seed(1234)  # whatever happens in between must not matter
    run_training(cfg, tmp_path / "cut", resume=True, **quiet)
    assert _rows(tmp_path / "full") == _rows(tmp_path / "cut")
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for k in full["model"]:
        assert torch.equal(full["model"][k], cut["model"][k]), k
    if method == "opzo":
        assert torch.equal(full["rule"]["feedback_t"], cut["rule"]["feedback_t"])


def test_nmnist_frames_train_a_conv_net(tmp_path):
    """Event frames reach a conv net as 2x34x34 maps (the source declares the shape)."""
    from .writers import write_nmnist_tree as _write_nmnist_tree

    _write_nmnist_tree(tmp_path / "data", {"Train": 2, "Test": 1}, count=30, t_max=9000)
    cfg = TrainConfig.from_dict(dict(dataset="nmnist", data_root=str(tmp_path / "data"), T=3,
                                     net="4C3-AP2-FC", epochs=1, batch_size=10, threads=1))
    assert make_source(cfg, "test").input_shape == (2, 34, 34)
    summary = run_training(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    assert summary["final_test_acc"] is not None
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["model"]["hidden.0.weight"].shape == (4, 2, 3, 3)
    assert ckpt["model"]["readout.weight"].shape == (10, 4 * 17 * 17)
