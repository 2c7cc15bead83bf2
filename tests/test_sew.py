"""SEW-ResNet-34 (issue 26 piece 4, :class:`opzo.nets.SEWResNet`): spatial BP's instantaneous
gradient and BPTT against autograd of a plain-torch network written from the SEW ResNet
paper's description (Fang et al. 2021, ADD connections), at a tiny width."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from opzo import InstantLoss, OnlineLearner, SpatialBP
from opzo.bptt import BPTTLearner
from opzo.config import TrainConfig
from opzo.nets import SEWResNet, build_named, is_named
from opzo.surrogate import FastSigmoidSurrogate

from .test_nets import _LIF, convs_in_order

LOSS = InstantLoss("mix", 0.1)
BLOCKS = (2, 2, 2, 1)


def _sew_reference(net, x, T, blocks=BLOCKS):
    """Stem: LIF(conv7x7 s2 (x)), max pool 3x3 s2 p1; block: out = LIF(conv2(LIF(conv1(h))))
    + sc, sc = h or LIF(conv1x1 s2 (h)); GAP of the last output, linear readout. The
    convolutions' parameters are taken in the order the network lists them (stem, then per
    block [ds,] conv1, conv2)."""
    lif = _LIF()
    outs = []
    for _ in range(T):
        conv = convs_in_order(net)

        h = F.max_pool2d(lif("stem", conv(x, 2, 3)), 3, 2, 1)
        chans = h.shape[1]
        for stage, nb in enumerate(blocks):
            for b in range(nb):
                stride = 2 if (stage > 0 and b == 0) else 1
                key = f"{stage}.{b}"
                if stride == 2:
                    sc = lif(key + ".ds", conv(h, 2, 0))
                else:
                    sc = h
                s1 = lif(key + ".1", conv(h, stride))
                h = lif(key + ".2", conv(s1)) + sc
        assert h.shape[1] >= chans
        outs.append(F.linear(h.mean(dim=(2, 3)), net.readout.weight, net.readout.bias))
    return outs


def _net():
    torch.manual_seed(0)
    net = SEWResNet((2, 16, 16), 4, width=1 / 32, blocks=BLOCKS,
                    surrogate=FastSigmoidSurrogate(5.0)).double()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".gain"):
                p.mul_(3.0)
            elif name.endswith("bias") and not name.startswith("readout"):
                p.uniform_(0.0, 0.8)
            elif name.startswith("readout"):
                p.mul_(4.0)
    return net


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _ref(net, x4, y, T):
    for p in net.parameters():
        p.grad = None
    outs = _sew_reference(net, x4, T)
    (sum(LOSS.per_sample(o, y).mean() for o in outs) / T).backward()
    return _grads(net), outs


def _close(ours, ref):
    assert set(ours) == set(ref)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=1e-10, rtol=1e-7), (
            k, float((ours[k] - ref[k]).abs().max()))
    moving = sum(float(v.abs().sum()) > 0 for v in ref.values())
    assert moving > 0.9 * len(ref), f"{moving} of {len(ref)}"


def test_sew_forward_bp_and_bptt_equal_the_description():
    net = _net()
    assert sum(a is not None for a in net.adds) == sum(BLOCKS)  # one ADD per block
    x = 3.0 * torch.randn(3, 2 * 256, dtype=torch.float64)
    y = torch.tensor([0, 1, 3])
    x4 = x.reshape(3, 2, 16, 16)
    ref, outs = _ref(net, x4, y, 1)
    with torch.no_grad():
        assert torch.allclose(net(x, T=1), outs[0], atol=1e-10)
    for p in net.parameters():
        p.grad = None
    OnlineLearner(net, SpatialBP(), LOSS).accumulate(x, y, T=1)
    _close(_grads(net), ref)
    ref, outs = _ref(net, x4, y, 3)
    with torch.no_grad():
        assert torch.allclose(net(x, T=3), sum(outs), atol=1e-10)
    for p in net.parameters():
        p.grad = None
    BPTTLearner(net, LOSS).accumulate(x, y, T=3)
    _close(_grads(net), ref)


def test_sew_resnet34_is_built_by_name_with_its_size():
    assert is_named("sew-resnet34")
    net = build_named("sew-resnet34", (3, 224, 224), 1000)
    assert len(net.hidden) == 1 + 2 * 16 + 3
    shapes = [tuple(layer.out_shape) for layer in net.hidden]
    assert shapes[0] == (64, 112, 112) and shapes[2] == (64, 56, 56)
    assert shapes[-1] == (512, 7, 7)
    # ResNet-34: its convolution weights and the readout weight, counted by hand
    convs = sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight"))
    assert convs == 21_779_648
    TrainConfig(dataset="embedded-mnist", net="sew-resnet34", width=0.125).validate()


@pytest.mark.parametrize("norm", ["bn"])
def test_sew_with_norm_trains_online(norm):
    torch.manual_seed(0)
    net = build_named("sew-resnet34", (2, 16, 16), 4, width=1 / 32, norm=norm).double()
    x = torch.randn(2, 512, dtype=torch.float64)
    OnlineLearner(net, SpatialBP(), LOSS).accumulate(x, torch.tensor([0, 1]), T=2)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("which", ["sew", "r19", "nf"])
def test_layer_major_order_gives_the_step_by_step_outputs(which):
    """opzo.layer_major (used for the normalisers over all steps) runs the same network
    layer by layer over the sequence: without a normaliser its outputs are those of the
    step-by-step forward (ADDs, shortcuts, composite layers reading earlier currents)."""
    from opzo.layer_major import bptt_outputs, untruncated_forward
    from opzo.nets import NFResNet, ResNet19

    torch.manual_seed(0)
    if which == "sew":
        net, shape = _net(), (2, 16, 16)
    elif which == "r19":
        net, shape = ResNet19((2, 8, 8), 4, width=1 / 32).double(), (2, 8, 8)
    else:
        net = NFResNet((2, 16, 16), 4, width=1 / 16, blocks=(1, 2, 1, 1)).double()
        shape = (2, 16, 16)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.endswith("skipinit_gain"):
                    p.fill_(1.5)
    T, B = 3, 2
    x = 3.0 * torch.rand(T, B, 2 * shape[1] * shape[2], dtype=torch.float64)
    with torch.no_grad():
        steps = [o for o, _ in net.run(x, T)]
        layered = bptt_outputs(net, x, T, None)
        rec = untruncated_forward(net, x, T, None, None, 0.0)
    for t in range(T):
        assert torch.allclose(layered[t], steps[t], atol=1e-12)
        assert torch.allclose(rec["outputs"][t], steps[t], atol=1e-12)
    assert float(torch.stack(steps).abs().max()) > 1e-3


def test_nir_export_refuses_the_new_layers_in_one_line():
    """NIR export maps chains of dense / sWS conv layers: batch norm, composite layers,
    strided / max pooling and SEW's ADD are refused by name, not written wrongly."""
    pytest.importorskip("nir")
    from opzo import SpikingNet
    from opzo.nets import SEWResNet
    from opzo.neuron import LIFParams
    from opzo.nir import NIRError, to_nir
    from opzo.norm import apply_norm

    normed = SpikingNet("4C3-FC", (1, 6, 6), 3, neuron=LIFParams(reset="zero"))
    to_nir(normed)  # exported as it is before the normaliser
    apply_norm(normed, "bn")
    with pytest.raises(NIRError, match="this network has batch norm,") as info:
        to_nir(normed)
    assert "\n" not in str(info.value)
    sew = SEWResNet((1, 16, 16), 3, width=1 / 32, blocks=(1, 1, 1, 1),
                    neuron=LIFParams(reset="zero"))
    with pytest.raises(NIRError, match="composite layers, strided, max or adaptive pooling, "
                                       "ADD connections"):
        to_nir(sew)
