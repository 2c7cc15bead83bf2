"""PZO without temporal truncation and DFA through time (opzo.pzo; OPZO paper E.2, Table 13).

* With the exact per-sample Jacobians J[t_i, t_j] = ∂o[t_i]/∂x_l[t_j] (autograd through the
  unrolled network with surrogate derivatives, written here) in place of the M_k, the
  learner's gradient equals BPTT's (autograd) to float64 precision: subtractive and
  zero reset, per-step and static input, dropout masks. This checks the layer-local BPTT
  recursion and the readout gradient; J is causal (zero for t_j > t_i).
* The lagged feedback g[t] = Σ_k F_k e[t + k] against a double loop.
* M_k converges to the expected Jacobian at lag k: in closed form on one hidden layer
  (M_0 → W_Nᵀ, M_k → 0 for k ≥ 1), and for the first of two hidden layers, whose lags are
  non-trivial, against a Monte Carlo estimate of E[z[t − k] õ[t]ᵀ]/α written here.
* Device-clean, and the options the method refuses.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from opzo import InstantLoss, NoiseSampler, SpikingMLP
from opzo.bptt import BPTTLearner
from opzo.neuron import LIFParams
from opzo.pzo import (
    DFAThroughTime,
    LaggedFeedback,
    PZOFeedback,
    TemporalFeedback,
    UnrolledBatch,
    UntruncatedLearner,
)
from opzo.surrogate import spike_with_surrogate

LOSS = InstantLoss("mix", 0.3)


def _net(sizes: list[int], reset: str = "subtract", dtype=torch.float64, scale: float = 3.0,
         dropout: float = 0.0) -> SpikingMLP:
    torch.manual_seed(1)
    net = SpikingMLP(sizes, lif=LIFParams(lam=0.6, reset=reset), dropout=dropout).to(dtype)
    with torch.no_grad():
        for layer in net.hidden:
            layer.weight.mul_(scale)
    return net


def _forward(net: SpikingMLP, x: Tensor, T: int, masks: list[Tensor] | None,
             z: Tensor | None = None, alpha: float = 0.0, keep: list | None = None) -> Tensor:
    """An independent forward pass in torch primitives (differentiable with surrogate ψ):
    õ (T, B, m); with ``keep`` the features x_l[t] are appended as keep[l][t]."""
    lif = net.neuron
    static = x.dim() == 2
    B = x.shape[0] if static else x.shape[1]
    sizes = net.hidden_sizes
    u = [x.new_zeros(B, n) for n in sizes]
    s = [x.new_zeros(B, n) for n in sizes]
    outs = []
    for t in range(T):
        inp = x if static else x[t]
        zt = None if z is None else z[t].split(sizes, dim=1)
        for l, layer in enumerate(net.hidden):
            cur = inp @ layer.weight.t() + layer.bias
            if lif.reset == "subtract":
                u[l] = lif.lam * (u[l] - lif.v_th * s[l]) + cur
            else:
                u[l] = lif.lam * u[l] * (1 - s[l]) + cur
            s[l] = spike_with_surrogate(u[l], lif.v_th, net.surrogate)
            # a node of its own: s_l[t] also feeds layer l's reset, the features do not
            feat = s[l].clone() if zt is None else s[l] + alpha * zt[l]
            if masks is not None:
                feat = feat * masks[l]
            if keep is not None:
                keep[l].append(feat)
            inp = feat
        outs.append(inp @ net.readout.weight.t() + net.readout.bias)
    return torch.stack(outs)


class ExactJacobians(TemporalFeedback):
    """g_l[t_j] = Σ_{t_i} J_l[b, t_i, t_j]ᵀ e[t_i] with the exact per-sample Jacobians, built
    one output unit and step at a time by autograd (test reference only)."""

    name = "exact"

    def __init__(self, net: SpikingMLP) -> None:
        self.net = net

    def errors(self, e: Tensor, batch: UnrolledBatch) -> Tensor:
        T, B, m = e.shape
        with torch.enable_grad():
            keep: list[list[Tensor]] = [[] for _ in self.net.hidden]
            o = _forward(self.net, batch.x, T, batch.masks, keep=keep)
            feats = [f for per_layer in keep for f in per_layer]  # l-major, then t
            # J[l][t_i][t_j]: (B, m, n_l)
            J = [[[torch.zeros(B, m, n, dtype=e.dtype) for _ in range(T)] for _ in range(T)]
                 for n in self.sizes]
            for ti in range(T):
                for c in range(m):
                    grads = torch.autograd.grad(o[ti, :, c].sum(), feats, retain_graph=True,
                                                allow_unused=True)
                    for idx, gr in enumerate(grads):
                        l, tj = divmod(idx, T)
                        if gr is not None:
                            J[l][ti][tj][:, c] = gr
        g = []
        for l in range(len(self.sizes)):
            per_t = []
            for tj in range(T):
                for ti in range(tj):  # causality: the output never depends on later features
                    assert float(J[l][ti][tj].abs().max()) == 0.0
                per_t.append(sum(torch.einsum("bmn,bm->bn", J[l][ti][tj], e[ti])
                                 for ti in range(tj, T)))
            g.append(torch.stack(per_t))
        return torch.cat(g, dim=2)


def _grads(net: SpikingMLP) -> list[Tensor]:
    return [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("reset,static,dropout", [
    ("subtract", False, 0.0), ("zero", False, 0.0), ("subtract", True, 0.0),
    ("subtract", False, 0.3)])
def test_exact_jacobians_in_place_of_m_give_bptt_gradient(reset, static, dropout):
    net = _net([4, 5, 6, 3], reset=reset, dropout=dropout)
    T, B = 5, 3
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(B, 4, generator=g, dtype=torch.float64) if static
         else torch.rand(T, B, 4, generator=g, dtype=torch.float64))
    y = torch.tensor([0, 2, 1])
    net.train()
    masks = net.dropout_masks(B, x)
    learner = UntruncatedLearner(net, ExactJacobians(net), steps=T, loss=LOSS)
    net.zero_grad(set_to_none=False)
    learner.accumulate(x, y, T, masks=masks)
    ours = _grads(net)
    net.zero_grad(set_to_none=False)
    BPTTLearner(net, LOSS).accumulate(x, y, T, masks=masks)
    ref = _grads(net)
    spikes = _forward(net, x, T, masks).shape  # the net must do something: check spiking
    assert spikes == (T, B, 3)
    for (name, _), a, b in zip(net.named_parameters(), ours, ref):
        assert float(b.abs().max()) > 1e-6, name  # every layer gets a gradient
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_network_fires_in_the_exactness_test():
    """The exactness test is only meaningful if the hidden layers spike and the reset acts."""
    net = _net([4, 5, 6, 3])
    x = torch.rand(5, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    batch = UntruncatedLearner(net, DFAThroughTime(), steps=5).forward(x)
    for s in batch.s:
        assert 0.1 < float(s.mean()) < 0.9


def test_lagged_feedback_equals_a_double_loop():
    net = _net([4, 5, 6, 3])
    fb = DFAThroughTime(lags=3)
    fb.bind(net, steps=5)
    e = torch.randn(5, 2, 3, dtype=torch.float64)
    g = fb.errors(e, None)  # type: ignore[arg-type]
    ref = torch.zeros_like(g)
    for t in range(5):
        for k in range(3):
            if t + k < 5:
                ref[t] += e[t + k] @ fb.feedback(k).t()
    torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-12)
    # independent random matrices per lag
    assert float((fb.feedback(0) - fb.feedback(1)).abs().max()) > 0.1


def _pzo_momentum(net: SpikingMLP, x: Tensor, T: int, steps: int, lam: float, alpha: float
                  ) -> Tensor:
    fb = PZOFeedback(NoiseSampler(alpha=alpha, rng="torch"), lambda_m=lam, alpha_factor=True)
    learner = UntruncatedLearner(net, fb, steps=T)
    for _ in range(steps):
        fb.update(learner.forward(x, T))
    # bias correction of a momentum started at zero: lag k had steps·(T − k) updates
    corr = torch.tensor([1 - lam ** (steps * (T - k)) for k in range(T)], dtype=x.dtype)
    return fb.M / corr[:, None, None]


def test_momentum_converges_to_the_readout_on_one_hidden_layer():
    """õ[t] = W_N (s[t] + α z[t]) + b and s does not depend on z (noise after the neuron):
    E[z[t − k] õ[t]ᵀ]/α = W_Nᵀ for k = 0 and 0 for k ≥ 1."""
    net = _net([4, 6, 3])
    T = 3
    x = torch.rand(T, 256, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    M = _pzo_momentum(net, x, T, steps=400, lam=0.99, alpha=0.5)
    w = net.readout.weight.detach().t()
    assert float((M[0] - w).norm() / w.norm()) < 0.08
    for k in range(1, T):
        assert float(M[k].norm() / w.norm()) < 0.08


def test_momentum_converges_to_the_lagged_expected_jacobian():
    """Two hidden layers: the first layer's features reach the output through the second
    layer's membrane, so its M_k is non-zero at lags k ≥ 1. Reference: a Monte Carlo
    estimate of E[z_1[t − k] õ[t]ᵀ]/α averaged over t ≥ k and the batch, from antithetic
    pairs (õ(z) − õ(−z))/2, which has the same expectation and a far smaller variance."""
    net = _net([4, 6, 5, 3], scale=2.0)
    T, B, alpha = 4, 256, 0.5
    x = torch.rand(T, B, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    M = _pzo_momentum(net, x, T, steps=600, lam=0.995, alpha=alpha)
    n1 = net.hidden_sizes[0]
    ref = torch.zeros(T, n1, 3, dtype=torch.float64)
    draws = 300
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _ in range(draws):
            z = torch.randn(T, B, sum(net.hidden_sizes), generator=g, dtype=torch.float64)
            diff = (_forward(net, x, T, None, z, alpha) - _forward(net, x, T, None, -z, alpha)) / 2
            z1 = z[:, :, :n1]
            for k in range(T):
                ref[k] += torch.einsum("tbn,tbm->nm", z1[: T - k], diff[k:]) / (B * (T - k))
    ref /= draws * alpha
    scale = float(ref.norm())
    for k in range(T):
        err = float((M[k, :n1] - ref[k]).norm()) / scale
        assert err < 0.06, (k, err)
    assert float(ref[1].norm()) > 0.15 * float(ref[0].norm())  # the lag is not negligible
    assert float((ref[1] - ref[0]).norm()) > 0.3 * float(ref[0].norm())


def test_pzo_trains_and_refuses_what_it_cannot_estimate():
    with pytest.raises(ValueError, match="after the neuron"):
        PZOFeedback(NoiseSampler(position="before"))
    with pytest.raises(ValueError, match="antithetic"):
        PZOFeedback(NoiseSampler(antithetic=True))
    net = _net([4, 6, 3], dtype=torch.float32)
    learner = UntruncatedLearner(net, PZOFeedback(), steps=4)
    with pytest.raises(ValueError, match="T <= 4"):
        learner.forward(torch.rand(5, 2, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    learner.train_batch(torch.rand(4, 2, 4), torch.tensor([0, 1]), opt)
    assert all(not torch.equal(a, p) for a, p in zip(before, net.parameters()))


@pytest.mark.parametrize("make", [PZOFeedback, DFAThroughTime])
def test_device_clean(make):
    """Every tensor is made on the device of what the learner is given: with ``meta`` as
    torch's default device a CPU batch still trains."""
    net = _net([4, 6, 5, 3], dtype=torch.float32)
    learner = UntruncatedLearner(net, make(), steps=3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.rand(3, 2, 4), torch.tensor([0, 1])
    torch.set_default_device("meta")
    try:
        stats = learner.train_batch(x, y, opt)
    finally:
        torch.set_default_device(None)
    assert stats.count == 2
    assert all(p.device.type == "cpu" for p in net.parameters())
    assert isinstance(learner.feedback, LaggedFeedback)
