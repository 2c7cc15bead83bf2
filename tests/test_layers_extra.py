"""Strided / 1x1 / 7x7 convolutions, max, padded average and adaptive pooling (issue 26 piece
2): each explicit map against autograd of the forward, the network-string grammar, and spatial
BP (OTTT) on networks made of them against the independent autograd references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from opzo import InstantLoss, OnlineLearner, SpatialBP, SpikingNet, parse_net
from opzo.bptt import BPTTLearner
from opzo.layers import ConvLayer, DenseLayer
from opzo.layers_extra import Pool2d
from opzo.netstring import net_string

from .reference import bptt_layers_autograd_grads, presynaptic_autograd_grads, spiky_net

POOLS = [("avg", 3, 2, 1), ("avg", 2, 1, 0), ("avg", 3, 3, 0), ("max", 3, 2, 1),
         ("max", 2, 2, 0), ("adaptive", 1, None, 0), ("adaptive", 3, None, 0)]


def _vjp(f, x, g):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x, g)
    return grad


@pytest.mark.parametrize("kind,k,s,p", POOLS)
@pytest.mark.parametrize("hw", [(7, 7), (8, 6)])
def test_pooling_transpose_equals_autograd(kind, k, s, p, hw):
    torch.manual_seed(0)
    pool = Pool2d(kind, k, s, p)
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    if kind == "max":  # spikes: ties inside a window; the arg-max must be the same one
        x = (x > 0.3).double() + 1e-3 * torch.randn_like(x)
    ref_out = {"avg": lambda v: F.avg_pool2d(v, k, s, p),
               "max": lambda v: F.max_pool2d(v, k, s, p),
               "adaptive": lambda v: F.adaptive_avg_pool2d(v, k)}[kind]
    y = pool(x)
    assert torch.equal(y, ref_out(x))
    assert y.shape[1:] == pool.output_shape(x.shape[1:])
    g = torch.randn_like(y)
    assert torch.allclose(pool.transpose(g, hw), _vjp(ref_out, x, g), atol=1e-12)


def test_max_pool_transpose_needs_its_forward():
    with pytest.raises(RuntimeError, match="forward of the same input"):
        Pool2d("max", 2).transpose(torch.zeros(1, 1, 2, 2), (4, 4))


@pytest.mark.parametrize("k,stride,pad,pool", [
    (7, 2, 3, None), (1, 2, 0, None), (1, 1, 0, None), (3, 2, 1, None),
    (3, 1, 1, Pool2d("avg", 3, 2, 1)), (3, 1, 1, Pool2d("max", 3, 2, 1)),
    (1, 1, 0, Pool2d("adaptive", 2))])
def test_conv_layer_transpose_and_weight_gradient_equal_autograd(k, stride, pad, pool):
    torch.manual_seed(1)
    shape = (3, 9, 9)
    layer = ConvLayer(shape, 4, k, pool=pool, stride=stride, padding=pad).double()
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)
        layer.gain.uniform_(0.5, 2)
    x = torch.randn(2, 27 * 9, dtype=torch.float64)
    out = layer.forward(x)  # max pooling: records the indices of x
    delta = torch.randn_like(out)
    ours_in = layer.input_grad(delta)
    assert torch.allclose(ours_in, _vjp(layer.forward, x, delta), atol=1e-12)
    # the weight gradient against the (pooled) op input
    for prm in layer.parameters():
        prm.grad = None
    layer.accumulate_grad(delta, layer.op_input(x))
    ours = {n: prm.grad.clone() for n, prm in layer.named_parameters()}
    for prm in layer.parameters():
        prm.grad = None
    (layer.forward(x) * delta).sum().backward()
    for n, prm in layer.named_parameters():
        assert torch.allclose(ours[n], prm.grad, atol=1e-10), n


def test_dense_readout_after_adaptive_pooling_equals_autograd():
    layer = DenseLayer((3, 5, 5), 4, pool=Pool2d("adaptive", 2)).double()
    x = torch.randn(2, 75, dtype=torch.float64)
    delta = torch.randn(2, 4, dtype=torch.float64)
    assert torch.allclose(layer.input_grad(delta), _vjp(layer.forward, x, delta), atol=1e-12)


def test_grammar_round_trips_and_shapes():
    spec = "8C7s2p3-AP3s2p1-8C3s2-MP2-6C1s2p0-AAP2-FC"
    toks = parse_net(spec)
    assert net_string(toks) == spec
    assert [t.kind for t in toks] == ["conv", "pool", "conv", "maxpool", "conv", "aap",
                                      "readout"]
    net = SpikingNet(spec, (3, 64, 64), 5)
    # 64 -7s2p3-> 32 -AP3s2p1-> 16 -3s2-> 8 -MP2-> 4 -1s2-> 2 -AAP2-> 2
    assert [layer.out_shape for layer in net.hidden] == [(8, 32, 32), (8, 8, 8), (6, 2, 2)]
    assert [layer.token for layer in net.hidden] == ["8C7s2", "AP3s2p1-8C3s2", "MP2-6C1s2"]
    assert parse_net("4C3-AAP-FC")[1].kernel == 1
    assert SpikingNet("4C3-AP2-FC", (1, 4, 4), 2).readout.pool == (2, 2)  # the plain form kept
    for bad, match in [("4C3s0-FC", "stride must be >= 1"), ("MP2p2-4-FC", "padding"),
                       ("4C3-MP2-AAP-FC", "two pooling tokens")]:
        with pytest.raises(ValueError, match=match):
            parse_net(bad)


NETS = [("4C5s2p2-AP3s2p1-5C3-5C1s2p0-AAP1-FC", (2, 12, 12), 3),
        ("4C3s2-AP3s2p1-5C1-AAP2-FC", (1, 10, 10), 3),
        ("4C3-MP3s2p1-5C3s2-MP2-FC", (1, 10, 10), 1)]


@pytest.mark.parametrize("spec,shape,T", NETS)
def test_ottt_on_the_new_layers_equals_autograd(spec, shape, T):
    """Spatial BP with OTTT traces against the autograd reference (max pooling at T = 1, the
    instantaneous gradient: the reference keeps its trace before the pooling, which equals
    the trace of the pooled values only for a linear pooling)."""
    net = spiky_net(spec, shape)
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(T, 5, net.num_inputs, generator=g, dtype=torch.float64) < 0.5).double()
    y = torch.randint(0, 4, (5,), generator=g)
    loss = InstantLoss("mix", 0.1)
    for p in net.parameters():
        p.grad = None
    OnlineLearner(net, SpatialBP(), loss).accumulate(x, y, T=T)
    ours = {n: p.grad.clone() for n, p in net.named_parameters()}
    ref = presynaptic_autograd_grads(net, x, y, T, loss)
    for n in ref:
        assert torch.allclose(ours[n], ref[n], atol=1e-10), n
    assert all(v.abs().sum() > 0 for v in ref.values())


@pytest.mark.parametrize("spec,shape,T", NETS)
def test_bptt_on_the_new_layers_equals_autograd(spec, shape, T):
    net = spiky_net(spec, shape)
    x = torch.randn(4, net.num_inputs, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    loss = InstantLoss("mix", 0.1)
    for p in net.parameters():
        p.grad = None
    BPTTLearner(net, loss).accumulate(x, y, T=3)
    ours = {n: p.grad.clone() for n, p in net.named_parameters()}
    ref = bptt_layers_autograd_grads(net, x, y, 3, loss)
    for n in ref:
        assert torch.allclose(ours[n], ref[n], atol=1e-12), n
