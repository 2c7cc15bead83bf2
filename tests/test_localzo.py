"""LocalZO local derivative (LocalZO paper, sections 3-4, appendix A): ψ, E[ψ], thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from opzo.surrogate import FastSigmoidSurrogate, SigmoidSurrogate, spike_with_surrogate
from opzo.surrogate.localzo import (
    DISTRIBUTIONS,
    SIGMOID_KDELTA,
    SIGMOID_TWO_J1,
    LocalZOSurrogate,
    make_localzo,
)

V_TH = 1.0
# potentials around the threshold: |u − V_th| from 0 to 4δ at δ = 0.05
U = V_TH + torch.tensor([-0.2, -0.12, -0.07, -0.03, -0.01, 0.0, 0.004, 0.02, 0.05, 0.09, 0.15])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mc_z_scores(sur: LocalZOSurrogate, draws: int = 150_000) -> tuple[torch.Tensor, torch.Tensor]:
    """(MC mean − E[ψ]) / standard error, per u; and E[ψ]."""
    u = U.expand(draws, -1).contiguous()
    psi = sur(u, V_TH).double()
    expected = sur.expected_surrogate(U.double(), V_TH)
    se = psi.std(0) / math.sqrt(draws)
    # where ψ is identically 0 (uniform beyond √3 δ) expect exactly 0
    z = torch.where(se > 0, (psi.mean(0) - expected) / se.clamp_min(1e-300), psi.mean(0))
    return z, expected


CASES = [
    ("normal", 1, 1),
    ("normal", 5, 1),
    ("normal", 1, 2),
    ("uniform", 1, 1),
    ("uniform", 3, 1),
    ("laplace", 1, 1),
    ("laplace", 2, 2),
    ("sigmoid", 1, 1),
    ("sigmoid", 3, 1),
    ("sigmoid", 1, -1),
    ("fast-sigmoid", 1, -1),
    ("fast-sigmoid", 5, -1),
]


@pytest.mark.parametrize(("dist", "m", "p"), CASES)
def test_monte_carlo_mean_matches_expected_surrogate(dist, m, p):
    sur = LocalZOSurrogate(delta=0.05, m=m, p=p, distribution=dist, generator=_gen(m + 7 * p))
    z, expected = _mc_z_scores(sur)
    assert torch.all(expected >= 0)
    assert z.abs().max() < 5.0, (dist, m, p, z)


def test_normal_expectation_is_eq_9():
    delta = 0.05
    sur = LocalZOSurrogate(delta=delta, distribution="normal")
    x = U.double() - V_TH
    eq9 = torch.exp(-(x**2) / (2 * delta**2)) / (delta * math.sqrt(2 * math.pi))
    torch.testing.assert_close(sur.expected_surrogate(U.double(), V_TH), eq9)
    # m does not change the expectation, only the variance
    sur5 = LocalZOSurrogate(delta=delta, m=5, distribution="normal")
    torch.testing.assert_close(sur5.expected_surrogate(U.double(), V_TH), eq9)


def test_uniform_and_laplace_expectations_are_eqs_12_13():
    delta = 0.5
    u = V_TH + torch.linspace(-1.2, 1.2, 49, dtype=torch.float64)
    w = (u - V_TH).abs() / delta
    uni = LocalZOSurrogate(delta=delta, distribution="uniform").expected_surrogate(u, V_TH)
    eq12 = torch.where(w < math.sqrt(3), (3 - w**2) / (4 * math.sqrt(3) * delta), 0.0)
    torch.testing.assert_close(uni, eq12)
    lap = LocalZOSurrogate(delta=delta, distribution="laplace").expected_surrogate(u, V_TH)
    eq13 = (w + 1 / math.sqrt(2)) * torch.exp(-math.sqrt(2) * w) / (2 * delta)
    torch.testing.assert_close(lap, eq13)


@pytest.mark.parametrize("dist", ["normal", "uniform", "laplace"])
def test_unit_variance_surrogates_integrate_to_one(dist):
    # Lemma 1: ∫ E[ψ] du = E[|z|^{α+1}] = E[z²] = 1 for the unit-variance λ and α_p = 1
    delta = 0.05
    sur = LocalZOSurrogate(delta=delta, distribution=dist)
    u = V_TH + torch.linspace(-15 * delta, 15 * delta, 200_001, dtype=torch.float64)
    assert torch.trapezoid(sur.expected_surrogate(u, V_TH), u).item() == pytest.approx(1, abs=1e-6)


def test_sigmoid_constant_and_paper_slope():
    # 2 J_1 = −2 ∫_0^∞ σ''(t)/t dt, integrated numerically here (paper: 0.4262)
    t = torch.linspace(1e-9, 60.0, 1_200_001, dtype=torch.float64)
    sig = torch.sigmoid(t)
    second = sig * (1 - sig) * (1 - 2 * sig)
    two_j1 = -2 * torch.trapezoid(second / t, t).item()
    assert two_j1 == pytest.approx(SIGMOID_TWO_J1, rel=1e-7)
    assert SIGMOID_TWO_J1 == pytest.approx(0.4262, abs=1e-4)
    # the paper's k = a/δ ≈ 30.63 at δ = 0.05 gives c = 1 (section 5.2)
    sur = LocalZOSurrogate(delta=0.05, distribution="sigmoid")
    assert 1.0 / sur.a == pytest.approx(30.63, abs=0.01)
    assert 1.0 / sur.a == pytest.approx(SIGMOID_KDELTA / 0.05)
    assert sur.scale == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize(("delta", "a"), [(0.05, None), (0.05, 0.25), (0.5, 0.25)])
def test_sigmoid_equivalent_reproduces_sigmoid_surrogate(delta, a):
    sur = LocalZOSurrogate(delta=delta, distribution="sigmoid", a=a, generator=_gen(3))
    width = delta / SIGMOID_KDELTA if a is None else a
    target = SigmoidSurrogate(a=width)
    u = V_TH + torch.linspace(-4 * width, 4 * width, 17, dtype=torch.float64)
    torch.testing.assert_close(sur.expected_surrogate(u, V_TH), target(u, V_TH))
    # c = (kδ)² · 2J_1 (Theorem 3 with g = k σ'(kx)), 1 for the paper's k = a/δ
    assert sur.scale == pytest.approx((delta / width) ** 2 * SIGMOID_TWO_J1)
    draws = 200_000
    psi = sur(u.float().expand(draws, -1).contiguous(), V_TH).double()
    se = psi.std(0) / math.sqrt(draws)
    assert ((psi.mean(0) - target(u, V_TH)) / se).abs().max() < 5.0
    # slope given as k = 1/a: same surrogate
    by_k = LocalZOSurrogate(delta=delta, distribution="sigmoid", k=1.0 / width)
    assert by_k.a == pytest.approx(width)


@pytest.mark.parametrize("k", [25.0, 100.0])
def test_fast_sigmoid_equivalent_reproduces_fast_sigmoid(k):
    sur = LocalZOSurrogate(delta=0.05, distribution="fast-sigmoid", k=k, generator=_gen(5))
    assert sur.p == -1
    assert sur.scale == pytest.approx(2.0 / k)  # c = 2/k (appendix A.2.2)
    target = FastSigmoidSurrogate(k=k)
    u = V_TH + torch.linspace(-0.2, 0.2, 21, dtype=torch.float64)
    torch.testing.assert_close(sur.expected_surrogate(u, V_TH), target(u, V_TH))
    draws = 200_000
    psi = sur(u.float().expand(draws, -1).contiguous(), V_TH).double()
    se = psi.std(0) / math.sqrt(draws)
    assert ((psi.mean(0) - target(u, V_TH)) / se).abs().max() < 5.0
    # δ drops out: ψ = 1{k|x| < t}/t with t = kδ|z|
    assert LocalZOSurrogate(delta=0.5, distribution="fast-sigmoid", k=k).expected_surrogate(
        u, V_TH
    ).allclose(target(u, V_TH))


def test_truncated_fast_sigmoid():
    k, delta, z_max = 100.0, 0.05, 10.0
    sur = LocalZOSurrogate(delta=delta, distribution="fast-sigmoid", k=k, z_max=z_max,
                           generator=_gen(11))
    draws = 200_000
    z = sur.sample_abs_z((draws,), dtype=torch.float64)
    assert z.max() <= z_max
    u = V_TH + torch.linspace(-0.6, 0.6, 25, dtype=torch.float64)
    g = FastSigmoidSurrogate(k=k)(u, V_TH)
    edge = 1.0 / (1 + k * delta * z_max) ** 2
    mass = (k * delta * z_max / (1 + k * delta * z_max)) ** 2
    expected = (g - edge).clamp_min(0) / mass
    torch.testing.assert_close(sur.expected_surrogate(u, V_TH), expected)
    psi = sur(u.expand(draws, -1).contiguous(), V_TH)
    se = psi.std(0) / math.sqrt(draws)
    z_scores = torch.where(se > 0, (psi.mean(0) - expected) / se.clamp_min(1e-300), psi.mean(0))
    assert z_scores.abs().max() < 5.0
    # untruncated: E|z| diverges (appendix A.2.2)
    assert LocalZOSurrogate(distribution="fast-sigmoid").expected_threshold() == math.inf


def test_truncated_sigmoid_matches_its_expectation():
    sur = LocalZOSurrogate(delta=0.05, distribution="sigmoid", z_max=1.0, generator=_gen(2))
    assert sur.sample_abs_z((100_000,)).max() <= 1.0
    z, _ = _mc_z_scores(sur)
    assert z.abs().max() < 5.0


# Table 1 of the LocalZO paper: B̃_th / δ
TABLE_1 = [
    ("normal", 1, 0.798),
    ("normal", 5, 1.569),
    ("uniform", 1, 0.866),
    ("uniform", 5, 1.443),
    ("laplace", 1, 0.707),
    ("laplace", 5, 1.615),
    ("sigmoid", 1, 0.766),  # eq. 15: a/2
]


@pytest.mark.parametrize(("dist", "m", "table"), TABLE_1)
def test_expected_threshold_table_1(dist, m, table):
    delta = 0.05
    sur = LocalZOSurrogate(delta=delta, m=m, distribution=dist, generator=_gen(m))
    b_th = sur.expected_threshold()
    assert b_th / delta == pytest.approx(table, abs=1.1e-3)
    # Monte Carlo: δ · mean over draws of max_k |z_k|
    draws = 200_000
    t = sur.sample_abs_z((m, draws), dtype=torch.float64).amax(0) * delta
    se = t.std().item() / math.sqrt(draws)
    assert abs(t.mean().item() - b_th) < 5 * se


def test_expected_threshold_closed_forms():
    for m in (1, 2, 5, 20):
        uni = LocalZOSurrogate(delta=1.0, m=m, distribution="uniform").expected_threshold()
        assert uni == pytest.approx(math.sqrt(3) * m / (m + 1))  # eq. 23
    # eq. 22 for the normal, integrated here in its own form
    t = torch.linspace(0, 12, 400_001, dtype=torch.float64)
    for m in (1, 5, 20):
        integrand = t * torch.special.erf(t / math.sqrt(2)) ** (m - 1) * torch.exp(-(t**2) / 2)
        eq22 = 2 * m / math.sqrt(2 * math.pi) * torch.trapezoid(integrand, t).item()
        nor = LocalZOSurrogate(delta=1.0, m=m, distribution="normal").expected_threshold()
        assert nor == pytest.approx(eq22, rel=1e-7)
    # eq. 24 for the Laplace, numerically
    t = torch.linspace(0, 40, 400_001, dtype=torch.float64)
    for m in (1, 5):
        lam = math.sqrt(2)
        integrand = t * (1 - torch.exp(-lam * t)) ** (m - 1) * torch.exp(-lam * t)
        eq24 = m * lam * torch.trapezoid(integrand, t).item()
        lap = LocalZOSurrogate(delta=1.0, m=m, distribution="laplace").expected_threshold()
        assert lap == pytest.approx(eq24, rel=1e-6)
    # the threshold scales with δ
    assert LocalZOSurrogate(delta=0.5).expected_threshold() == pytest.approx(
        0.5 * math.sqrt(2 / math.pi)
    )


def test_psi_is_the_formula_for_the_drawn_z():
    u = V_TH + 0.08 * torch.randn(64, 32)
    for dist, m, p in [("normal", 3, 1), ("laplace", 1, 2), ("fast-sigmoid", 2, -1),
                       ("sigmoid", 1, 1)]:
        sur = LocalZOSurrogate(delta=0.05, m=m, p=p, distribution=dist, generator=_gen(9))
        psi = sur(u, V_TH)
        sur.generator.manual_seed(9)
        z = sur.sample_abs_z((m, *u.shape))
        active = (u - V_TH).abs() < sur.delta * z
        terms = torch.where(active, z ** float(p), torch.zeros(()))
        manual = sur.scale * terms.sum(0) / (2 * sur.delta * m)
        torch.testing.assert_close(psi, manual)


def test_fresh_samples_per_call_and_reproducible_with_seed():
    u = V_TH + 0.05 * torch.randn(256, 64)
    for dist in DISTRIBUTIONS:
        sur = LocalZOSurrogate(distribution=dist, generator=_gen(123))
        first, second = sur(u, V_TH), sur(u, V_TH)
        assert not torch.equal(first, second), dist
        again = LocalZOSurrogate(distribution=dist, generator=_gen(123))
        torch.testing.assert_close(again(u, V_TH), first, rtol=0, atol=0)
        torch.testing.assert_close(again(u, V_TH), second, rtol=0, atol=0)
        # every neuron gets its own z: equal potentials, different derivatives
        same = torch.full((4096,), V_TH + 0.01)
        assert sur(same, V_TH).unique().numel() > 100, dist


def test_global_rng_used_without_generator():
    u = V_TH + 0.05 * torch.randn(128, 16)
    sur = LocalZOSurrogate()
    torch.manual_seed(4)
    a = sur(u, V_TH)
    torch.manual_seed(4)
    torch.testing.assert_close(sur(u, V_TH), a, rtol=0, atol=0)


def test_grad_equals_g_times_psi_for_the_same_draw():
    u = V_TH + 0.05 * torch.randn(32, 50)
    g = torch.randn(32, 50)
    for dist in DISTRIBUTIONS:
        sur = LocalZOSurrogate(distribution=dist, m=2, generator=_gen(1))
        psi = sur(u, V_TH)
        sur.generator.manual_seed(1)
        torch.testing.assert_close(sur.grad(g, u, V_TH), g * psi, rtol=0, atol=0)
        sur.generator.manual_seed(1)
        assert sur.gain() == 1.0
        torch.testing.assert_close(sur.grad_scaled(g, u, V_TH), g * psi, rtol=0, atol=0)
        # broadcasting g
        sur.generator.manual_seed(1)
        torch.testing.assert_close(sur.grad(g[:1], u, V_TH), g[:1] * psi, rtol=0, atol=0)


def test_nonzero_fraction_counts_all_calls():
    sur = LocalZOSurrogate(delta=0.05, m=2, distribution="laplace", generator=_gen(8))
    assert sur.nonzero_fraction == 0.0
    nonzero, total = 0, 0
    for i in range(5):
        u = V_TH + 0.1 * torch.randn(100 + i, 30)
        psi = sur(u, V_TH)
        nonzero += int((psi != 0).sum())
        total += psi.numel()
    assert sur.calls == 5
    assert sur.total_count == total
    assert sur.nonzero_count == nonzero
    assert sur.nonzero_fraction == pytest.approx(nonzero / total)
    assert 0 < sur.nonzero_fraction < 1
    sur.reset_stats()
    assert (sur.nonzero_fraction, sur.total_count, sur.calls) == (0.0, 0, 0)


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_nonzero_fraction_matches_active_probability(dist):
    # P(ψ ≠ 0) = 1 − F_{|z|}(|x|/δ)^m (appendix A.3)
    sur = LocalZOSurrogate(delta=0.05, m=3, distribution=dist, generator=_gen(6))
    u = (V_TH + 0.08 * torch.randn(200_000, generator=_gen(7))).reshape(1000, 200)
    sur(u, V_TH)
    expected = sur.active_probability(u, V_TH).double().mean().item()
    se = math.sqrt(expected * (1 - expected) / u.numel())
    assert abs(sur.nonzero_fraction - expected) < 5 * se


def test_track_stats_off():
    sur = LocalZOSurrogate(track_stats=False)
    sur(torch.ones(10), V_TH)
    assert sur.total_count == 0


def test_spike_with_autograd_uses_psi():
    u = (V_TH + 0.05 * torch.randn(40, 20)).requires_grad_()
    sur = LocalZOSurrogate(generator=_gen(2))
    s = spike_with_surrogate(u, V_TH, sur)
    torch.testing.assert_close(s, (u > V_TH).float())
    s.sum().backward()
    sur.generator.manual_seed(2)
    torch.testing.assert_close(u.grad, sur(u.detach(), V_TH))


def test_config_round_trip_and_dtypes():
    for kw in [{}, {"distribution": "sigmoid", "a": 0.1, "m": 5},
               {"distribution": "fast-sigmoid", "k": 25.0, "z_max": 10.0},
               {"distribution": "uniform", "delta": 0.5, "p": 2}]:
        sur = LocalZOSurrogate(**kw)
        clone = make_localzo(**sur.config())
        assert clone.config() == sur.config()
        assert repr(clone).startswith("LocalZOSurrogate(")
    u = V_TH + 0.05 * torch.randn(8, 8, dtype=torch.float64)
    assert LocalZOSurrogate()(u, V_TH).dtype == torch.float64
    assert LocalZOSurrogate().expected_surrogate(u.float(), V_TH).dtype == torch.float32


@pytest.mark.parametrize(
    "kw",
    [
        {"distribution": "cauchy"},
        {"delta": 0.0},
        {"m": 0},
        {"p": 0},
        {"p": 0.5},
        {"distribution": "normal", "p": -1},
        {"distribution": "sigmoid", "p": 2},
        {"distribution": "fast-sigmoid", "p": 1},
        {"distribution": "sigmoid", "a": 0.1, "k": 10.0},
        {"distribution": "normal", "a": 0.1},
        {"distribution": "normal", "z_max": 3.0},
        {"distribution": "fast-sigmoid", "a": 0.1},
        {"distribution": "fast-sigmoid", "k": -1.0},
    ],
)
def test_invalid_arguments(kw):
    with pytest.raises(ValueError):
        LocalZOSurrogate(**kw)
    with pytest.raises(ValueError):
        make_localzo(name="sigmoid")


def test_abs_z_cdf_is_a_cdf():
    for dist in DISTRIBUTIONS:
        sur = LocalZOSurrogate(distribution=dist)
        t = np.linspace(0, 200, 2001)
        cdf = sur.abs_z_cdf(t)
        assert cdf[0] == pytest.approx(0.0, abs=1e-12)
        assert np.all(np.diff(cdf) >= -1e-15)
        assert cdf[-1] == pytest.approx(1.0, abs=0.02)


def test_sparsegrad_is_expected_surrogate_cut_at_expected_threshold():
    from opzo.surrogate.localzo import SparseGradSurrogate

    delta = 0.05
    sg = SparseGradSurrogate(delta=delta, m=1, distribution="normal")
    assert sg.threshold == pytest.approx(0.798 * delta, abs=1e-3 * delta)  # Table 1
    u = torch.linspace(0.8, 1.2, 4001, dtype=torch.float64)
    psi = sg(u, 1.0)
    x = u - 1.0
    bump = torch.exp(-x * x / (2 * delta**2)) / (delta * math.sqrt(2 * math.pi))  # eq. 9
    inside = x.abs() < sg.threshold
    assert torch.allclose(psi[inside], bump[inside])
    assert (psi[~inside] == 0).all()
    assert sg.nonzero_fraction == pytest.approx(inside.double().mean().item())
    # the uniform's expected surrogate and threshold √3·m/(m+1)·δ (m = 5), via the general path
    su = SparseGradSurrogate(delta=delta, m=5, distribution="uniform")
    assert su.threshold == pytest.approx(math.sqrt(3) * 5 / 6 * delta)
    loc = LocalZOSurrogate(delta=delta, m=5, distribution="uniform")
    expect = loc.expected_surrogate(u, 1.0) * ((u - 1).abs() < su.threshold)
    assert torch.allclose(su(u, 1.0), expect)
    with pytest.raises(ValueError, match="threshold"):
        SparseGradSurrogate(distribution="fast-sigmoid")  # E|z| diverges without z_max
