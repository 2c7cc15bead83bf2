"""Truly online learning on a stream (opzo.stream.StreamLearner; issue 15, part 4).

* A stream cut into arbitrary chunks (sizes not aligned with the update interval, single
  steps) gives bit-identical weights, feedback (OPZO's M, DKP's B) and outputs to the stream
  fed at once: OPZO, spatial BP (= OTTT), DFA, DKP; native and torch kernels; with dropout.
* One update window of k steps from rest equals one batch of OnlineLearner with T = k.
* The weights change exactly every k steps; state persists (a second stream window from the
  carried-over state differs from one started at rest); labels −1 carry no error.
"""

from __future__ import annotations

import copy

import pytest
import torch

from opzo import DFA, DKP, OPZO, InstantLoss, NoiseSampler, OnlineLearner, SpatialBP, SpikingMLP
from opzo.stream import StreamLearner

LOSS = InstantLoss("mix", 0.1)


def _make(rule_name: str, kernels: str = "native", dropout: float = 0.0):
    torch.manual_seed(3)
    net = SpikingMLP([6, 12, 10, 4], kernels=kernels, dropout=dropout)
    with torch.no_grad():
        for layer in net.hidden:
            layer.weight.mul_(3.0)
    rule = {"opzo": lambda: OPZO(NoiseSampler(alpha=0.2), lambda_m=0.9),
            "opzo-antithetic": lambda: OPZO(NoiseSampler(alpha=0.2, antithetic=True),
                                            lambda_m=0.9),
            "bp": SpatialBP, "dfa": DFA, "dkp": lambda: DKP(lr=1e-2)}[rule_name]()
    return net, rule


def _stream(n: int = 23, B: int = 3, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, B, 6, generator=g) < 0.4).float()
    labels = torch.randint(0, 4, (n // 4 + 1, B), generator=g)
    y = labels.repeat_interleave(4, dim=0)[:n]  # a new sample every 4 steps
    return x, y


def _run(rule_name: str, chunks: list[int], kernels: str = "native", dropout: float = 0.0,
         k: int = 3, lr: float = 0.05):
    net, rule = _make(rule_name, kernels, dropout)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    learner = StreamLearner(net, rule, opt, LOSS, update_every=k)
    x, y = _stream()
    torch.manual_seed(11)  # the noise and dropout streams
    outs, start, updates = [], 0, 0
    for size in chunks:
        stats = learner.feed(x[start:start + size], y[start:start + size])
        outs.append(stats.outputs)
        updates += stats.updates
        start += size
    assert start == x.shape[0]
    feedback = getattr(rule, "feedback_t", None)
    return ([p.detach().clone() for p in net.parameters()], torch.cat(outs),
            None if feedback is None else feedback.clone(), updates)


CHUNKINGS = [[5, 1, 7, 2, 8], [1] * 23, [22, 1]]


@pytest.mark.parametrize("rule_name,kernels,dropout", [
    ("opzo", "native", 0.0), ("opzo", "torch", 0.0), ("opzo", "native", 0.3),
    ("opzo-antithetic", "native", 0.0), ("bp", "native", 0.0), ("bp", "torch", 0.3),
    ("dfa", "native", 0.0), ("dkp", "native", 0.0)])
def test_chunked_stream_equals_the_stream_fed_at_once(rule_name, kernels, dropout):
    whole, out_whole, fb_whole, n_updates = _run(rule_name, [23], kernels, dropout)
    assert n_updates == 23 // 3
    for chunks in CHUNKINGS:
        params, outs, fb, _ = _run(rule_name, chunks, kernels, dropout)
        for a, b in zip(whole, params):
            assert torch.equal(a, b), chunks
        assert torch.equal(out_whole, outs)
        if fb_whole is not None:
            assert torch.equal(fb_whole, fb)


@pytest.mark.parametrize("rule_name", ["opzo", "bp", "dfa"])
def test_one_window_from_rest_equals_an_online_learner_batch(rule_name):
    """k = T steps of one label from rest: the same gradient, the same optimizer step and
    the same M as OnlineLearner.train_batch on that (T, B, F) input."""
    T = 6
    x, _ = _stream(T)
    y = torch.tensor([0, 3, 1])
    net, rule = _make(rule_name, dropout=0.2)
    net2, rule2 = copy.deepcopy(net), copy.deepcopy(rule)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    torch.manual_seed(5)
    StreamLearner(net, rule, opt, LOSS, update_every=T).feed(x, y.expand(T, 3))
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.5)
    torch.manual_seed(5)
    net2.train()
    OnlineLearner(net2, rule2, LOSS).train_batch(x, y, opt2)
    for a, b in zip(net.parameters(), net2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    if rule_name == "opzo":
        torch.testing.assert_close(rule.M, rule2.M, rtol=1e-6, atol=1e-7)


def test_weights_change_exactly_every_k_steps_and_state_persists():
    net, rule = _make("bp")
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    learner = StreamLearner(net, rule, opt, LOSS, update_every=4)
    x, y = _stream(12)
    changed = []
    for t in range(12):
        before = net.readout.weight.detach().clone()
        learner.feed(x[t:t + 1], y[t:t + 1])
        changed.append(not torch.equal(before, net.readout.weight))
    assert changed == [(t + 1) % 4 == 0 for t in range(12)]
    # the state carried over is not the rest state: from rest, the same weights give other
    # outputs for the next steps
    assert any(float(v.abs().sum()) > 0 for v in learner.state.u)
    twin = copy.deepcopy(net)
    fresh = StreamLearner(twin, copy.deepcopy(rule), torch.optim.SGD(twin.parameters(), lr=0.0),
                          LOSS, update_every=4)
    after = learner.feed(x[:4], y[:4]).outputs
    assert not torch.equal(after, fresh.feed(x[:4], y[:4]).outputs)


def test_steps_without_target_carry_no_error():
    net, rule = _make("bp")
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    learner = StreamLearner(net, rule, opt, LOSS, update_every=100)
    x, _ = _stream(5)
    stats = learner.feed(x, torch.full((5, 3), -1))
    assert float(stats.losses.abs().sum()) == 0.0
    assert all(float(p.grad.abs().sum()) == 0.0 for p in net.parameters())
    with pytest.raises(ValueError, match="labels must have shape"):
        learner.feed(x, torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="parallel streams"):
        learner.feed(x[:, :2], torch.zeros(5, 2, dtype=torch.long))


def test_device_clean():
    net, rule = _make("opzo")
    learner = StreamLearner(net, rule, torch.optim.SGD(net.parameters(), lr=0.1), LOSS,
                            update_every=2)
    x, y = _stream(4)
    torch.set_default_device("meta")
    try:
        stats = learner.feed(x, y)
    finally:
        torch.set_default_device(None)
    assert stats.outputs.device.type == "cpu" and stats.updates == 2
