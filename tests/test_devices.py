"""Devices: nothing is created on torch's default device by accident, and CUDA equals CPU.

The device-clean test builds the network, the data and the rule's state explicitly on the
CPU, then makes ``meta`` torch's default device and runs a training batch and an evaluation.
Any tensor that a rule, trace, noise sampler, LL/IGL readout, diagnostic or BPTT creates
without naming a device then lands on ``meta``, and the step raises (a meta tensor has no
values: ``.item()``, ``bool()`` and mixing it with CPU tensors fail). The CUDA tests are
marked ``cuda`` and skipped without a GPU (``benchmarks/gpu_check.sh`` runs them).
"""

from __future__ import annotations

import copy

import pytest
import torch

from opzo import InstantLoss, NoiseSampler, OnlineLearner, SpikingNet
from opzo.bptt import BPTTLearner
from opzo.diagnostics import GradientVariance, gradient_cosine
from opzo.learner import evaluate_batch
from opzo.rules import DFA, DKP, OPZO, RULES, ZO, LocalLearning, SpatialBP
from opzo.surrogate import SURROGATES, make_surrogate
from opzo.traces import trace_names

TRACE_NAMES = trace_names()

NETS = [("8-8-FC", (5,)), ("3C3-AP2-4C3-FC", (1, 6, 6))]
CPU = torch.device("cpu")


def _build(spec, shape, surrogate="sigmoid", kernels="native", device=CPU, dropout=0.2):
    torch.manual_seed(0)
    net = SpikingNet(spec, shape, 4, dropout=dropout, surrogate=make_surrogate(surrogate),
                     kernels=kernels).to(device)
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.rand(6, *shape, generator=g, device="cpu").to(device)
    y = (torch.arange(6, device="cpu") % 4).to(device)
    return net, x, y


def _on_meta_default(fn):
    """Run ``fn`` with ``meta`` as torch's default device."""
    torch.set_default_device("meta")
    try:
        return fn()
    finally:
        torch.set_default_device(None)


def _train_and_eval(net, learner, params, x, y, T=3, cosine=None):
    opt = torch.optim.SGD(params, lr=0.1)
    variance = GradientVariance(net)

    def work():
        stats = learner.train_batch(x, y, opt, T=T, on_grad=variance.update)
        if cosine is not None:
            gradient_cosine(net, learner.rule, x, y, T, InstantLoss(), cosine)
        ev = evaluate_batch(net, x, y, InstantLoss(), T=T)
        variance.update()
        variance.result()
        return stats, ev

    stats, ev = _on_meta_default(work)
    assert stats.count == x.shape[0] and ev.count == x.shape[0]
    for p in params:  # every parameter and its gradient stayed where they were
        assert p.device == x.device and p.grad is not None and p.grad.device == x.device


def _cases():
    for spec, shape in NETS:
        conv = "C" in spec
        for rule in sorted(RULES):
            for trace in TRACE_NAMES:
                if conv and trace.removeprefix("f_") in ("ostl", "otpe"):
                    continue
                for surrogate in SURROGATES:
                    yield spec, shape, rule, trace, surrogate


@pytest.mark.parametrize("spec,shape,rule,trace,surrogate", list(_cases()))
def test_every_rule_trace_and_surrogate_is_device_clean(spec, shape, rule, trace, surrogate):
    net, x, y = _build(spec, shape, surrogate)
    r = RULES.build(rule)
    learner = OnlineLearner(net, r, InstantLoss(), trace=trace)
    _train_and_eval(net, learner, list(net.parameters()), x, y)


@pytest.mark.parametrize("spec,shape", NETS)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_local_learning_and_igl_are_device_clean(spec, shape, rule):
    net, x, y = _build(spec, shape)
    r = LocalLearning(RULES.build(rule), igl_layer=1)
    learner = OnlineLearner(net, r, InstantLoss())
    _train_and_eval(net, learner, [*net.parameters(), *r.parameters()], x, y)


@pytest.mark.parametrize("noise", [
    dict(distribution="gaussian", position="before", antithetic=True),
    dict(distribution="rademacher"),
    dict(distribution="sphere"),
    dict(distribution="gaussian", rng="torch"),
    dict(distribution="rademacher", rng="torch"),
])
@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_noise_options_kernels_and_per_step_updates_are_device_clean(noise, kernels):
    for update in ("batch", "step"):
        net, x, y = _build("8-8-FC", (5,), kernels=kernels)
        learner = OnlineLearner(net, OPZO(NoiseSampler(**noise)), InstantLoss(), update=update)
        _train_and_eval(net, learner, list(net.parameters()), x, y)


@pytest.mark.parametrize("spec,shape", NETS)
def test_bptt_and_the_diagnostics_are_device_clean(spec, shape):
    net, x, y = _build(spec, shape)
    _train_and_eval(net, BPTTLearner(net, InstantLoss()), list(net.parameters()), x, y)
    net, x, y = _build(spec, shape)
    learner = OnlineLearner(net, DFA(), InstantLoss())
    _train_and_eval(net, learner, list(net.parameters()), x, y, cosine="bptt")
    _train_and_eval(net, learner, list(net.parameters()), x, y, cosine="bp")


def test_the_meta_default_device_catches_a_tensor_made_without_a_device():
    """The harness itself: a rule that creates a tensor without a device fails the step."""

    class Careless(SpatialBP):
        def deltas(self, ctx):
            out = super().deltas(ctx)
            return [d + torch.zeros(d.shape[1]) for d in out]  # no device: lands on meta

    net, x, y = _build("8-8-FC", (5,))
    learner = OnlineLearner(net, Careless(), InstantLoss())
    with pytest.raises((RuntimeError, NotImplementedError)):
        _train_and_eval(net, learner, list(net.parameters()), x, y)


# ---------------------------------------------------------------------------------------
# CUDA (skipped without a GPU; benchmarks/gpu_check.sh runs them)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _grads(net, rule=None):
    params = [*net.parameters(), *(rule.parameters() if rule is not None else [])]
    return [p.grad.detach().to("cpu", torch.float64) for p in params]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("rule", ["bp", "dfa", "dkp", "zo", "opzo", "opzo+ll", "bptt"])
@pytest.mark.parametrize("spec,shape", NETS)
def test_cuda_gradient_equals_the_cpu_gradient(rule, spec, shape):
    """Same weights, inputs, dropout masks and noise on both devices: the gradients agree to
    float32 tolerance (the noise is drawn on the CPU and handed to both)."""
    dev = torch.device("cuda")
    net, x, y = _build(spec, shape, kernels="torch", dropout=0.0)
    net_gpu = copy.deepcopy(net).to(dev)

    def learner_for(n):
        if rule == "bptt":
            return BPTTLearner(n, InstantLoss())
        base = {"bp": SpatialBP, "dfa": DFA, "dkp": DKP, "zo": ZO, "opzo": OPZO}
        r = base[rule.split("+")[0]]()
        if rule.endswith("+ll"):
            r = LocalLearning(r)
        return OnlineLearner(n, r, InstantLoss())

    cpu_l, gpu_l = learner_for(net), learner_for(net_gpu)
    if rule not in ("bptt",) and cpu_l.rule.parameters():
        for a, b in zip(cpu_l.rule.parameters(), gpu_l.rule.parameters()):
            b.data.copy_(a.data)
    if rule == "dfa":  # the same fixed feedback on both devices
        gpu_l.rule.feedback_t.copy_(cpu_l.rule.feedback_t)
    if rule in ("zo", "opzo", "opzo+ll"):  # the same noise on both devices
        draws: list[torch.Tensor] = []
        rule_c = cpu_l.rule.inner if rule.endswith("+ll") else cpu_l.rule
        rule_g = gpu_l.rule.inner if rule.endswith("+ll") else gpu_l.rule
        sample = rule_c.noise.sample

        def record(t, batch, sizes, like):
            parts = sample(t, batch, sizes, like)
            draws.append(rule_c.noise.z.clone())
            return parts

        def replay(t, batch, sizes, like):
            rule_g.noise.z = draws[t].to(dev)
            return list(rule_g.noise.z.split(sizes, dim=1))

        rule_c.noise.sample = record
        rule_g.noise.sample = replay
    for n, l in ((net, cpu_l), (net_gpu, gpu_l)):
        params = [*n.parameters(), *(l.rule.parameters() if l.rule is not None else [])]
        for p in params:
            p.grad = torch.zeros_like(p)
        l.accumulate(x.to(next(n.parameters()).device), y.to(next(n.parameters()).device), T=3)
    for a, b in zip(_grads(net, cpu_l.rule), _grads(net_gpu, gpu_l.rule)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()


@pytest.mark.cuda
@cuda
def test_one_epoch_on_cuda_trains(tmp_path):
    from opzo.config import TrainConfig
    from opzo.train import run_training

    cfg = TrainConfig(epochs=1, limit_train=2000, limit_test=500, device="cuda",
                      out=str(tmp_path / "run"))
    summary = run_training(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    assert summary["device"].startswith("cuda")
    assert summary["final_test_acc"] > 60.0
