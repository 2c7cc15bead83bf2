import math

import pytest
import torch

from opzo import OnlineLearner, SpatialBP, SpikingMLP
from opzo.losses import InstantLoss

from .reference import ottt_autograd_grads


@pytest.mark.parametrize("kind,gamma", [("ce", 0.0), ("mse", 1.0), ("mix", 0.05), ("mix", 0.5)])
def test_closed_form_error_equals_autograd(kind, gamma):
    o = torch.randn(7, 10, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (7,))
    loss = InstantLoss(kind, gamma)
    loss.per_sample(o, y).sum().backward()
    assert torch.allclose(loss.error(o.detach(), y), o.grad, atol=1e-12, rtol=0)


def test_loss_values_match_torch_definitions():
    o = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 2, 2])
    target = torch.nn.functional.one_hot(y, 4).double()
    ce = torch.nn.functional.cross_entropy(o, y, reduction="none")
    mse = ((o - target) ** 2).mean(1)
    got = InstantLoss("mix", 0.3).per_sample(o, y)
    assert torch.allclose(got, 0.7 * ce + 0.3 * mse)


def test_bad_loss_options_are_rejected():
    with pytest.raises(ValueError, match="choose one of"):
        InstantLoss("hinge")
    with pytest.raises(ValueError, match="gamma"):
        InstantLoss("mix", 1.5)


# --- TET (Deng et al. 2022; the LocalZO paper's "LocalZO + TET") -------------------------

class _TETReference:
    """TET written from its paper, independently of InstantLoss: per sample and step,
    (1 − λ) CE(o, y) + λ · mean_c (o_c − φ)² (torch's own cross_entropy and mse_loss)."""

    def __init__(self, lam: float, phi: float) -> None:
        self.lam, self.phi = lam, phi

    def per_sample(self, o, y):
        ce = torch.nn.functional.cross_entropy(o, y, reduction="none")
        mse = torch.nn.functional.mse_loss(o, torch.full_like(o, self.phi), reduction="none")
        return (1 - self.lam) * ce + self.lam * mse.mean(1)


def test_tet_known_value():
    """o = 0 everywhere: CE = ln m, MSE = φ², so L = (1 − λ) ln m + λ φ² at every step."""
    loss = InstantLoss("tet", tet_lambda=0.25, tet_phi=2.0)
    o = torch.zeros(3, 8, dtype=torch.float64)
    y = torch.tensor([0, 5, 7])
    expected = 0.75 * math.log(8) + 0.25 * 4.0
    assert torch.allclose(loss.per_sample(o, y), torch.full((3,), expected, dtype=torch.float64))
    # and its error: (1 − λ)(1/m − onehot) + 2λ(0 − φ)/m
    e = loss.error(o, y)
    assert torch.allclose(e[0, 1], torch.tensor(0.75 / 8 - 2 * 0.25 * 2.0 / 8, dtype=e.dtype))
    assert torch.allclose(e[0, 0], torch.tensor(0.75 * (1 / 8 - 1) - 1.0 / 8, dtype=e.dtype))


@pytest.mark.parametrize("lam,phi", [(0.05, 1.0), (0.001, 1.0), (0.3, -0.5)])
def test_tet_per_step_error_and_sequence_gradient_equal_autograd(lam, phi):
    """The per-step closed-form errors, summed over t and scaled by 1/(B·T) as the learners
    do, are the gradient of TET's sequence loss as its authors write it: (1 − λ) times the
    time-mean of the batch-mean CE plus λ times the MSE over all of (T, B, m)."""
    T, B, m = 5, 4, 10
    out = torch.randn(T, B, m, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, m, (B,))
    ce = sum(torch.nn.functional.cross_entropy(out[t], y) for t in range(T)) / T
    reg = torch.nn.functional.mse_loss(out, torch.full_like(out, phi))
    ((1 - lam) * ce + lam * reg).backward()
    loss = InstantLoss("tet", tet_lambda=lam, tet_phi=phi)
    onehot = torch.nn.functional.one_hot(y, m).double()
    total = 0.0
    for t in range(T):
        value, e = loss.value_and_error(out[t].detach(), onehot, y)
        # value_and_error and error agree, and the error is the autograd of the step's loss
        assert torch.allclose(e, loss.error(out[t].detach(), y), atol=1e-14)
        o_t = out[t].detach().clone().requires_grad_(True)
        loss.per_sample(o_t, y).sum().backward()
        assert torch.allclose(e, o_t.grad, atol=1e-13)
        assert torch.allclose(out.grad[t], e / (B * T), atol=1e-13)
        total += float(value.sum())
    want = float(((1 - lam) * ce + lam * reg).detach())
    assert math.isclose(total / (B * T), want, rel_tol=1e-12)


def test_tet_online_bp_and_bptt_equal_autograd_of_independent_tet():
    """The online BP learner (OTTT's instantaneous gradient) and BPTT trained with loss tet
    give the autograd gradients of the independent TET reference."""
    from opzo.bptt import BPTTLearner

    from .reference import bptt_autograd_grads

    torch.manual_seed(0)
    net = SpikingMLP([12, 20, 16, 5]).double()
    with torch.no_grad():
        for lin in net.hidden:
            lin.weight.mul_(4.0)
    T = 4
    x = torch.rand(T, 6, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    loss = InstantLoss("tet", tet_lambda=0.2, tet_phi=1.0)
    ref_loss = _TETReference(0.2, 1.0)
    OnlineLearner(net, SpatialBP(), loss).accumulate(x, y, T=T)
    ours = {k: p.grad.clone() for k, p in net.named_parameters()}
    ref = ottt_autograd_grads(net, x, y, T, ref_loss)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=1e-10, rtol=1e-7), k
    for p in net.parameters():
        p.grad = None
    BPTTLearner(net, loss).accumulate(x, y, T=T)
    ours = {k: p.grad.clone() for k, p in net.named_parameters()}
    ref = bptt_autograd_grads(net, x, y, T, ref_loss)
    for k in ref:
        assert torch.allclose(ours[k], ref[k], atol=1e-10, rtol=1e-7), k
    # the regulariser matters: plain CE would give other gradients
    plain = bptt_autograd_grads(net, x, y, T, InstantLoss("ce"))
    assert not torch.allclose(plain["readout.weight"], ref["readout.weight"], atol=1e-6)


def test_tet_options_from_config_and_refusals():
    from opzo.config import ConfigError, TrainConfig

    cfg = TrainConfig.from_dict({"loss": "tet", "tet_lambda": 0.001, "tet_phi": 0.5})
    loss = InstantLoss.from_config(cfg)
    assert (loss.kind, loss.gamma, loss.phi) == ("tet", 0.001, 0.5)
    with pytest.raises(ValueError, match="TET's lambda"):
        InstantLoss("tet", tet_lambda=1.5)
    with pytest.raises(ConfigError, match="readout 'sum'"):
        TrainConfig.from_dict({"loss": "tet", "method": "bptt", "readout": "max"})
