"""The chip (opzo.chip): the reference backend equals today's training bit for bit, the
weight grid's rounding, the quantized and mismatched forward against an independent
fixed-point reference, a foreign backend behind the interface, resume, and the one-line
errors of the command line."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from opzo.chip import (
    ChipConfig,
    ChipStep,
    OpzoChip,
    WeightGrid,
    check_shapes,
    evaluate_on_chip,
    round_to_grid,
    setup_chip,
)
from opzo.cli import main
from opzo.config import TrainConfig
from opzo.hardware import attach
from opzo.learner import OnlineLearner
from opzo.network import SpikingMLP
from opzo.neurons import ALIF, CubaLIF
from opzo.rules.bp import SpatialBP
from opzo.rules.direct import DFA, OPZO
from opzo.rules.noise import NoiseSampler
from opzo.rules.zo import ZO
from opzo.rundir import Interrupted
from opzo.train import run_training

SIZES = [20, 16, 12, 5]
RULES = {
    "opzo": lambda: OPZO(NoiseSampler(alpha=0.3, position="before")),
    "dfa": DFA,
    "zo": lambda: ZO(NoiseSampler(alpha=0.3, position="before")),
    "bp": SpatialBP,
}


def _batches(n=3, batch=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, SIZES[0], generator=g), torch.randint(0, SIZES[-1], (batch,),
                                                                     generator=g))
            for _ in range(n)]


def _train(rule_name, chip=None, update="batch", kernels="native", hw=0.0, backend=None,
           neuron=None):
    """Three batches of a small FC net (its hidden weights scaled so that it fires);
    ``chip``: a ChipConfig (or None: today's path); ``backend``: a ChipBackend factory taking
    the net. Returns the weights, the losses, the net and the chip."""
    torch.manual_seed(0)
    net = SpikingMLP(SIZES, kernels=kernels, **({} if neuron is None else {"neuron": neuron}))
    with torch.no_grad():
        for layer in net.hidden:
            layer.weight.mul_(4.0)
    if hw:
        attach(net, hw)
    rule = RULES[rule_name]()
    setup = setup_chip(net, chip) if chip is not None else None
    be = backend(net) if backend is not None else (setup.learner_chip if setup else None)
    learner = OnlineLearner(net, rule, update=update, chip=be)
    opt = torch.optim.AdamW([*net.parameters(), *rule.parameters()], lr=1e-2)
    if setup is not None:
        setup.attach(opt, net)
    elif be is not None:
        opt.register_step_post_hook(lambda *_: be.write_weights(net))
    losses = [learner.train_batch(x, y, opt, T=4).loss_sum for x, y in _batches()]
    return [p.detach().clone() for p in net.parameters()], losses, net, setup


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("variant", [{}, {"update": "step"}, {"hw": 0.3}])
def test_reference_chip_equals_todays_training_bit_for_bit(rule, variant):
    today, today_loss, _, _ = _train(rule, **variant)
    chip, chip_loss, _, setup = _train(rule, ChipConfig(backend="opzo"), **variant)
    assert isinstance(setup.backend, OpzoChip)
    assert chip_loss == today_loss
    for a, b in zip(today, chip):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    assert not torch.equal(today[0], 4 * SpikingMLP(SIZES).hidden[0].weight)  # it trained


@pytest.mark.parametrize("rule", ["opzo", "bp"])
@pytest.mark.parametrize("neuron", [ALIF(), CubaLIF()], ids=["alif", "cuba"])
def test_reference_chip_equals_today_for_other_neurons(rule, neuron):
    """ALIF's threshold moves: the chip reports it, so ψ is taken at the step's threshold."""
    today, today_loss, _, _ = _train(rule, neuron=neuron)
    chip, chip_loss, _, _ = _train(rule, ChipConfig(backend="opzo"), neuron=neuron)
    assert chip_loss == today_loss
    for a, b in zip(today, chip):
        assert torch.equal(a, b)


def test_stochastic_rounding_is_unbiased_and_nearest_is_not():
    g = torch.Generator().manual_seed(5)
    v = torch.tensor([0.1, 0.5, 2.3, -1.7, -0.05, 3.0], dtype=torch.float64)
    n = 40000
    draws = torch.stack([round_to_grid(v, "stochastic", g) for _ in range(n)])
    assert torch.all(draws == draws.round())  # whole steps
    assert torch.all((draws == v.floor()) | (draws == v.ceil()))
    frac = v - v.floor()
    bound = 5 * torch.sqrt(frac * (1 - frac) / n) + 1e-12  # five standard errors
    assert torch.all((draws.mean(0) - v).abs() <= bound)
    assert torch.equal(round_to_grid(v, "nearest"), torch.tensor([0., 0., 2., -2., -0., 3.],
                                                                 dtype=torch.float64))


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_sub_half_step_updates(rounding):
    """An update of 0.3 steps: nearest rounding loses it, stochastic rounding keeps it in
    expectation; the weights always stay on the grid."""
    torch.manual_seed(0)
    net = SpikingMLP([30, 40, 5])
    grid = WeightGrid(4, rounding, seed=2)
    grid.setup_(net)
    w = net.hidden[0].weight
    s = grid.scales[0]
    assert s == pytest.approx(float(w.detach().abs().max()) / 7)
    before = w.detach().clone()
    q = before / s
    assert torch.allclose(q, q.round(), atol=1e-5) and q.abs().max() <= 7
    with torch.no_grad():  # what an optimizer step of +0.3 s would write
        for layer in [*net.hidden, net.readout]:
            layer.weight.add_(0.3 * grid.scales[[*net.hidden, net.readout].index(layer)])
    grid.apply_(net)
    moved = (w.detach() - before) / s
    assert torch.allclose(moved, moved.round(), atol=1e-4)
    assert (w.detach() / s).abs().max() <= 7 + 1e-4
    inside = before.abs() < 6.5 * s  # not saturated
    if rounding == "nearest":
        assert torch.equal(w.detach(), before)
    else:
        m = moved[inside]
        assert set(m.round().unique().tolist()) <= {0.0, 1.0}
        p = float(m.mean())
        sd = math.sqrt(0.3 * 0.7 / m.numel())
        assert abs(p - 0.3) < 5 * sd


def _fixed_point_reference(net, x, T, bits_w, bits_u, s_th, s_lk, seed):
    """The chip's forward written independently, in float64 numpy with integer weight codes:
    I = s_l (Q x + q_b); u = k Δ with k = clip(round((λ_i (u − V_i s) + I)/Δ)); s = [u > V_i]."""
    qmax = 2 ** (bits_w - 1) - 1
    layers = [*net.hidden, net.readout]
    codes = []
    for layer in layers:
        W = layer.weight.detach().double().numpy()
        b = layer.bias.detach().double().numpy()
        s = np.abs(W).max() / qmax
        codes.append((np.clip(np.round(W / s), -qmax, qmax), np.clip(np.round(b / s), -qmax,
                                                                    qmax), s))
    g = torch.Generator().manual_seed(seed)
    lam0, vth0 = net.neuron.lam, net.neuron.v_th
    mism = []
    for n in net.hidden_sizes:
        eps = torch.randn(n, generator=g, dtype=torch.float64).numpy()
        eta = torch.randn(n, generator=g, dtype=torch.float64).numpy()
        mism.append((np.maximum(vth0 * (1 + s_th * eps), 0), np.clip(lam0 * (1 + s_lk * eta),
                                                                     0, 1)))
    delta = vth0 / 2 ** (bits_u - 2)
    k_lo, k_hi = -(2 ** (bits_u - 1)), 2 ** (bits_u - 1) - 1
    xs = x.double().numpy()
    u = [np.zeros((xs.shape[0], n)) for n in net.hidden_sizes]
    sp = [np.zeros((xs.shape[0], n)) for n in net.hidden_sizes]
    out, us, spikes = [], [], []
    for _ in range(T):
        inp = xs
        for l in range(len(net.hidden)):
            Q, qb, s = codes[l]
            current = s * (inp @ Q.T + qb)
            vth, lam = mism[l]
            k = np.clip(np.round((lam * (u[l] - vth * sp[l]) + current) / delta), k_lo, k_hi)
            u[l] = k * delta
            sp[l] = (u[l] > vth).astype(np.float64)
            inp = sp[l]
        Q, qb, s = codes[-1]
        out.append(s * (inp @ Q.T + qb))
        us.append([a.copy() for a in u])
        spikes.append([a.copy() for a in sp])
    return out, us, spikes


def test_quantized_forward_equals_fixed_point_reference():
    torch.manual_seed(3)
    net = SpikingMLP([24, 40, 30, 6]).double()
    with torch.no_grad():
        for layer in net.hidden:
            layer.weight.mul_(3.0)  # enough spikes to matter
    x = torch.rand(16, 24, dtype=torch.float64)
    cfg = ChipConfig(weight_bits=4, state_bits=6, threshold_noise=0.2, leak_noise=0.3, seed=7)
    T = 6
    ref_o, ref_u, ref_s = _fixed_point_reference(copy.deepcopy(net), x, T, 4, 6, 0.2, 0.3, 7)
    setup = setup_chip(net, cfg)
    chip = setup.backend
    chip.reset(16)
    steps = chip.run(x.unsqueeze(0).expand(T, -1, -1))
    total = 0.0
    for t, st in enumerate(steps):
        for l in range(2):
            assert np.array_equal(st.spikes[l].numpy(), ref_s[t][l]), (t, l)
            assert np.allclose(st.u[l].numpy(), ref_u[t][l], rtol=0, atol=1e-9), (t, l)
        assert np.allclose(st.output.numpy(), ref_o[t], rtol=0, atol=1e-9)
        total += float(st.spikes[0].sum())
    assert total > 0  # the layers fire (the comparison is not of silent layers)
    assert len(np.unique(ref_u[-1][0])) > 5


class FakeChip:
    """A foreign chip behind the interface: its own copy of the network, stepped with the
    neuron's pure (out-of-place) step and plain matrix products."""

    name = "fake"

    def __init__(self, net, wrong_shapes=False):
        self.net = copy.deepcopy(net)
        self.wrong = wrong_shapes

    def write_weights(self, net):
        with torch.no_grad():
            for a, b in zip(self.net.parameters(), net.parameters()):
                a.copy_(b)

    def reset(self, batch):
        self.state = [self.net.neuron.initial_state(batch, n, self.net.readout.weight)
                      for n in self.net.hidden_sizes]

    def run(self, x, noise=None, noise_scale=1.0):
        out = []
        with torch.no_grad():
            for t in range(x.shape[0]):
                inp, us, ss = x[t], [], []
                for l, layer in enumerate(self.net.hidden):
                    current = inp @ layer.weight.t() + layer.bias
                    if noise is not None:
                        current = current + noise_scale * noise[t][l]
                    self.state[l] = self.net.neuron.step(self.state[l], current,
                                                         self.net.surrogate)
                    us.append(self.state[l]["u"])
                    ss.append(self.state[l]["s"])
                    inp = ss[-1]
                o = inp @ self.net.readout.weight.t() + self.net.readout.bias
                if self.wrong:
                    us[-1] = us[-1][:, :-1]
                out.append(ChipStep(us, ss, o))
        return out


@pytest.mark.parametrize("rule", ["opzo", "dfa"])
def test_foreign_backend_equals_reference(rule):
    ref, ref_loss, _, _ = _train(rule, ChipConfig(backend="opzo"), kernels="torch")
    fake, fake_loss, _, _ = _train(rule, kernels="torch", backend=FakeChip)
    assert fake_loss == pytest.approx(ref_loss, rel=1e-6)
    for a, b in zip(ref, fake):
        assert torch.allclose(a, b, atol=1e-6)


def test_backend_with_wrong_shapes_is_refused():
    net = SpikingMLP(SIZES)
    bad = FakeChip(net, wrong_shapes=True)
    with pytest.raises(ValueError, match="potentials of shapes .* hidden layers"):
        check_shapes(bad, net)
    learner = OnlineLearner(net, DFA(), chip=bad)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = _batches(1)[0]
    with pytest.raises(ValueError, match="chip 'fake' returns potentials"):
        learner.train_batch(x, y, opt, T=2)
    check_shapes(FakeChip(net), net)  # the right shapes pass


def test_weights_stay_on_the_grid_and_chip_accuracy():
    w, _, net, setup = _train("dfa", ChipConfig(weight_bits=3, update_rounding="stochastic",
                                                backend="opzo"))
    for layer, s in zip([*net.hidden, net.readout], setup.grid.scales):
        for p in (layer.weight, layer.bias):
            q = p.detach() / s
            assert torch.allclose(q, q.round(), atol=1e-4) and q.abs().max() <= 3 + 1e-4
    x, y = _batches(1, batch=32, seed=9)[0]
    acc = evaluate_on_chip(setup.backend, net, x, y, T=4)
    host = float((net(x, 4).argmax(1) == y).float().mean())
    assert acc == pytest.approx(host)  # no neuron properties: the chip is the host


def _cfg(tmp_path, name, **kw):
    base = dict(dataset="embedded-mnist", hidden=[24], T=3, epochs=2, batch_size=32,
                limit_train=128, limit_test=64, dropout=0.0, method="opzo",
                noise_position="before", out=str(tmp_path / name))
    base.update(kw)
    return TrainConfig(**base).validate()


def test_resume_with_a_chip_is_exact(tmp_path):
    quiet = dict(progress=False, log=lambda *_: None)
    chip = dict(weight_bits=4, update_rounding="stochastic", state_bits=8,
                hw_threshold_noise=0.1, hw_leak_noise=0.1, chip="opzo")
    run_training(_cfg(tmp_path, "full", **chip), tmp_path / "full", **quiet)
    with pytest.raises(Interrupted):
        run_training(_cfg(tmp_path, "cut", **chip), tmp_path / "cut",
                     stop_after_batches=3, **quiet)
    torch.manual_seed(99)
    run_training(_cfg(tmp_path, "cut", **chip), tmp_path / "cut", resume=True, **quiet)
    rows = [[{k: v for k, v in json.loads(r).items() if "time" not in k}
             for r in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("full", "cut")]
    assert rows[0] == rows[1]
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for k in full["model"]:
        assert torch.equal(full["model"][k], cut["model"][k]), k
    assert full["chip"]["grid"]["scales"] == cut["chip"]["grid"]["scales"]


def _one_line_error(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("opzo: error: "), err
    assert match in err[0], err[0]


BASE = ["train", "--dataset", "embedded-mnist", "--hidden", "16", "--T", "2", "--epochs", "1",
        "--limit-train", "32", "--limit-test", "32", "--dropout", "0", "--method", "dfa"]


def test_bad_chip_inputs_give_one_line(tmp_path, capsys, monkeypatch):
    out = ["--out", str(tmp_path / "r")]
    _one_line_error(capsys, [*BASE, *out, "--weight-bits", "1"], "'weight_bits' = 1 must be >= 2")
    _one_line_error(capsys, [*BASE, *out, "--state-bits", "17"], "must be <= 16")
    _one_line_error(capsys, [*BASE, *out, "--chip", "loihi"], "chip 'loihi'")
    _one_line_error(capsys, [*BASE, *out, "--chip", "opzo", "--chip-variant", "cuba"],
                    "chip_variant 'cuba' is the neuron of a NIR chip")
    _one_line_error(capsys, [*BASE, *out, "--chip", f"nir:{tmp_path}/no.nir"], "does not exist")
    _one_line_error(capsys, [*BASE, *out, "--weight-bits", "4", "--net", "4C3-FC"],
                    "fully connected")
    _one_line_error(capsys, [*BASE[:-2], "--method", "opzo", *out, "--chip", "opzo"],
                    "--noise-position before")
    # a NIR chip: the simulator missing, a graph the chip cannot run, wrong shapes
    graph = tmp_path / "g.nir"
    graph.write_bytes(b"")
    from opzo import chip_nir  # its factory, registered for nir:, reads these names

    monkeypatch.setattr(chip_nir, "SIMULATORS", ("snntorch", "spikingjelly", "norse"))
    monkeypatch.setattr(chip_nir, "VARIANTS", ("same", "cuba"))
    behaviour = {}

    def nir_chip(path, sim, net, variant="same", dt=1e-4):
        kind = behaviour["kind"]
        if kind == "import":
            raise ImportError("No module named 'norse'")
        if kind == "graph":
            raise ValueError("the graph's node 'h1' is a CubaLIF\nthat snntorch cannot run")
        return FakeChip(net, wrong_shapes=True)

    monkeypatch.setattr(chip_nir, "NirChip", nir_chip)
    nir = [*BASE, *out, "--chip", f"nir:{graph}"]
    behaviour["kind"] = "import"
    _one_line_error(capsys, [*nir, "--chip-sim", "norse"], "pip install norse")
    behaviour["kind"] = "graph"
    _one_line_error(capsys, nir, "cannot run")
    behaviour["kind"] = "shapes"
    _one_line_error(capsys, nir, "returns potentials of shapes")
    _one_line_error(capsys, [*nir, "--chip-variant", "odd"], "--chip-variant 'odd'")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # no training started


def test_eval_on_a_chip_prints_its_accuracy(tmp_path, capsys):
    run = tmp_path / "r"
    assert main([*BASE, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--chip", "opzo"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["chip"]["acc"] == same["acc"] and same["chip"]["loss"] == same["loss"]
    assert main(["eval", str(run), "--weight-bits", "2", "--state-bits", "3",
                 "--hw-threshold-noise", "0.5"]) == 0
    low = json.loads(capsys.readouterr().out)
    assert low["chip"]["weight_bits"] == 2 and 0 <= low["chip"]["acc"] <= 100
    assert low["acc"] == same["acc"]  # the run's own weights are put back
    assert low["chip"]["firing_rate"] != same["chip"]["firing_rate"]
    _one_line_error(capsys, ["eval", str(run), "--weight-bits", "20"], "2 to 16 bits")


def test_nir_chip_trains_as_the_reference(tmp_path, capsys):
    """Through the interface a foreign simulator running the graph of opzo's network (variant
    same) trains to the reference chip's numbers: the learner reads only u, s and o, and
    building the simulator's chip leaves the run's random stream (the rule's feedback)
    alone."""
    pytest.importorskip("snntorch", reason="the NIR chip's simulator snntorch is not installed")
    pytest.importorskip("nir", reason="the nir package is not installed")
    base = [*BASE[:-2], "--method", "dfa", "--reset", "zero", "--hidden", "24"]
    assert main([*base, "--out", str(tmp_path / "pre")]) == 0
    assert main(["export", str(tmp_path / "pre"), "--out", str(tmp_path / "g.nir")]) == 0
    runs = {}
    for name, chip in (("ref", ["--chip", "opzo"]),
                       ("nir", ["--chip", f"nir:{tmp_path / 'g.nir'}", "--chip-sim", "snntorch"])):
        assert main([*base, "--init-from", str(tmp_path / "pre"), "--epochs", "2", *chip,
                     "--out", str(tmp_path / name)]) == 0
        runs[name] = [json.loads(r) for r in
                      (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    capsys.readouterr()
    for a, b in zip(runs["ref"], runs["nir"]):
        for key in ("train_loss", "test_loss", "test_acc", "firing_rate"):
            assert np.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), (key, a[key], b[key])


def test_grad_from_model_learns_on_the_nominal_model():
    """chip_grad_from model: the gradient comes from the host's float, mismatch-free neuron
    (the weights the chip's), so training equals a chip with the same weights and no neuron
    properties; from the chip's own forward it differs."""
    props = dict(weight_bits=4, update_rounding="stochastic", seed=1)
    mismatched = dict(props, state_bits=5, threshold_noise=0.3, leak_noise=0.3)
    nominal, nominal_loss, _, _ = _train("dfa", ChipConfig(**props))
    model, model_loss, _, setup = _train("dfa", ChipConfig(**mismatched, grad_from="model"))
    assert isinstance(setup.backend, OpzoChip) and setup.learner_chip is None
    assert model_loss == nominal_loss
    assert all(torch.equal(a, b) for a, b in zip(nominal, model))
    chip, chip_loss, _, _ = _train("dfa", ChipConfig(**mismatched))
    assert chip_loss != nominal_loss


def test_eval_on_the_chip_keeps_the_runs_readout_and_takes_dropout_runs(tmp_path, capsys):
    """``opzo eval --chip opzo`` of a max-over-time run scores as the host does (the reference
    chip's forward is the host's), and a run trained with dropout can be put on a chip."""
    small = ["--dataset", "embedded-mnist", "--hidden", "16", "--T", "3", "--epochs", "1",
             "--limit-train", "256", "--limit-test", "128", "--quiet"]
    runs = {"max": [*small, "--method", "bptt", "--readout", "max", "--dropout", "0"],
            "dropout": [*small, "--method", "bp", "--dropout", "0.2"]}
    for name, argv in runs.items():
        assert main(["train", *argv, "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "max"), "--chip", "opzo"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chip"]["acc"] == report["acc"]
    assert math.isclose(report["chip"]["loss"], report["loss"], rel_tol=1e-6)
    assert main(["eval", str(tmp_path / "dropout"), "--weight-bits", "16"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert abs(report["chip"]["acc"] - report["acc"]) <= 1.0
