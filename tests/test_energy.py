"""Energy proxies (opzo.energy): fan-outs, firing rates and synaptic operations.

The expected fan-outs are counted by brute force (tests/reference.py's brute_op_fanout),
looping over every synapse of the next layer's connectivity (pooling windows, convolution
taps inside the padded map, shortcuts), sharing nothing with the library's
transposed-convolution count. The spike
counts of the FC net are the hand count of tests/test_rule_checks.py (LIF by hand).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from opzo import InstantLoss, SpikingMLP, SpikingNet
from opzo.energy import SynOpsCounter, count_synops, op_fanout, synaptic_fanout
from opzo.learner import evaluate_batch

from .reference import brute_op_fanout

LOSS = InstantLoss()


# ---------------------------------------------------------------------------------------
# brute-force fan-out (tests/reference.py counts each layer's)


def _brute_fanout(net) -> list[torch.Tensor]:
    hidden = list(net.hidden)
    out = []
    for l in range(len(hidden)):
        f = brute_op_fanout(hidden[l + 1] if l + 1 < len(hidden) else net.readout)
        for j in net.skips:
            if j == l:
                f = f + 1.0  # the identity shortcut: one synapse per neuron
        out.append(f)
    return out


# same padding with borders (5x5, 3x3 kernels), a residual shortcut (layer 2 from layer 1),
# floor-mode pooling (5x5 -> 2x2), a 5x5 kernel, pooling in front of the readout, GAP
CONV_NETS = [
    ("2C3-2C3+-AP2-3C3-AP2-FC", (1, 5, 5)),
    ("3C5-AP2-2C3-FC", (2, 6, 7)),
    ("2C3-GAP-4-FC", (1, 4, 4)),
    ("3C3-3C3-3C3+2-FC", (1, 3, 4)),
]


@pytest.mark.parametrize("spec,shape", CONV_NETS)
def test_fanout_equals_a_brute_force_count_of_synapses(spec, shape):
    net = SpikingNet(spec, shape, 3)
    got = synaptic_fanout(net)
    want = _brute_fanout(net)
    assert len(got) == len(want) == len(net.hidden)
    for l, (g, w) in enumerate(zip(got, want)):
        assert g.shape == (net.hidden_sizes[l],)
        assert torch.equal(g, w), f"layer {l + 1}"


def test_fanout_of_a_same_padded_conv_and_pooling_by_hand():
    """3x3 same conv to 2 channels on a 4x4 map: corner 4 taps, edge 6, interior 9, times
    C_out = 2; the first layer feeds it through 2x2 pooling of a 9x8 map (floor: row 8
    and nothing else dropped), so each pixel of a window gets its pooled value's count."""
    net = SpikingNet("1C1-AP2-2C3-FC", (1, 9, 8), 2)
    first = synaptic_fanout(net)[0].reshape(9, 8)
    pooled = 2 * torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]],
                              dtype=torch.float64)
    want = torch.zeros(9, 8, dtype=torch.float64)
    want[:8] = pooled.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(first, want)
    # the conv's own neurons feed the readout: out_features each
    assert torch.equal(synaptic_fanout(net)[1], torch.full((32,), 2.0, dtype=torch.float64))
    assert torch.equal(op_fanout(net.hidden[1]), first.reshape(-1))


def test_fanout_does_not_depend_on_weights():
    net = SpikingNet("2C3-AP2-3C3-FC", (1, 4, 4), 2)
    before = synaptic_fanout(net)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    assert all(torch.equal(a, b) for a, b in zip(before, synaptic_fanout(net)))


# ---------------------------------------------------------------------------------------
# counts


def _hand_net(kernels: str = "native") -> SpikingMLP:
    """2 → 3 → 2 → 5, the weights of tests/test_rule_checks.py's hand count."""
    net = SpikingMLP([2, 3, 2, 5], kernels=kernels, dropout=0.5)
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
        net.hidden[1].weight.copy_(torch.tensor([[0.6, 0.0, 0.0], [0.3, 0.3, 0.3]]))
        for layer in (*net.hidden, net.readout):
            layer.bias.zero_()
    return net


@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_fc_synops_equal_a_hand_count(kernels):
    """Input (1.5, 0.6), T = 4 (hand count in tests/test_rule_checks.py): layer 1 fires
    4 + 1 + 4 = 9 spikes, layer 2 1 + 1 = 2; a zero input never fires. Fan-out: layer 1
    drives the 2 neurons of layer 2, layer 2 the 5 outputs. Batch [(1.5, 0.6), 0]: per
    sample 4.5 and 1 spikes, SynOps 4.5·2 = 9 and 1·5 = 5; firing rates 9/(2·4·3) and
    2/(2·4·2)."""
    net = _hand_net(kernels)
    net.train()  # count_synops must evaluate without dropout and restore the mode
    x = torch.tensor([[1.5, 0.6], [0.0, 0.0]])
    res = count_synops(net, x, T=4)
    assert net.training
    assert res["spikes"] == [4.5, 1.0]
    assert res["synops"] == [9.0, 5.0]
    assert res["synops_total"] == 14.0
    assert res["firing_rate"] == [9 / 24, 2 / 16]
    assert res["firing_rate_total"] == 11 / (2 * 4 * 5)
    assert res["neurons"] == [3, 2] and res["fanout_mean"] == [2.0, 5.0]
    assert res["samples"] == 2 and res["steps"] == 4.0
    stats = evaluate_batch(net, x, torch.tensor([0, 1]), LOSS, T=4)
    assert res["firing_rate"] == [s / k for s, k in zip(stats.spike_counts,
                                                         stats.neuron_steps)]


def test_counter_pools_batches_and_processes():
    """Two batches pooled = the counts of their sum; sums()/load_sums() round trip (what
    a sum over processes does) and merge agree."""
    net = _hand_net()
    a, b = torch.tensor([[1.5, 0.6], [0.0, 0.0]]), torch.tensor([[1.5, 0.6]])
    c = SynOpsCounter(net)
    count_synops(net, a, T=4, counter=c)
    pooled = count_synops(net, b, T=4, counter=c)
    assert pooled["samples"] == 3
    assert pooled["synops"] == pytest.approx([18.0 * 2 / 3, 10.0 * 2 / 3], rel=1e-15)
    assert pooled["firing_rate"] == [18 / 36, 4 / 24]
    one, two = SynOpsCounter(net), SynOpsCounter(net)
    count_synops(net, a, T=4, counter=one)
    count_synops(net, b, T=4, counter=two)
    halves = [x + y for x, y in zip(one.sums(), two.sums())]
    loaded = SynOpsCounter(net)
    loaded.load_sums(halves)
    assert loaded.result() == pooled
    one.merge(two)
    assert one.result() == pooled
    empty = SynOpsCounter(net).result()
    assert empty["synops_total"] == 0.0 and empty["firing_rate"] == [0.0, 0.0]


@pytest.mark.parametrize("spec,shape", CONV_NETS)
def test_conv_synops_equal_a_brute_force_sum(spec, shape):
    """Random spikes fed to the counter: Σ_t Σ_b Σ_i s·f with the brute-force fan-out, /B."""
    net = SpikingNet(spec, shape, 3)
    fan = _brute_fanout(net)
    g = torch.Generator().manual_seed(3)
    T, B = 3, 4
    steps = [[(torch.rand(B, n, generator=g) < 0.3).float() for n in net.hidden_sizes]
             for _ in range(T)]
    c = SynOpsCounter(net)
    c.add(steps)
    res = c.result()
    for l, f in enumerate(fan):
        want = 0.0
        for t, b, i in itertools.product(range(T), range(B), range(f.numel())):
            want += float(steps[t][l][b, i]) * float(f[i])
        assert res["synops"][l] == pytest.approx(want / B, rel=1e-12, abs=0)
        spikes = sum(float(s[l].sum()) for s in steps)
        assert res["firing_rate"][l] == pytest.approx(spikes / (T * B * f.numel()))


@pytest.mark.parametrize("spec,shape", CONV_NETS[:2])
def test_conv_inference_counts_match_the_run_and_evaluate_batch(spec, shape):
    torch.manual_seed(0)
    net = SpikingNet(spec, shape, 3)
    with torch.no_grad():  # make the layers fire
        for layer in net.hidden:
            layer.gain.mul_(3.0)
            layer.bias.uniform_(0.2, 0.8)
    x = torch.rand(5, *shape) * 2
    res = count_synops(net, x, T=3)
    net.eval()
    fan = _brute_fanout(net)
    want = [0.0] * len(fan)
    with torch.no_grad():
        for _, rec in net.run(x, 3):
            for l, s in enumerate(rec.spikes):
                want[l] += float(s.double().sum(0) @ fan[l])
    assert all(r > 0 for r in res["firing_rate"])
    assert res["synops"] == pytest.approx([w / 5 for w in want], rel=1e-12)
    stats = evaluate_batch(net, x, torch.zeros(5, dtype=torch.long), LOSS, T=3)
    assert res["firing_rate"] == pytest.approx(
        [s / k for s, k in zip(stats.spike_counts, stats.neuron_steps)], rel=1e-12)


def test_counts_are_made_on_the_inputs_device():
    """With ``meta`` as torch's default device, a tensor made without a device would land
    there and fail; the counter keeps to the network's device (the CPU here)."""
    net = SpikingNet("2C3-AP2-3C3-3C3+-FC", (1, 4, 4), 2)
    x = torch.rand(2, 1, 4, 4)
    want = count_synops(net, x, T=2)
    torch.set_default_device("meta")
    try:
        got = count_synops(net, x, T=2)
    finally:
        torch.set_default_device("cpu")
    assert got == want


def test_counter_rejects_wrong_shapes():
    net = _hand_net()
    c = SynOpsCounter(net)
    with pytest.raises(ValueError, match="2 hidden layers"):
        c.add_step([torch.zeros(1, 3)], 0)
    with pytest.raises(ValueError, match="layer 2"):
        c.add_step([torch.zeros(1, 3), torch.zeros(1, 4)], 0)
