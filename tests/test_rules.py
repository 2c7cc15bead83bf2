import pytest
import torch
import torch.nn.functional as F

from opzo import DFA, DKP, OPZO, ZO, InstantLoss, NoiseSampler, OnlineLearner, SpatialBP, SpikingMLP
from opzo.neuron import LIFParams
from opzo.rules.base import StepContext
from opzo.surrogate import FastSigmoidSurrogate

from .reference import ottt_autograd_grads


def _grads(net):
    return {name: p.grad.clone() for name, p in net.named_parameters()}


def _net(sizes=(12, 20, 16, 5), **kw):
    net = SpikingMLP(list(sizes), **kw).double()
    with torch.no_grad():  # larger weights so that neurons spike often
        for lin in net.hidden:
            lin.weight.mul_(4.0)
    return net


def test_bp_equals_autograd_single_step():
    net = _net()
    x = torch.randn(9, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (9,))
    loss = InstantLoss("mix", 0.3)
    OnlineLearner(net, SpatialBP(), loss).accumulate(x, y, T=1)
    ours = _grads(net)
    ref = ottt_autograd_grads(net, x, y, 1, loss)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=1e-10), k
    assert ref["hidden.0.weight"].abs().sum() > 0


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_bp_equals_autograd_ottt_over_time(static, reset):
    net = _net(lif=LIFParams(reset=reset), surrogate=FastSigmoidSurrogate(5.0))
    T = 7
    x = torch.randn(6, 12, dtype=torch.float64) if static else torch.rand(T, 6, 12).double()
    y = torch.randint(0, 5, (6,))
    loss = InstantLoss("ce")
    OnlineLearner(net, SpatialBP(), loss).accumulate(x, y, T=T)
    ours = _grads(net)
    ref = ottt_autograd_grads(net, x, y, T, loss)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=1e-10, rtol=1e-7), k


def test_bp_with_dropout_masks_equals_autograd():
    net = _net(dropout=0.3)
    T = 5
    x = torch.randn(6, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    loss = InstantLoss("mix", 0.05)
    masks = net.dropout_masks(6, x)
    assert masks is not None
    net.dropout_masks = lambda batch, like: masks  # the learner must use these masks
    OnlineLearner(net, SpatialBP(), loss).accumulate(x, y, T=T)
    ours = _grads(net)
    ref = ottt_autograd_grads(net, x, y, T, loss, masks=masks)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=1e-10), k


def test_static_input_equals_repeated_sequence_for_every_rule():
    x = torch.randn(5, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (5,))
    for make in (SpatialBP, DFA, DKP, ZO, OPZO):
        results = []
        for inp in (x, x.expand(4, 5, 12)):
            torch.manual_seed(3)
            net = _net()
            OnlineLearner(net, make()).accumulate(inp, y, T=4)
            results.append(_grads(net))
        for k in results[0]:
            assert torch.allclose(results[0][k], results[1][k], atol=1e-10), (make.name, k)


class _LinearProbe:
    """A linear 'network' o = A_out (A2 (h1 + α z1) + α z2) with known Jacobians."""

    def __init__(self, n1=6, n2=5, m=3, h_scale=1.0):
        self.h_scale = h_scale
        g = torch.Generator().manual_seed(1)
        self.A2 = torch.randn(n2, n1, generator=g, dtype=torch.float64)
        self.Aout = torch.randn(m, n2, generator=g, dtype=torch.float64)
        self.sizes = [4, n1, n2, m]
        # Jacobians of o w.r.t. the perturbation of each layer's output: J1 = Aout A2, J2 = Aout
        self.JT = torch.cat([(self.Aout @ self.A2).t(), self.Aout.t()], dim=0)

    def output(self, h1, noise):
        x1 = h1 + noise[0]
        x2 = x1 @ self.A2.t() + noise[1]
        return x2 @ self.Aout.t()


def _run_opzo_on_probe(probe, steps, lambda_m, batch=8, distribution="gaussian", seed=0):
    torch.manual_seed(seed)
    net = SpikingMLP(probe.sizes).double()
    rule = OPZO(NoiseSampler(alpha=0.2, distribution=distribution), lambda_m=lambda_m,
                alpha_factor=True)
    rule.bind(net)
    like = torch.zeros(1, dtype=torch.float64)
    for t in range(steps):
        noise = rule.perturbation(t, batch, like)
        h1 = torch.randn(batch, probe.sizes[1], dtype=torch.float64) * probe.h_scale
        o = probe.output(h1, [rule.noise.alpha * z for z in noise])
        ctx = StepContext(t, 1, o, o, o[:, 0], None, net)
        rule.update_feedback(ctx)
    return rule.M.clone()


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher", "sphere"])
def test_opzo_momentum_converges_to_jacobian_transpose(distribution):
    probe = _LinearProbe()
    errors = []
    for steps in (100, 6400):
        lam = 0.99999
        M = _run_opzo_on_probe(probe, steps, lam, distribution=distribution)
        M = M / (1 - lam**steps)  # remove the bias of the zero initialisation
        errors.append(float((M - probe.JT).norm() / probe.JT.norm()))
    assert errors[1] < errors[0] / 4, errors  # ~1/sqrt(samples): 8x fewer error expected
    assert errors[1] < 0.12, errors


def test_opzo_single_step_estimator_is_unbiased():
    """lambda_m = 0: M is the batch mean of single-sample estimates z õᵀ/α, whose mean is Jᵀ."""
    probe = _LinearProbe(h_scale=0.0)
    mean = _run_opzo_on_probe(probe, 1, 0.0, batch=20000)
    rel = float((mean - probe.JT).norm() / probe.JT.norm())
    # single draws are far from J^T, their mean is close
    single = _run_opzo_on_probe(probe, 1, 0.0, batch=1, seed=12345)
    assert float((single - probe.JT).norm() / probe.JT.norm()) > 0.5
    assert rel < 0.05, rel


def _cosine(a, b):
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_opzo_on_spiking_net_aligns_with_bp():
    """With frozen weights, M learned from noise gives hidden gradients aligned with BP's."""
    torch.manual_seed(0)
    net = SpikingMLP([20, 32, 24, 4]).double()
    with torch.no_grad():
        for lin in net.hidden:
            lin.weight.mul_(3.0)
    x = torch.randn(64, 20, dtype=torch.float64)
    y = (x[:, :4].argmax(1))
    rule = OPZO(NoiseSampler(alpha=0.2), lambda_m=0.999, alpha_factor=True)
    learner = OnlineLearner(net, rule)
    for _ in range(400):
        for p in net.parameters():
            p.grad = None
        learner.accumulate(x, y, T=4)
    opzo_grads = _grads(net)
    for p in net.parameters():
        p.grad = None
    OnlineLearner(net, SpatialBP()).accumulate(x, y, T=4)
    bp = _grads(net)
    assert _cosine(opzo_grads["hidden.1.weight"], bp["hidden.1.weight"]) > 0.5
    assert _cosine(opzo_grads["hidden.0.weight"], bp["hidden.0.weight"]) > 0.2
    # the readout sees the noisy spikes, so its gradient differs a little from BP's
    assert _cosine(opzo_grads["readout.weight"], bp["readout.weight"]) > 0.8


def test_zo_has_positive_expected_cosine_with_true_gradient():
    torch.manual_seed(1)
    net = _net((10, 16, 12, 3))
    x = torch.randn(32, 10, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    learner = OnlineLearner(net, ZO(NoiseSampler(alpha=0.2)))
    total = None
    for _ in range(600):
        for p in net.parameters():
            p.grad = None
        learner.accumulate(x, y, T=3)
        g = _grads(net)
        total = g if total is None else {k: total[k] + g[k] for k in g}
    for p in net.parameters():
        p.grad = None
    OnlineLearner(net, SpatialBP()).accumulate(x, y, T=3)
    bp = _grads(net)
    single = _cosine(g["hidden.1.weight"], bp["hidden.1.weight"])
    mean = _cosine(total["hidden.1.weight"], bp["hidden.1.weight"])
    assert mean > 0.3, (mean, single)
    assert mean > abs(single)


def _train_steps(rule, steps=3):
    net = SpikingMLP([12, 16, 8, 3])
    learner = OnlineLearner(net, rule)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x = torch.randn(10, 12) * 3
    y = torch.randint(0, 3, (10,))
    before = rule.feedback.clone()
    for _ in range(steps):
        learner.train_batch(x, y, opt, T=4)
    return before, rule.feedback.clone()


def test_dfa_feedback_is_fixed_and_dkp_feedback_learns_from_zero():
    before, after = _train_steps(DFA())
    assert before.abs().sum() > 0 and torch.equal(before, after)
    before, after = _train_steps(DKP(lr=1e-2))
    assert before.abs().sum() == 0 and after.abs().sum() > 0


def test_rules_write_only_grad():
    net = SpikingMLP([12, 16, 8, 3], dropout=0.2)
    params = {k: v.clone() for k, v in net.state_dict().items()}
    for rule in (SpatialBP(), DFA(), DKP(), ZO(), OPZO()):
        learner = OnlineLearner(net, rule)
        learner.accumulate(torch.randn(4, 12) * 8, torch.randint(0, 3, (4,)), T=3)
        for k, v in net.state_dict().items():
            assert torch.equal(v, params[k]), (rule.name, k)
        # DKP's feedback starts at zero, so its first hidden gradients are zero
        if rule.name != "dkp":
            assert all(p.grad.abs().sum() > 0 for p in net.parameters()), rule.name


def test_antithetic_noise_alternates_sign_and_alpha_decays():
    s = NoiseSampler(alpha=0.2, alpha_final=0.01, antithetic=True)
    like = torch.zeros(1)
    z0 = [z.clone() for z in s.sample(0, 3, [4, 2], like)]
    z1 = s.sample(1, 3, [4, 2], like)
    z2 = s.sample(2, 3, [4, 2], like)
    assert torch.equal(z1[0], -z0[0]) and not torch.equal(z2[0].abs(), z0[0].abs())
    s.set_progress(0.5)
    assert abs(s.alpha - 0.105) < 1e-12
    s.set_progress(1.0)
    assert abs(s.alpha - 0.01) < 1e-12


def test_noise_distributions_have_unit_variance():
    for dist in ("gaussian", "rademacher", "sphere"):
        s = NoiseSampler(alpha=1.0, distribution=dist)
        z = torch.cat(s.sample(0, 4000, [50, 30], torch.zeros(1, dtype=torch.float64)), 1)
        assert abs(float(z.var()) - 1.0) < 0.02, dist
        assert abs(float(z.mean())) < 0.01, dist
    z = NoiseSampler(alpha=1.0, distribution="rademacher").sample(0, 10, [7], torch.zeros(1))[0]
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    z = NoiseSampler(alpha=1.0, distribution="sphere").sample(0, 10, [7, 9], torch.zeros(1))
    assert torch.allclose(z[1].norm(dim=1), torch.full((10,), 3.0))


def test_noise_before_neuron_changes_the_current_not_the_output():
    net = SpikingMLP([6, 5, 3])
    state = net.initial_state(2, torch.zeros(1))
    noise = [torch.full((2, 5), 2.5)]
    x = torch.zeros(2, 6)
    with torch.no_grad():
        net.hidden[0].bias.fill_(0.7)
        _, rec = net.step(state, x, noise=noise, noise_scale=0.2, noise_position="before")
    assert torch.allclose(rec.u[0], torch.full((2, 5), 1.2))
    assert torch.equal(rec.out[0], torch.ones(2, 5))


def test_bad_inputs_give_clear_errors():
    net = SpikingMLP([6, 5, 3])
    learner = OnlineLearner(net, OPZO())
    with pytest.raises(ValueError, match="expects 6"):
        learner.accumulate(torch.zeros(2, 7), torch.zeros(2, dtype=torch.long), T=2)
    with pytest.raises(ValueError, match="NaN"):
        learner.accumulate(torch.full((2, 6), float("nan")), torch.zeros(2, dtype=torch.long), T=2)
    with pytest.raises(ValueError, match="labels"):
        learner.accumulate(torch.zeros(2, 6), torch.tensor([0, 3]), T=2)
    with pytest.raises(ValueError, match="choose one of"):
        NoiseSampler(distribution="cauchy")


class _CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):
        type(self).steps += 1
        return super().step(closure)


def test_per_step_update_mode():
    x = torch.randn(6, 12) * 3
    y = torch.randint(0, 3, (6,))
    # T = 1: one update per batch and one per step are the same thing
    params = []
    for update in ("batch", "step"):
        torch.manual_seed(5)
        net = SpikingMLP([12, 16, 8, 3])
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        OnlineLearner(net, OPZO(), update=update).train_batch(x, y, opt, T=1)
        params.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.allclose(a, b) for a, b in zip(*params))
    # T = 4: the per-step mode steps the optimizer at every time step
    torch.manual_seed(5)
    net = SpikingMLP([12, 16, 8, 3])
    _CountingSGD.steps = 0
    opt = _CountingSGD(net.parameters(), lr=0.1)
    OnlineLearner(net, SpatialBP(), update="step").train_batch(x, y, opt, T=4)
    assert _CountingSGD.steps == 4
    with pytest.raises(ValueError, match="optimizer"):
        OnlineLearner(net, SpatialBP(), update="step").accumulate(x, y, T=2)


def test_bptt_learner_equals_plain_autograd_unroll():
    from opzo.bptt import BPTTLearner

    from .reference import bptt_autograd_grads

    net = _net()
    x = torch.randn(5, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (5,))
    loss = InstantLoss("mix", 0.2)
    for p in net.parameters():
        p.grad = None
    BPTTLearner(net, loss).accumulate(x, y, T=4)
    ours = _grads(net)
    ref = bptt_autograd_grads(net, x, y, 4, loss)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=1e-12), k
    # and it differs from OTTT's approximation (time paths matter here)
    for p in net.parameters():
        p.grad = None
    OnlineLearner(net, SpatialBP(), loss).accumulate(x, y, T=4)
    assert not torch.allclose(_grads(net)["hidden.0.weight"], ref["hidden.0.weight"], atol=1e-6)


@pytest.mark.parametrize("density", [0.01, 0.5])
def test_bptt_learner_on_sparse_and_dense_spike_inputs_equals_the_unroll(density):
    """Per-step inputs: the first layer's currents of all steps come from one product, a
    sparse one when the input is mostly zeros (latency codes); the gradient is unchanged."""
    from opzo.bptt import SPARSE_INPUT_DENSITY, BPTTLearner

    from .reference import bptt_autograd_grads

    net = _net()
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(30, 5, 12, generator=g, dtype=torch.float64) < density).double()
    assert (float(x.mean()) < SPARSE_INPUT_DENSITY) == (density < SPARSE_INPUT_DENSITY)
    y = torch.randint(0, 5, (5,), generator=g)
    loss = InstantLoss("mix", 0.2)
    for p in net.parameters():
        p.grad = None
    BPTTLearner(net, loss).accumulate(x, y, T=30)
    ref = bptt_autograd_grads(net, x, y, 30, loss)
    for k in ref:
        assert torch.allclose(_grads(net)[k], ref[k], atol=1e-12), k
    assert ref["hidden.0.weight"].abs().sum() > 0
