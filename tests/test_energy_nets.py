"""SynOps fan-outs of the issue-26 networks (strided / max / adaptive pooling, composite
layers, batch norm, SEW's ADD) against a count by autograd on a counting network.

The reference rebuilds every reader of every hidden layer's output with torch primitives:
each convolution with weights all 1 (no standardization), each dense op with weights all 1,
each pooling as a sum over its window (every member, zero padding included as zeros), SEW's
ADD as x_l = s_l + P x_j, a residual shortcut as an identity edge. Then the fan-out of neuron
i of layer l (the synapses its spike drives) is ∂S/∂s_l,i, S the sum of every reader's
outputs. It shares nothing with :mod:`opzo.energy`'s transposed counts.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from opzo import SpikingNet
from opzo.energy import synaptic_fanout
from opzo.layers_extra import CompositeLayer
from opzo.nets import NFResNet, ResNet19, SEWResNet
from opzo.norm import Normed


def _sum_pool(pool, x4):
    if pool is None:
        return x4
    if isinstance(pool, tuple):
        return F.avg_pool2d(x4, pool) * (pool[0] * pool[1])
    if pool.kind == "adaptive":
        assert pool.kernel == 1
        return x4.sum(dim=(2, 3), keepdim=True)
    k = pool.kernel
    return F.avg_pool2d(x4, k, pool.stride, pool.padding) * (k * k)


def _count(op, x):
    """Σ of the outputs of ``op`` with all weights 1 on x (B=1, flattened)."""
    if isinstance(op, Normed):
        op = op.inner
    x4 = x.reshape(1, *op.in_shape) if len(op.in_shape) == 3 else x
    v = _sum_pool(op.pool, x4) if op.pool is not None else x4
    if hasattr(op, "kernel_size"):
        w = torch.ones(op.out_channels, op.in_channels, op.kernel_size, op.kernel_size,
                       dtype=x.dtype)
        return F.conv2d(v, w, stride=op.stride, padding=op.padding).sum()
    return F.linear(v.reshape(1, -1), torch.ones(op.out_features, v.numel(),
                                                 dtype=x.dtype)).sum()


def _reference(net):
    n = len(net.hidden)
    leaves = [torch.ones(1, k, dtype=torch.float64, requires_grad=True)
              for k in net.hidden_sizes]
    xs = []
    for l in range(n):  # what each layer delivers: its spikes, plus an ADD
        x = leaves[l]
        add = getattr(net, "adds", [None] * n)[l]
        if add is not None:
            j, pool = add
            src = xs[j].reshape(1, *net.hidden[j].out_shape)
            x = x + _sum_pool(pool, src).reshape(1, -1)
        xs.append(x)
    total = 0.0
    for r, reader in enumerate([*net.hidden, net.readout]):
        below = xs[r - 1] if r > 0 else None
        if isinstance(reader, CompositeLayer):
            for t in reader.terms:
                src = below if t.source == "in" else (xs[t.source[1]] if t.source[0] == "out"
                                                      else None)
                if src is None:
                    continue
                total = total + (src.sum() if t.op is None else _count(t.op, src))
        elif below is not None:
            total = total + _count(reader, below)
        if r < n and net.skips[r] is not None:
            total = total + xs[net.skips[r]].sum()
    grads = torch.autograd.grad(total, leaves)
    return [g.reshape(-1) for g in grads]


def _net(which):
    torch.manual_seed(0)
    if which == "sew":
        return SEWResNet((2, 16, 16), 4, width=1 / 32, blocks=(2, 2, 1, 1))
    if which == "sew-bn":
        return SEWResNet((2, 16, 16), 4, width=1 / 32, blocks=(1, 1, 1, 1), norm="bn")
    if which == "r19":
        return ResNet19((2, 8, 8), 4, width=1 / 32)
    if which == "nf":
        return NFResNet((2, 16, 16), 4, width=1 / 16, blocks=(1, 2, 1, 1))
    return SpikingNet("4C7s2-AP3s2p1-4C3-MP2-3C1-GAP-FC", (2, 17, 17), 4)


@pytest.mark.parametrize("which", ["sew", "sew-bn", "r19", "nf", "string"])
def test_fanout_of_the_new_nets_equals_a_count_on_a_counting_network(which):
    net = _net(which).double()
    got = synaptic_fanout(net)
    want = _reference(net)
    assert len(got) == len(want) == len(net.hidden)
    for l, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, l
        assert torch.allclose(g, w, rtol=0, atol=1e-9), (l, float((g - w).abs().max()))
    assert math.isfinite(sum(float(g.sum()) for g in got))


@pytest.mark.parametrize("args", [
    ["--net", "sew-resnet34", "--method", "dfa"],
    ["--net", "resnet19", "--norm", "bn", "--method", "opzo"],
    ["--net", "resnet19", "--norm", "tdbn", "--method", "bptt"],
])
def test_the_new_nets_train_and_evaluate_from_the_command_line(tmp_path, args):
    """An epoch with evaluation (SynOps counted on the test set) on the embedded MNIST, and
    ``opzo eval`` of the run (the running statistics of batch norm come with the weights)."""
    import json

    from opzo.cli import main

    out = tmp_path / "run"
    rc = main(["train", *args, "--width", "0.0625", "--epochs", "1", "--limit-train", "32",
               "--limit-test", "32", "--batch-size", "16", "--T", "2", "--out", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "synops_total" in r][-1]
    assert last["synops_total"] >= 0 and len(last["synops"]) > 10
    assert main(["eval", str(out)]) == 0  # rebuilt from config.json (norm too), reloaded
