import pytest
import torch

from opzo.neuron import LIFParams, lif_step
from opzo.surrogate import FastSigmoidSurrogate, SigmoidSurrogate, spike_with_surrogate


def test_lif_subtractive_reset_known_trace():
    p = LIFParams(lam=0.5, v_th=1.0)
    u = torch.zeros(1)
    s = torch.zeros(1)
    seen = []
    for current in [0.8, 0.8, 0.8, 0.0]:
        u, s = lif_step(u, s, torch.tensor([current]), p)
        seen.append((round(float(u), 6), float(s)))
    # u1 = .8; u2 = .4 + .8 = 1.2 -> spike; u3 = .5 (1.2 - 1) + .8 = .9; u4 = .45
    assert seen == [(0.8, 0.0), (1.2, 1.0), (0.9, 0.0), (0.45, 0.0)]


def test_lif_reset_to_zero_and_strict_threshold():
    p = LIFParams(lam=0.5, v_th=1.0, reset="zero")
    u, s = lif_step(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, 1.5]), p)
    assert s.tolist() == [0.0, 1.0]  # u == V_th does not spike
    u, s = lif_step(u, s, torch.tensor([0.0, 0.0]), p)
    assert u.tolist() == [0.5, 0.0]


def test_bad_lif_params():
    with pytest.raises(ValueError, match="reset"):
        LIFParams(reset="soft")
    with pytest.raises(ValueError, match="lam"):
        LIFParams(lam=1.5)


def test_sigmoid_surrogate_formula_and_integral():
    a = 0.25
    u = torch.linspace(-4, 6, 200001, dtype=torch.float64)
    psi = SigmoidSurrogate(a)(u, 1.0)
    e = torch.exp((1.0 - u) / a)
    assert torch.allclose(psi, e / (1 + e) ** 2 / a)
    assert abs(float(torch.trapezoid(psi, u)) - 1.0) < 1e-6
    assert abs(float(SigmoidSurrogate(a)(torch.tensor(1.0), 1.0)) - 1 / (4 * a)) < 1e-7


def test_fast_sigmoid_surrogate():
    u = torch.tensor([1.0, 1.1, 0.9])
    expected = torch.tensor([1.0, 1 / 12.25, 1 / 12.25])
    assert torch.allclose(FastSigmoidSurrogate(25)(u, 1.0), expected)


def test_spike_function_backward_is_surrogate():
    u = torch.randn(50, dtype=torch.float64, requires_grad=True)
    sur = SigmoidSurrogate()
    s = spike_with_surrogate(u, 1.0, sur)
    assert torch.equal(s, (u > 1.0).double())
    s.sum().backward()
    assert torch.allclose(u.grad, sur(u.detach(), 1.0))
