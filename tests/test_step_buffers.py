"""The OPZO step's reused buffers (issue 23): the noise z[t] drawn into one buffer per batch
shape, and the feedback product e Fᵀ written into one buffer, give the same numbers as fresh
tensors, bit for bit, and really reuse their memory."""

from __future__ import annotations

import pytest
import torch

from opzo import DFA, OPZO, InstantLoss, NoiseSampler, OnlineLearner, SpikingMLP, SpikingNet
from opzo.rules.direct import DirectFeedbackRule


def _net(conv: bool) -> SpikingNet:
    torch.manual_seed(0)
    if conv:
        return SpikingNet("4C3-AP2-8C3-FC", (1, 8, 8), 5, dropout=0.2)
    net = SpikingMLP([12, 16, 16, 5], dropout=0.2)
    with torch.no_grad():
        net.hidden[0].weight.mul_(3.0)
    return net


def _grads(conv: bool, rule_cls, fresh: bool, batches: int = 3) -> list[torch.Tensor]:
    """.grad after each of a few batches (and M for OPZO), from one seed; ``fresh``: the
    previous path (no reused buffers)."""
    net = _net(conv)
    rule = rule_cls()
    learner = OnlineLearner(net, rule, InstantLoss("mix", 0.05))
    if fresh:
        if rule.noise is not None:
            rule.noise.reuse_buffer = False
        rule._scratch_g = lambda ctx: None  # type: ignore[method-assign]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.manual_seed(1)
    x = torch.rand(6, 64 if conv else 12)
    y = torch.randint(0, 5, (6,))
    out = []
    for _ in range(batches):
        learner.train_batch(x, y, opt, T=4)
        out += [p.grad.clone() for p in net.parameters()]
        out.append(rule.feedback_t.clone())
    return out


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("rule_cls", [OPZO, DFA])
def test_reused_buffers_give_the_same_numbers(conv, rule_cls):
    new = _grads(conv, rule_cls, fresh=False)
    old = _grads(conv, rule_cls, fresh=True)
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert torch.equal(a, b)
    assert any(a.abs().sum() > 0 for a in new)  # the comparison is not between zeros


def test_learner_draws_noise_into_one_buffer():
    net = _net(False)
    rule = OPZO()
    learner = OnlineLearner(net, rule)
    assert rule.noise.reuse_buffer
    ptrs = []
    orig = rule.noise._draw

    def spy(batch, sizes, like):
        z = orig(batch, sizes, like)
        ptrs.append(z.data_ptr())
        return z
    rule.noise._draw = spy  # type: ignore[method-assign]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.rand(6, 12), torch.randint(0, 5, (6,))
    learner.train_batch(x, y, opt, T=3)
    learner.train_batch(x, y, opt, T=3)
    assert len(ptrs) == 6 and len(set(ptrs)) == 1
    # the feedback product, too, is written into one buffer
    assert isinstance(rule, DirectFeedbackRule) and rule._g_buffer.shape == (6, 32)


def test_sampler_on_its_own_hands_out_fresh_tensors():
    """A caller that keeps the z of earlier steps still has them (no buffer by default)."""
    s = NoiseSampler()
    like = torch.zeros(1)
    torch.manual_seed(0)
    z0 = s.sample(0, 4, [3, 5], like)[0].clone()
    first = s.sample(0, 4, [3, 5], like)
    kept = first[0].clone()
    s.sample(1, 4, [3, 5], like)
    assert torch.equal(first[0], kept)
    assert not torch.equal(z0, kept)  # two draws differ


def test_reused_noise_buffer_keeps_the_stream():
    """With the buffer the draws are those of fresh tensors, step after step."""
    like = torch.zeros(1)
    draws = {}
    for reuse in (False, True):
        s = NoiseSampler()
        s.reuse_buffer = reuse
        torch.manual_seed(3)
        draws[reuse] = [s.sample(t, 4, [3, 5], like)[1].clone() for t in range(4)]
    for a, b in zip(draws[False], draws[True]):
        assert torch.equal(a, b)


def _trained_grads(conv: bool, grad_steps: int, update: str = "batch", T: int = 5,
                   rule_cls=OPZO) -> list[torch.Tensor]:
    """.grad of every parameter after one batch in float64 (so that rounding stays far below
    the tolerance), static input (the first layer's own path) and a second layer whose
    input changes every step."""
    net = _net(conv).double()
    rule = rule_cls()
    learner = OnlineLearner(net, rule, InstantLoss("mix", 0.05), update=update,
                            grad_steps=grad_steps)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    torch.manual_seed(1)
    x = torch.rand(6, 64 if conv else 12, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    torch.manual_seed(2)  # the same noise and dropout for every grad_steps
    learner.train_batch(x, y, opt, T=T)
    return [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("grad_steps", [0, 2, 3])
def test_weight_gradient_over_several_steps_in_one_product(conv, grad_steps):
    """Σ_t δ[t]ᵀ â[t] as one product over the stacked steps (k = 2 and 3 leave a partial
    stack at T = 5; 0 = all T) equals the per-step products up to float rounding; the
    biases, still per step, are bit-identical."""
    ref = _trained_grads(conv, 1)
    new = _trained_grads(conv, grad_steps)
    net = _net(conv)
    names = [n for n, _ in net.named_parameters()]
    for name, a, b in zip(names, new, ref):
        assert b.abs().sum() > 0, name
        if name.endswith("bias"):
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_one_product_per_step_mode_and_rules():
    """With per-step updates every step flushes (k does not matter), and a rule without
    noise (DFA) is treated alike."""
    for update in ("step",):
        torch.testing.assert_close(_trained_grads(False, 0, update=update),
                                   _trained_grads(False, 1, update=update), rtol=1e-12,
                                   atol=1e-15)
    torch.testing.assert_close(_trained_grads(True, 0, rule_cls=DFA),
                               _trained_grads(True, 1, rule_cls=DFA), rtol=1e-12, atol=1e-15)


def test_grad_steps_is_checked():
    with pytest.raises(ValueError, match="grad_steps"):
        OnlineLearner(_net(False), OPZO(), grad_steps=-1)


@pytest.mark.parametrize("options,where", [
    ({"trace": "ostl", "hidden": [16]}, "trace 'ostl'"),
    ({"method": "bptt"}, "method 'bptt'"),
    ({"update": "step"}, "update 'step'"),
])
def test_grad_steps_is_refused_where_it_would_change_nothing(options, where):
    from opzo.config import ConfigError, TrainConfig

    TrainConfig(grad_steps=0).validate()  # ottt, update batch: taken
    with pytest.raises(ConfigError, match=f"grad_steps 4: .*not {where}"):
        TrainConfig(grad_steps=4, **options).validate()


def test_stacks_are_kept_from_batch_to_batch():
    """The learner hands every OTTT trace the same workspace each batch: the stacks of δ and
    â are allocated once, and the gradients of later batches are still right."""
    net = _net(True).double()
    learner = OnlineLearner(net, DFA(), grad_steps=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    torch.manual_seed(1)
    x, y = torch.rand(6, 64, dtype=torch.float64), torch.randint(0, 5, (6,))
    ptrs, grads = [], []
    for _ in range(2):
        torch.manual_seed(5)  # the same dropout masks
        learner.train_batch(x, y, opt, T=3)
        ptrs.append(learner._trace_workspaces[1]["stack"][0])  # kept alive: no id reuse
        grads.append([p.grad.clone() for p in net.parameters()])
    assert ptrs[0] is ptrs[1]
    ref = OnlineLearner(net, learner.rule, grad_steps=1)
    torch.manual_seed(5)
    ref.train_batch(x, y, opt, T=3)
    for a, b in zip(grads[1], [p.grad for p in net.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
