"""Synaptic ops and layers: sWS against its formula, explicit gradients against autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from opzo.layers import ConvLayer, DenseLayer, ScaledWSConv2d, avg_pool, avg_pool_input_grad


def _conv(cin=3, cout=5, k=3, seed=0) -> ScaledWSConv2d:
    torch.manual_seed(seed)
    conv = ScaledWSConv2d(cin, cout, k).double()
    with torch.no_grad():
        conv.gain.uniform_(0.5, 2.0)
        conv.bias.normal_()
    return conv


def test_sws_matches_its_formula_computed_independently():
    conv = _conv()
    w = conv.weight.detach().numpy()
    gain = conv.gain.detach().numpy().reshape(-1)
    n = w[0].size
    expect = np.empty_like(w)
    for c in range(w.shape[0]):
        wc = w[c]
        expect[c] = gain[c] * (wc - wc.mean()) / np.sqrt(n * wc.var() + conv.eps)
    got = conv.effective_weight().detach().numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)
    # per output channel: zero mean, norm ≈ γ (up to ε)
    assert np.abs(got.reshape(5, -1).mean(1)).max() < 1e-12
    np.testing.assert_allclose(np.linalg.norm(got.reshape(5, -1), axis=1), gain, rtol=1e-3)


def test_sws_is_invariant_to_shift_and_scale_of_the_raw_weight():
    conv = _conv()
    before = conv.effective_weight().detach().clone()
    with torch.no_grad():
        conv.weight.mul_(3.0).add_(0.7)
    # ε makes it only nearly exact
    assert torch.allclose(conv.effective_weight(), before, atol=1e-4)


def test_backward_weight_equals_autograd_through_the_standardization():
    conv = _conv()
    g = torch.randn_like(conv.weight)
    (conv.effective_weight() * g).sum().backward()
    grad_w, grad_gain = conv.backward_weight(g)
    assert torch.allclose(grad_w, conv.weight.grad, atol=1e-10)
    assert torch.allclose(grad_gain, conv.gain.grad, atol=1e-10)


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (1, 1), (5, 1)])
def test_conv_input_grad_and_weight_grad_equal_autograd(k, stride):
    conv = ScaledWSConv2d(3, 4, k, stride=stride).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    assert out.shape[1:] == conv.output_shape((3, 8, 8))
    delta = torch.randn_like(out)
    (out * delta).sum().backward()
    with torch.no_grad():
        assert torch.allclose(conv.input_grad(delta, x.shape), x.grad, atol=1e-10)
        w_auto, g_auto, b_auto = conv.weight.grad, conv.gain.grad, conv.bias.grad
        for p in conv.parameters():
            p.grad = None
        conv.accumulate_grad(delta, x.detach())
        assert torch.allclose(conv.weight.grad, w_auto, atol=1e-10)
        assert torch.allclose(conv.gain.grad, g_auto, atol=1e-10)
        assert torch.allclose(conv.bias.grad, b_auto, atol=1e-10)
        # accumulating twice doubles (gradients add over time steps)
        conv.accumulate_grad(delta, x.detach())
        assert torch.allclose(conv.weight.grad, 2 * w_auto, atol=1e-10)


def test_conv_weight_grad_with_a_trace_is_ottt_over_steps():
    """Σ_t weight_grad(δ[t], â[t]) equals autograd of Σ_t ⟨δ[t], conv(â[t])⟩ (OTTT's form)."""
    torch.manual_seed(1)
    conv = ScaledWSConv2d(2, 3).double()
    lam = 0.5
    xs = (torch.rand(4, 2, 2, 6, 6, dtype=torch.float64) < 0.3).double()
    deltas = torch.randn(4, 2, 3, 6, 6, dtype=torch.float64)
    total = 0.0
    a = torch.zeros_like(xs[0])
    for t in range(4):
        a = lam * a + xs[t]
        total = total + (F.conv2d(a, conv.effective_weight(), conv.bias, padding=1)
                         * deltas[t]).sum()
    total.backward()
    auto = conv.weight.grad.clone()
    conv.weight.grad = None
    conv.gain.grad = None
    conv.bias.grad = None
    a = torch.zeros_like(xs[0])
    with torch.no_grad():
        for t in range(4):
            a = lam * a + xs[t]
            conv.accumulate_grad(deltas[t], a)
    assert torch.allclose(conv.weight.grad, auto, atol=1e-10)


def test_avg_pool_transpose_equals_autograd_and_rejects_odd_sizes():
    x = torch.rand(2, 3, 8, 6, dtype=torch.float64, requires_grad=True)
    y = avg_pool(x, 2)
    d = torch.randn_like(y)
    (y * d).sum().backward()
    assert torch.allclose(avg_pool_input_grad(d, 2), x.grad)
    with pytest.raises(ValueError, match="divisible"):
        avg_pool(torch.zeros(1, 1, 5, 4), 2)


def test_conv_rejects_wrong_input_shapes_with_a_clear_message():
    conv = ScaledWSConv2d(3, 4)
    with pytest.raises(ValueError, match=r"expected input \(B, 3, H, W\)"):
        conv(torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        conv.output_shape((2, 8, 8))
    with pytest.raises(ValueError, match=">= 1"):
        ScaledWSConv2d(0, 4)


def test_floor_mode_pooling_transpose_equals_autograd():
    """7x7 pooled 2x2 keeps 3x3 (PyTorch's floor mode); the dropped row/column get 0."""
    x = torch.rand(2, 3, 7, 5, dtype=torch.float64, requires_grad=True)
    y = avg_pool(x, 2, floor=True)
    assert y.shape == (2, 3, 3, 2)
    d = torch.randn_like(y)
    (y * d).sum().backward()
    g = avg_pool_input_grad(d, 2, input_hw=(7, 5))
    assert torch.allclose(g, x.grad)
    assert g[..., 6, :].abs().sum() == 0 and g[..., :, 4].abs().sum() == 0
    # a rectangular window (global pooling of a 7x5 map)
    x.grad = None
    y = avg_pool(x, (7, 5))
    (y * 2.0).sum().backward()
    assert torch.allclose(avg_pool_input_grad(torch.full_like(y, 2.0), (7, 5)), x.grad)


@pytest.mark.parametrize("make", [
    lambda: ConvLayer((3, 7, 7), 4, 3, pool=2),
    lambda: ConvLayer((2, 6, 6), 5, 1),
    lambda: DenseLayer((3, 5, 5), 6, pool=2),
    lambda: DenseLayer(8, 6),
])
def test_layer_maps_equal_autograd_of_the_layer_forward(make):
    """input_grad = Pᵀ opᵀ and accumulate_grad(δ, P x) = ∂⟨δ, op(P x)⟩/∂params, on flat
    tensors, against autograd of the layer's own forward (pooling included)."""
    torch.manual_seed(0)
    layer = make().double()
    with torch.no_grad():
        layer.bias.normal_()
        if hasattr(layer, "gain"):
            layer.gain.uniform_(0.5, 2.0)
    n_in = math.prod(layer.in_shape)
    x = torch.rand(3, n_in, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert out.shape == (3, layer.out_features)
    assert torch.equal(out, layer.op(layer.op_input(x)))
    delta = torch.randn_like(out)
    (out * delta).sum().backward()
    auto = {n: p.grad.clone() for n, p in layer.named_parameters()}
    with torch.no_grad():
        assert torch.allclose(layer.input_grad(delta), x.grad, atol=1e-12)
        for p in layer.parameters():
            p.grad = None
        layer.accumulate_grad(delta, layer.op_input(x), 1.0)
        for n, p in layer.named_parameters():
            assert torch.allclose(p.grad, auto[n], atol=1e-12), n
        # the bias trace scales only the bias gradient
        for p in layer.parameters():
            p.grad = None
        layer.accumulate_grad(delta, layer.op_input(x), 2.5)
        assert torch.allclose(layer.bias.grad, 2.5 * auto["bias"], atol=1e-12)
        assert torch.allclose(layer.weight.grad, auto["weight"], atol=1e-12)


def test_layer_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"needs a feature map \(C, H, W\)"):
        DenseLayer(10, 4, pool=2)
    with pytest.raises(ValueError, match="does not fit a 1x1"):
        ConvLayer((2, 1, 1), 4, 3, pool=2)
    with pytest.raises(ValueError, match="does not fit"):
        ConvLayer((2, 2, 2), 4, 5, padding=0)
