"""The deployed chip's noise (opzo.hardware): where it enters, what each rule sees, evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from opzo import DFA, InstantLoss, OnlineLearner, SpatialBP, SpikingMLP
from opzo.bptt import BPTTLearner
from opzo.build import build_network, build_rule
from opzo.cli import main
from opzo.config import TrainConfig
from opzo.hardware import HardwareNoise, attach, evaluate_under_noise, perturb_weights
from opzo.neuron import LIFParams
from opzo.rules import OPZO
from opzo.train import run_training

CPU = torch.device("cpu")


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    net = SpikingMLP([5, 6, 4, 3], kernels="torch", lif=LIFParams(reset="zero"), **kw).double()
    with torch.no_grad():
        for layer in net.hidden:
            layer.weight.mul_(3.0)
    return net


def _x(batch=4):
    g = torch.Generator(device="cpu").manual_seed(3)
    return torch.rand(batch, 5, generator=g, dtype=torch.float64, device="cpu")


def _manual_potentials(net, x, T, noise_for_layer):
    """u_l[t] of eq. 1 written out, with noise_for_layer(t, l, current) added to I_l."""
    lam, vth = net.neuron.lam, net.neuron.v_th
    u = [torch.zeros(x.shape[0], n, dtype=x.dtype) for n in net.hidden_sizes]
    s = [torch.zeros_like(v) for v in u]
    out = []
    for t in range(T):
        inp = x
        for l, layer in enumerate(net.hidden):
            current = inp @ layer.weight.t() + layer.bias
            current = current + noise_for_layer(t, l, current)
            u[l] = lam * u[l] * (1 - s[l]) + current
            s[l] = (u[l] > vth).to(x.dtype)
            inp = s[l]
        out.append([v.clone() for v in u])
    return out


def test_gaussian_chip_noise_is_fresh_on_every_current_at_every_step():
    net, x, T = _net(), _x(), 3
    attach(net, 0.7, "gaussian")
    torch.manual_seed(11)
    got = [[v.clone() for v in rec.u] for _, rec in net.run(x, T)]
    torch.manual_seed(11)
    want = _manual_potentials(net, x, T, lambda t, l, c: 0.7 * torch.randn_like(c))
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            assert torch.allclose(a, b, atol=1e-12)
    clean = _manual_potentials(net, x, T, lambda t, l, c: torch.zeros_like(c))
    assert not torch.allclose(got[-1][0], clean[-1][0])


def test_fixed_mismatch_is_one_offset_per_neuron_from_the_seed():
    net, x, T = _net(), _x(), 3
    hw = attach(net, 0.5, "fixed", seed=4)
    assert hw is not None and [o.shape[0] for o in hw.offsets] == [6, 4]
    again = HardwareNoise(0.5, "fixed", [6, 4], seed=4)
    assert all(torch.equal(a, b) for a, b in zip(hw.offsets, again.offsets))
    assert not torch.equal(hw.offsets[0], HardwareNoise(0.5, "fixed", [6, 4], 5).offsets[0])
    got = [[v.clone() for v in rec.u] for _, rec in net.run(x, T)]
    want = _manual_potentials(net, x, T, lambda t, l, c: hw.offsets[l].to(c.dtype))
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            assert torch.allclose(a, b, atol=1e-6)
    assert "hardware.offset0" not in net.state_dict()  # not part of the weights
    net.float()
    assert hw.offsets[0].dtype == torch.float32  # moves with the network


def test_every_rule_sees_the_chip_and_opzo_takes_it_as_its_perturbation():
    cfg = TrainConfig(hw_noise=0.3, alpha=0.05, antithetic=True, noise_position="after",
                      alpha_factor=True)
    rule = build_rule(cfg)
    assert isinstance(rule, OPZO)
    noise = rule.noise
    assert (noise.alpha, noise.position, noise.antithetic, rule.alpha_factor) == (
        0.3, "before", False, False)
    # the network does not add the chip's noise a second time when the rule injects it
    net = _net()
    attach(net, 0.3, "gaussian")
    learner = OnlineLearner(net, OPZO(type(noise)(alpha=0.3, position="before",
                                                  rng="torch")), InstantLoss())
    seen = []
    original = net.step

    def step(state, x_t, **kw):
        o, rec = original(state, x_t, **kw)
        seen.append((kw["noise"], [u.clone() for u in rec.u]))
        return o, rec

    net.step = step
    torch.manual_seed(2)
    learner.accumulate(_x(), torch.tensor([0, 1, 2, 0]), T=1)
    z, u = seen[0]
    layer = net.hidden[0]
    current = _x() @ layer.weight.t() + layer.bias
    assert torch.allclose(u[0], current + 0.3 * z[0], atol=1e-12)
    # a rule without noise of its own (BP, DFA): the network's step adds the chip's noise
    for rule in (SpatialBP(), DFA()):
        net = _net()
        attach(net, 0.3, "gaussian")
        torch.manual_seed(5)
        noisy = OnlineLearner(net, rule, InstantLoss()).accumulate(_x(), torch.tensor(
            [0, 1, 2, 0]), T=3)
        clean_net = _net()
        torch.manual_seed(5)
        clean = OnlineLearner(clean_net, type(rule)(), InstantLoss()).accumulate(
            _x(), torch.tensor([0, 1, 2, 0]), T=3)
        assert noisy.loss_sum != clean.loss_sum


def test_bptt_runs_the_same_noisy_forward_as_the_online_rules():
    y = torch.tensor([0, 1, 2, 0])
    losses = []
    for make in (lambda n: BPTTLearner(n, InstantLoss()),
                 lambda n: OnlineLearner(n, SpatialBP(), InstantLoss())):
        net = _net()
        attach(net, 0.4, "gaussian")
        torch.manual_seed(9)
        losses.append(make(net).accumulate(_x(), y, T=3).loss_sum)
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)


def test_evaluation_under_noise_averages_draws_and_leaves_the_network_as_it_was():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = _x(64).float(), torch.arange(64) % 3
    net = net.float()
    before = {k: v.float() for k, v in before.items()}

    def acc(n):
        return {"acc": float((n(x, T=3).argmax(1) == y).float().mean()) * 100}

    for kind, weight in (("gaussian", 0.0), ("fixed", 0.0), ("fixed", 0.3)):
        out = evaluate_under_noise(acc, net, 2.0, kind, repeats=4, seed=1, weight_scale=weight)
        assert len(out["acc"]) == 4 and out["acc_mean"] == pytest.approx(
            sum(out["acc"]) / 4)
        assert net.hardware is None
        for k, v in net.state_dict().items():
            assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="mismatch"):
        evaluate_under_noise(acc, net, 1.0, "gaussian", weight_scale=0.1)
    p = SpikingMLP([3, 2, 2])
    w = p.hidden[0].weight.detach().clone()
    perturb_weights(p, 0.1, 0)
    ratio = p.hidden[0].weight.detach() / w
    assert 0 < (ratio - 1).abs().max() < 0.6


def test_train_and_eval_on_a_noisy_chip(tmp_path, capsys):
    base = dict(hidden=[48], T=3, epochs=1, batch_size=50, limit_train=400, limit_test=200,
                eval_batch_size=200, threads=1)
    run_training(TrainConfig(method="bp", out=str(tmp_path / "a"), **base), tmp_path / "a",
                 progress=False, log=lambda *_: None)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "a"), "--hw-noise", "1.5", "--hw-noise-kind", "fixed",
                 "--hw-repeats", "3", "--hw-weight-noise", "0.1"]) == 0
    out = json.loads(capsys.readouterr().out)
    hw = out["hardware"]
    assert hw["hw_noise_kind"] == "fixed" and len(hw["acc"]) == 3
    assert hw["acc_mean"] < out["acc"]  # the clean accuracy is the top-level one
    cfg = TrainConfig(method="dfa", hw_noise=0.5, init_from=str(tmp_path / "a"), lr=1e-4,
                      out=str(tmp_path / "b"), **base)
    run_training(cfg, tmp_path / "b", progress=False, log=lambda *_: None)
    net = build_network(cfg, 784, 10)
    assert net.hardware is not None and net.hardware.scale == 0.5


def test_eval_tests_a_run_on_its_own_chip_by_default(tmp_path, capsys):
    base = dict(hidden=[32], T=3, epochs=1, batch_size=50, limit_train=200, limit_test=100,
                eval_batch_size=100, threads=1)
    cfg = TrainConfig(method="bp", hw_noise=1.0, hw_noise_kind="fixed", hw_seed=7,
                      out=str(tmp_path / "a"), **base)
    run_training(cfg, tmp_path / "a", progress=False, log=lambda *_: None)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "a"), "--hw-repeats", "2"]) == 0
    hw = json.loads(capsys.readouterr().out)["hardware"]
    assert (hw["hw_noise_kind"], hw["seed"], hw["hw_noise"]) == ("fixed", 7, 1.0)
    assert main(["eval", str(tmp_path / "a"), "--hw-noise-kind", "gaussian",
                 "--hw-repeats", "2"]) == 0  # the run's scale, another kind
    hw = json.loads(capsys.readouterr().out)["hardware"]
    assert (hw["hw_noise_kind"], hw["hw_noise"]) == ("gaussian", 1.0)
    run_training(TrainConfig(method="bp", out=str(tmp_path / "b"), **base), tmp_path / "b",
                 progress=False, log=lambda *_: None)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "b"), "--hw-noise-kind", "fixed"]) == 2
    assert "--hw-noise SCALE" in capsys.readouterr().err
