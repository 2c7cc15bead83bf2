"""The sparse backward of LocalZO / SparseGrad (opzo.sparse) against the dense computation.

BPTT over the active neurons must give autograd's gradient (the dense BPTT of the same
network and ψ) to float rounding, at every sparsity from no active neuron to all of them,
with and without the reset in the gradient, both readouts, dropout and a static input; the
OTTT trace's product over δ's non-zeros must give the dense product's gradient.
"""

from __future__ import annotations

import math

import pytest
import torch

from opzo import InstantLoss, OnlineLearner, SpatialBP, SpikingNet
from opzo.bptt import BPTTLearner
from opzo.build import build_surrogate
from opzo.config import TrainConfig
from opzo.layers import DenseLayer
from opzo.losses import MaxOverTime
from opzo.neurons import LIF
from opzo.sparse import accumulate_sparse, bptt_sparse, sparse_enabled
from opzo.surrogate import SigmoidSurrogate, Surrogate
from opzo.surrogate.localzo import LocalZOSurrogate, SparseGradSurrogate

T, B, F_IN = 7, 9, 12


class HashedLocalZO(Surrogate):
    """LocalZO's ψ = |z| 1{|u − V_th| < δ|z|} / (2δ) with |z| a fixed pseudo-random function
    of u (so autograd's backward, which asks ψ again, sees the same draws)."""

    name = "hashed-localzo"
    sparse_psi = True

    def __init__(self, delta: float, mode: str) -> None:
        self.delta, self.sparse_backward = delta, mode

    def __call__(self, u, v_th):
        z = (torch.sin(u.detach() * 12345.678) * 43758.5453).frac().abs() * 3.0
        return torch.where((u.detach() - v_th).abs() < self.delta * z, z, 0.0) / (2 * self.delta)


def _data(static: bool, density: float = 0.3):
    """Inputs: static (B, F) or spikes (T, B, F); below 5% density the first layer's input
    goes through a sparse product (a latency code's case)."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(B, F_IN, generator=g) if static else (
        torch.rand(T, B, F_IN, generator=g) < density).float()
    return x, torch.randint(0, 5, (B,), generator=g)


def _grads(surrogate, detach, readout, static=False, dropout=0.0, leak=0.0, density=0.3):
    torch.manual_seed(1)
    net = SpikingNet("30-20-FC", F_IN, 5, neuron=LIF(lam=0.8), surrogate=surrogate,
                     dropout=dropout)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    x, y = _data(static, density)
    learner = BPTTLearner(net, InstantLoss(), readout=readout, detach_reset=detach,
                          output_leak=leak)
    torch.manual_seed(5)  # the dropout masks
    stats = learner.accumulate(x, y, T=T)
    return [p.grad.clone() for p in net.parameters()], stats, learner.uses_sparse_backward()


def _close(a, b):
    for p, q in zip(a, b, strict=True):
        scale = float(q.abs().max()) or 1.0
        assert float((p - q).abs().max()) <= 1e-5 * scale, (p - q).abs().max()


@pytest.mark.parametrize("threshold,delta,fraction", [
    (1e-9, 0.5, (0.0, 0.0)),      # no neuron active: only the readout learns
    (0.1, 0.5, (0.02, 0.15)),
    (0.4, 0.5, (0.1, 0.4)),
    (1e9, 20.0, (1.0, 1.0)),      # every neuron active
])
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("readout", [None, MaxOverTime(0.9)])
def test_sparse_bptt_equals_autograd_at_every_sparsity(threshold, delta, fraction, detach,
                                                       readout):
    for static, dropout, density in [(False, 0.0, 0.3), (False, 0.3, 0.3), (True, 0.0, 1.0),
                                     (False, 0.0, 0.03)]:
        sparse = SparseGradSurrogate(delta=delta, threshold=threshold, sparse_backward="auto")
        got, s1, used = _grads(sparse, detach, readout, static, dropout, density=density)
        assert used
        lo, hi = fraction
        if density > 0.1:
            assert lo <= sparse.nonzero_fraction <= hi
        reference = SparseGradSurrogate(delta=delta, threshold=threshold, sparse_backward="off")
        want, s2, used = _grads(reference, detach, readout, static, dropout, density=density)
        assert not used
        # ψ counted once per neuron and step either way (the sparse path counts in its
        # backward's index pass)
        assert sparse.stats_state() == reference.stats_state()
        _close(got, want)
        assert math.isclose(s1.loss_sum, s2.loss_sum, rel_tol=1e-6) and s1.correct == s2.correct
        if threshold > 1:  # all active: the hidden layers learn
            assert all(float(g.abs().max()) > 0 for g in got)
        if threshold < 1e-6:
            assert all(float(g.abs().max()) == 0 for g in got[:4])  # hidden W, b


@pytest.mark.parametrize("detach", [True, False])
def test_sparse_bptt_with_localzo_draws_equals_autograd(detach):
    for leak in (0.0, 0.7):
        got, _, used = _grads(HashedLocalZO(0.3, "auto"), detach, None, leak=leak)
        assert used
        want, _, used = _grads(HashedLocalZO(0.3, "off"), detach, None, leak=leak)
        assert not used
        _close(got, want)


def test_sparse_bptt_equals_its_dense_recursion_with_localzo():
    """LocalZO itself (ψ drawn once per step in the forward pass): the sparse products and
    the dense products of the same recursion give the same gradient."""
    sur = LocalZOSurrogate(delta=0.3, m=2)
    torch.manual_seed(1)
    net = SpikingNet("30-20-FC", F_IN, 5, neuron=LIF(lam=0.8), surrogate=sur)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    x, y = _data(False)
    learner = BPTTLearner(net, InstantLoss())
    grads = []
    for dense in (False, True):
        net.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        bptt_sparse(net, x, y, T, None, B, InstantLoss(),
                    lambda: learner._first_currents(x, T, B), dense=dense)
        grads.append([p.grad.clone() for p in net.parameters()])
    assert 0.0 < sur.nonzero_fraction < 0.5
    _close(*grads)


def test_auto_picks_the_sparse_surrogates_and_falls_back_where_unsupported():
    assert sparse_enabled(LocalZOSurrogate()) and sparse_enabled(SparseGradSurrogate())
    assert not sparse_enabled(LocalZOSurrogate(sparse_backward="off"))
    assert not sparse_enabled(SigmoidSurrogate())
    sig = SigmoidSurrogate()
    sig.sparse_backward = "on"
    assert sparse_enabled(sig)
    with pytest.raises(ValueError, match="sparse_backward"):
        LocalZOSurrogate(sparse_backward="yes")
    net = SpikingNet("8-FC", 4, 3, neuron=LIF(reset="zero"), surrogate=LocalZOSurrogate())
    assert not BPTTLearner(net).uses_sparse_backward()  # reset to zero: autograd
    cfg = TrainConfig.from_dict({"surrogate": "sparsegrad", "sparse_backward": "off"})
    assert build_surrogate(cfg).sparse_backward == "off"
    assert build_surrogate(TrainConfig.from_dict({"surrogate": "localzo"})).sparse_backward \
        == "auto"


@pytest.mark.parametrize("density", [0.0, 0.01, 0.015])
def test_sparse_trace_product_equals_the_dense_one(density):
    g = torch.Generator().manual_seed(3)
    delta = torch.randn(64, 40, generator=g) * (torch.rand(64, 40, generator=g) < density)
    trace = torch.rand(64, 30, generator=g)
    layers = [DenseLayer(30, 40) for _ in range(2)]
    for lay in layers:
        lay.weight.grad = torch.ones_like(lay.weight)
        lay.bias.grad = torch.ones_like(lay.bias)
    assert accumulate_sparse(layers[0], delta, trace, 1.7)
    layers[1].accumulate_grad(delta, trace, 1.7)
    _close([layers[0].weight.grad, layers[0].bias.grad],
           [layers[1].weight.grad, layers[1].bias.grad])
    dense = torch.randn(64, 40, generator=g)
    assert not accumulate_sparse(layers[0], dense, trace, 1.0)  # not sparse: left to addmm


def test_online_rule_with_sparse_trace_products_equals_dense(monkeypatch):
    import opzo.traces

    taken = []

    def spy(*args):
        taken.append(accumulate_sparse(*args))
        return taken[-1]

    monkeypatch.setattr(opzo.traces, "accumulate_sparse", spy)
    grads = []
    for mode in ("on", "off"):
        sur = LocalZOSurrogate(delta=0.03, sparse_backward=mode)
        torch.manual_seed(1)
        net = SpikingNet("40-30-FC", F_IN, 5, neuron=LIF(lam=0.8), surrogate=sur,
                         kernels="torch")
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(3.0)
        x, y = _data(False)
        torch.manual_seed(9)
        OnlineLearner(net, SpatialBP(), InstantLoss()).accumulate(x, y, T=T)
        grads.append([p.grad.clone() for p in net.parameters()])
        assert 0.0 < sur.nonzero_fraction < 0.02
        if mode == "on":
            assert len(taken) == 2 * T and sum(taken) >= T  # most steps went sparse
            taken.clear()
    assert not taken  # "off": never asked
    _close(*grads)
    assert any(float(g.abs().max()) > 0 for g in grads[0][:4])


def test_bench_sparse_runs_at_tiny_size(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from .conftest import SHARED_DATA

    root = Path(__file__).resolve().parents[1]
    rows = ["nmnist", "shd"] + (["fashion"] if (SHARED_DATA / "fashion-mnist").exists() else [])
    out = tmp_path / "sb"
    cmd = [sys.executable, str(root / "benchmarks" / "bench_sparse.py"), "--rows", *rows,
           "--updates", "2", "2", "2", "--batch", "4", "--t-scale", "0.02", "--sweep", "1", "3",
           "--sweep-updates", "2", "--out", str(out),
           "--data-root", str(SHARED_DATA / "fashion-mnist")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.with_suffix(".json").read_text())
    for name in rows:
        res = summary["rows"][name]
        assert res["localzo"]["updates"] == 1 and 0.0 <= res["localzo"]["active_fraction_mean"] <= 1
    assert "| localzo |" in proc.stdout


@pytest.mark.parametrize("sur", [SparseGradSurrogate(delta=0.05),
                                 SparseGradSurrogate(delta=0.05, threshold=1e9),
                                 SparseGradSurrogate(delta=0.3, distribution="laplace"),
                                 LocalZOSurrogate(delta=0.1),
                                 LocalZOSurrogate(delta=0.1, distribution="sigmoid"),
                                 LocalZOSurrogate(delta=0.1, m=3)])
def test_nonzeros_are_psi_s_nonzero_entries(sur):
    u = torch.randn(64, 50, generator=torch.Generator().manual_seed(4)) * 0.2 + 1.0
    torch.manual_seed(0)
    index, values = sur.nonzeros(u, 1.0)
    counted = sur.stats_state()
    sur.reset_stats()
    torch.manual_seed(0)
    psi = sur(u, 1.0).reshape(-1)
    assert torch.equal(index, psi.nonzero().squeeze(1)) and index.numel() > 0
    if isinstance(sur, LocalZOSurrogate):  # the same draws, the same products
        assert torch.equal(values, psi[index])
    torch.testing.assert_close(values, psi[index], rtol=1e-6, atol=0.0)
    assert counted == sur.stats_state()  # one call, the same non-zeros


def test_sparse_backward_on_needs_a_sparse_surrogate():
    from opzo.config import ConfigError, TrainConfig

    TrainConfig(method="bptt", surrogate="localzo", sparse_backward="on").validate()
    with pytest.raises(ConfigError, match="surrogate 'sigmoid' gives a non-zero"):
        TrainConfig(method="bptt", surrogate="sigmoid", sparse_backward="on").validate()
