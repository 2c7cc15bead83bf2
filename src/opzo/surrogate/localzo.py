"""LocalZO: the local zeroth-order derivative of the spike function (Mukhoty et al., 2023).

The forward spike stays the Heaviside step ``s = H(u − V_th)``; the backward pass replaces its
derivative by a two-point zeroth-order estimate taken *at the neuron* (LocalZO paper, eqs. 5-7).
With ``x = u − V_th`` and ``m`` fresh samples ``z_k ~ λ`` per neuron and per call (per time step)::

    ψ(u) = c · (1/m) Σ_k 1{|x| < δ|z_k|} · |z_k|^α_p / (2δ)                (eqs. 6-7)

``δ > 0`` sets the width, ``α_p`` (``p`` here; the paper's α in eq. 7, a non-zero integer, 1 by
default, which gives eq. 5) the weight, and ``c`` is 1 except for the surrogate-matching
distributions below. Only ``|z|`` matters, so only ``|z|`` is sampled. A neuron whose ``|x|``
is beyond every ``δ|z_k|`` gets ψ = 0: it drops out of the backward pass (section 2.2,
Algorithm 1), which is the sparsity the paper exploits; :attr:`LocalZOSurrogate.nonzero_fraction`
measures it.

Expected surrogate (eq. 8, λ even): ``E[ψ](x) = (c/δ) ∫_{|x|/δ}^∞ z^α_p λ(z) dz``. For the three
unit-variance distributions of section 4.4 / appendix A.1 (α_p = 1, c = 1):

* ``"normal"``, z ~ N(0, 1): ``E[ψ] = exp(−x²/2δ²) / (δ√(2π))`` (eq. 9 / 11);
* ``"uniform"``, z ~ U(−√3, √3): ``E[ψ] = (3 − x²/δ²) / (4√3 δ)`` for ``|x| < √3 δ`` (eq. 12);
* ``"laplace"``, z ~ Laplace(0, 1/√2): ``E[ψ] = (|x|/δ + 1/√2) e^{−√2|x|/δ} / (2δ)`` (eq. 13).

Surrogate-matching distributions (Theorem 3, appendix A): for a surrogate g put
``λ(z) = −δ² g'(δz) / (c z^α_p)`` with ``c = −2δ² ∫_0^∞ z^{−α_p} g'(δz) dz``; then
``c · E[G²] = g``. Here ψ carries that factor c, so ``E[ψ] = g`` exactly, whatever the width:

* ``"sigmoid"``: g(x) = (1/a) σ'(x/a), the library's :class:`~opzo.surrogate.SigmoidSurrogate`
  (slope k = 1/a in the paper's notation, eq. 10). With ``t = kδ|z|`` the law of t has density
  ``∝ −σ''(t) t^{−α_p}`` and ``c = 2 (kδ)^{α_p+1} J_α``, ``J_α = ∫_0^∞ −σ''(t) t^{−α_p} dt``.
  For α_p = 1, ``2 J_1 = 7ζ(3)/(2π²) ≈ 0.42628`` (the paper's 0.4262), so c = 1 exactly when
  ``kδ = π √(2/(7ζ(3))) ≈ 1.53163`` (the paper's a; k ≈ 30.63 at δ = 0.05, section 5.2): that is the
  default width ``a = δ / 1.53163``. The CDF has no closed form: it is tabulated once at
  construction (trapezoid rule on 2^17 points of t ∈ [0, 50], in float64) and inverted by
  linear interpolation (appendix A.2.3), see :func:`_sigmoid_inverse_table`.
* ``"fast-sigmoid"``: g(x) = 1/(1 + k|x|)², the library's
  :class:`~opzo.surrogate.FastSigmoidSurrogate`. Only α_p = −1 works (appendix A.2.2); then
  ``λ(z) = (kδ)² |z| / (1 + kδ|z|)³`` (eq. 16), ``c = 2/k``, and t = kδ|z| has the CDF
  ``F(t) = (t / (1 + t))²`` whose inverse is analytic: ``t = √r / (1 − √r)``. Then
  ``ψ = 1{k|x| < t} / t``: δ drops out. Default k = 100 (appendix B.2, Table 5).

Both accept ``z_max``: |z| sampled from λ truncated to ``[0, z_max]`` and renormalised (the paper
uses z_max = 10 for the fast sigmoid, whose E|z| is infinite); then
``E[ψ] = max(g(x) − g(δ z_max), 0) / P(|z| ≤ z_max)``.

Expected back-propagation threshold (section 4.5, Table 1, appendix A.3): a neuron is active iff
``|x| < δ max_k |z_k|``, so ``B̃_th = δ E[max_k |z_k|] = δ ∫_0^∞ (1 − F_{|z|}(t)^m) dt`` (eq. 21):
``√(2/π) δ ≈ 0.798 δ`` (normal, m = 1), ``1.569 δ`` (normal, m = 5), ``√3 δ m/(m+1)`` (uniform,
eq. 23), ``δ H_m / √2`` (Laplace, eq. 24, H_m the harmonic number: 0.707 δ, 1.615 δ), ``δ a/2``
with a = 1.53163 for the default sigmoid (eq. 15: 0.766 δ).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..registry import Option, Options
from .base import Surrogate

__all__ = [
    "DISTRIBUTIONS",
    "SIGMOID_KDELTA",
    "SIGMOID_TWO_J1",
    "LocalZOSurrogate",
    "SparseGradSurrogate",
    "make_localzo",
]

#: Sampling distributions of z accepted by :class:`LocalZOSurrogate`.
DISTRIBUTIONS: tuple[str, ...] = ("normal", "uniform", "laplace", "sigmoid", "fast-sigmoid")

#: the options of LocalZO and of SparseGrad (which takes LocalZO's distribution)
LOCALZO_OPTIONS: tuple[Option, ...] = (
    Option("localzo_delta", 0.05, "LocalZO smoothing δ", min=1e-9),
    Option("localzo_m", 1, "LocalZO samples m per neuron and step", min=1),
    Option("localzo_dist", "normal", "LocalZO distribution of z", choices=DISTRIBUTIONS),
    Option("sparse_backward", "auto", "localzo / sparsegrad: compute the backward over the "
           "neurons with ψ ≠ 0 only, same gradients up to rounding (LocalZO paper section "
           "5.2; opzo.sparse): auto = BPTT's backward (FC LIF nets), on = also the online "
           "OTTT trace's weight-gradient product, off = neither",
           choices=("auto", "on", "off")),
)

_ZETA3 = 1.2020569031595942
#: ``2 J_1 = −2 ∫_0^∞ σ''(t)/t dt = 7ζ(3)/(2π²) ≈ 0.42628`` (the paper's 0.4262, section 4.4).
SIGMOID_TWO_J1: float = 3.5 * _ZETA3 / math.pi**2
#: ``kδ = π √(2/(7ζ(3))) ≈ 1.53163``: the paper's a in eq. 10, for which c = 1 (α_p = 1).
SIGMOID_KDELTA: float = 1.0 / math.sqrt(SIGMOID_TWO_J1)

_SQRT3 = math.sqrt(3.0)
_SQRT2 = math.sqrt(2.0)
_SIGMOID_T_MAX = 50.0  # −σ''(t) ~ e^{−t}: mass beyond t = 50 is ~1e-22, below float64 resolution
_GRID_POINTS = 2**17 + 1  # forward-CDF grid
_TABLE_POINTS = 2**16 + 1  # inverse-CDF table
_E_MAX = 45.0  # samples of Exp(1) beyond this (probability e^{−45}) are clamped


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def _sigmoid_density(t: np.ndarray, p: int) -> np.ndarray:
    """Unnormalised density of ``t = kδ|z|``: ``−σ''(t) t^{−p}`` (Theorem 3 with g = k σ'(kx)).

    ``−σ''(t) = σ'(t) tanh(t/2)``; for p = 1 the limit at t = 0 is 1/8.
    """
    sig_prime = 0.25 / np.cosh(0.5 * t) ** 2
    if p == 1:
        safe = np.where(t > 0, t, 1.0)
        ratio = np.where(t > 0, np.tanh(0.5 * t) / safe, 0.5)
        return sig_prime * ratio
    return sig_prime * np.tanh(0.5 * t) * t ** float(-p)


def _sigmoid_inverse_table(
    p: int, t_max: float
) -> tuple[np.ndarray, float, float, float, np.ndarray, np.ndarray]:
    """Tabulate the law of ``t = kδ|z|`` for the sigmoid-matching λ (appendix A.2.3).

    On a uniform grid of ``t ∈ [0, t_max]`` (2^17 + 1 points, float64) the unnormalised density
    ``ρ(t) = −σ''(t) t^{−p}`` is integrated from the tail (reverse trapezoid sums keep the tail's
    relative precision) into the survival ``S(t) = P(T > t)``. Sampling uses ``E = −log S(T)``,
    which is Exp(1)-distributed: the inverse map ``E ↦ t`` is tabulated on a uniform grid of
    ``ξ = E^γ``, ``γ = 1/(2 − p)``, which makes it nearly linear at both ends (near 0
    ``S ≈ 1 − C t^{2−p}``; in the tail ``E ≈ t``), so linear interpolation is accurate.

    Returns ``(table_t, dxi, gamma, J, grid_t, grid_cdf)``: ``table_t[i] = t(ξ = i·dxi)``,
    ``J = ∫_0^{t_max} ρ`` (≈ ``J_p`` when untruncated) and the forward CDF on the grid.
    """
    t = np.linspace(0.0, t_max, _GRID_POINTS)
    rho = _sigmoid_density(t, p)
    pieces = 0.5 * (rho[1:] + rho[:-1]) * np.diff(t)
    tail = np.concatenate([np.cumsum(pieces[::-1])[::-1], [0.0]])  # ∫_t^{t_max} ρ
    total = float(tail[0])
    survival = tail / total
    cdf = 1.0 - survival
    # E(t) = −log S(t): strictly increasing (ρ > 0 inside), +inf at t_max (dropped)
    energy = -np.log(survival[:-1])
    gamma = 1.0 / (2.0 - p)
    xi = energy**gamma
    xi_max = min(float(xi[-1]), _E_MAX**gamma)
    xi_grid = np.linspace(0.0, xi_max, _TABLE_POINTS)
    table_t = np.interp(xi_grid, xi, t[:-1])
    return table_t, xi_max / (_TABLE_POINTS - 1), gamma, total, t, cdf


def _check_sparse_mode(mode: str) -> str:
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"sparse_backward must be 'auto', 'on' or 'off', got {mode!r}")
    return mode


class SparsityStats:
    """Counts the local derivatives ψ that are non-zero (the sparsity SparseGrad exploits).

    ``_count(psi)`` adds one evaluation; :attr:`nonzero_fraction` is the fraction of neurons
    with a non-zero derivative over all evaluations since :meth:`reset_stats`. Counting stays
    on ψ's device (no host synchronisation per call).
    """

    track_stats: bool = True
    #: ψ is exactly zero for most neurons: the backward may skip them (:mod:`opzo.sparse`)
    sparse_psi = True

    def _count(self, psi: Tensor) -> None:
        self._nonzero = torch.count_nonzero(psi) + self._nonzero.to(psi.device)
        self._total += psi.numel()
        self._calls += 1

    def add_counts(self, nonzero: int, total: int, calls: int) -> None:
        """Count ``calls`` evaluations with ``nonzero`` of ``total`` values non-zero, made
        with counting off by a caller that finds the non-zeros anyway (:mod:`opzo.sparse`)."""
        self._nonzero = self._nonzero + int(nonzero)
        self._total += int(total)
        self._calls += int(calls)

    def reset_stats(self) -> None:
        """Zero the counters behind :attr:`nonzero_fraction`."""
        self._nonzero: Tensor = torch.zeros((), dtype=torch.int64, device="cpu")
        self._total = 0
        self._calls = 0

    @property
    def nonzero_count(self) -> int:
        """Number of ψ values that were non-zero since :meth:`reset_stats`."""
        return int(self._nonzero)

    @property
    def total_count(self) -> int:
        """Number of ψ values computed since :meth:`reset_stats`."""
        return self._total

    @property
    def calls(self) -> int:
        """Number of calls (ψ evaluations) since :meth:`reset_stats`."""
        return self._calls

    @property
    def nonzero_fraction(self) -> float:
        """Fraction of neurons (over all calls) with a non-zero derivative; 0.0 before any call.

        ``1 −`` this is the backward sparsity of the LocalZO paper's section 5.2 / Figure 2
        ("active neurons").
        """
        return self.nonzero_count / self._total if self._total else 0.0

    def stats_state(self) -> tuple[int, int, int]:
        """The counters (non-zero, total, calls), e.g. for a checkpoint."""
        return (self.nonzero_count, self._total, self._calls)

    def load_stats_state(self, state: tuple[int, int, int]) -> None:
        """Restore counters saved by :meth:`stats_state`."""
        nonzero, total, calls = state
        self._nonzero = torch.tensor(int(nonzero), dtype=torch.int64, device="cpu")
        self._total, self._calls = int(total), int(calls)

    def epoch_metrics(self) -> dict[str, float]:
        """The fraction of neurons with a non-zero local derivative in training (LocalZO
        paper section 5.2: 1 − the backward sparsity SparseGrad exploits)."""
        if not self.track_stats:
            return {}
        return {"nonzero_grad_fraction": round(self.nonzero_fraction, 6)}


class LocalZOSurrogate(SparsityStats, Surrogate):
    """LocalZO local derivative ψ(u) (LocalZO paper, sections 3-4, Algorithm 1, appendix A).

    ``ψ(u) = c · (1/m) Σ_{k=1}^m 1{|u − V_th| < δ|z_k|} |z_k|^{α_p} / (2δ)`` with fresh
    ``z_k ~ λ`` per neuron and per call; see the module docstring for λ, c and E[ψ].

    Args:
        delta: δ > 0, the width (the paper uses 0.05 and 0.5).
        m: number of samples averaged per neuron (1, 5, 20 in the paper).
        p: the exponent α_p of |z| (a non-zero integer); default 1, or −1 for "fast-sigmoid"
            (the only value that works there). Allowed: p ≥ 1 for normal/uniform/laplace
            (E[ψ] must be finite at the threshold), p ≤ 1 for sigmoid, p = −1 for fast-sigmoid.
        distribution: one of :data:`DISTRIBUTIONS`.
        a: width of the matched :class:`~opzo.surrogate.SigmoidSurrogate` (``"sigmoid"`` only;
            slope k = 1/a may be given as ``k`` instead). Default ``δ / 1.53163`` (c = 1 for
            p = 1, the paper's k = a/δ ≈ 30.63 at δ = 0.05).
        k: slope of the matched :class:`~opzo.surrogate.FastSigmoidSurrogate`
            (``"fast-sigmoid"``; default 100 as in the paper's Table 5), or 1/a for "sigmoid".
        z_max: optional truncation of |z| to ``[0, z_max]`` (sigmoid / fast-sigmoid only).
        generator: optional ``torch.Generator`` (on the device of u) for reproducible draws.
        track_stats: count non-zero derivatives (see :attr:`nonzero_fraction`).
    """

    name = "localzo"
    options = LOCALZO_OPTIONS

    @classmethod
    def from_config(cls, cfg: Options) -> LocalZOSurrogate:
        return cls(delta=cfg.localzo_delta, m=cfg.localzo_m, distribution=cfg.localzo_dist,
                   sparse_backward=getattr(cfg, "sparse_backward", "auto"))

    def __init__(
        self,
        delta: float = 0.05,
        m: int = 1,
        p: int | None = None,
        distribution: str = "normal",
        a: float | None = None,
        k: float | None = None,
        z_max: float | None = None,
        generator: torch.Generator | None = None,
        track_stats: bool = True,
        sparse_backward: str = "auto",
    ) -> None:
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown LocalZO distribution {distribution!r}; choose one of {DISTRIBUTIONS}"
            )
        if not delta > 0:
            raise ValueError(f"LocalZO delta must be > 0, got {delta}")
        if int(m) != m or m < 1:
            raise ValueError(f"LocalZO sample count m must be an integer >= 1, got {m}")
        if p is None:
            p = -1 if distribution == "fast-sigmoid" else 1
        if int(p) != p or p == 0:
            raise ValueError(f"LocalZO exponent p (alpha_p) must be a non-zero integer, got {p}")
        p = int(p)
        if distribution in ("normal", "uniform", "laplace") and p < 1:
            raise ValueError(f"{distribution} LocalZO needs p >= 1 (E[psi] diverges), got {p}")
        if distribution == "sigmoid" and p > 1:
            raise ValueError(f"sigmoid LocalZO needs p <= 1 (Theorem 3's c diverges), got {p}")
        if distribution == "fast-sigmoid" and p != -1:
            raise ValueError(f"fast-sigmoid LocalZO needs p = -1 (appendix A.2.2), got {p}")
        if z_max is not None:
            if distribution not in ("sigmoid", "fast-sigmoid"):
                raise ValueError("z_max (truncation) applies to sigmoid / fast-sigmoid only")
            if not z_max > 0:
                raise ValueError(f"z_max must be > 0, got {z_max}")
        self.delta = float(delta)
        self.m = int(m)
        self.p = p
        self.distribution = distribution
        self.z_max = None if z_max is None else float(z_max)
        self.generator = generator
        self.track_stats = bool(track_stats)
        self.sparse_backward = _check_sparse_mode(sparse_backward)
        self.a: float | None = None
        self.k: float | None = None
        #: c of Theorem 3 (1 for normal / uniform / laplace)
        self.scale = 1.0
        #: s = kδ, the factor from |z| to the dimensionless t = kδ|z| (matched surrogates)
        self._s = 1.0
        self._trunc_mass = 1.0  # P(|z| <= z_max) under the untruncated λ
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

        if distribution == "sigmoid":
            if a is not None and k is not None:
                raise ValueError("give the sigmoid width a or its slope k = 1/a, not both")
            if k is not None:
                a = 1.0 / float(k)
            if a is None:
                a = self.delta / SIGMOID_KDELTA
            if not a > 0:
                raise ValueError(f"sigmoid width a must be > 0, got {a}")
            self.a = float(a)
            self._s = self.delta / self.a
            self._init_sigmoid()
        elif distribution == "fast-sigmoid":
            if a is not None:
                raise ValueError("fast-sigmoid LocalZO takes a slope k, not a width a")
            k = 100.0 if k is None else float(k)
            if not k > 0:
                raise ValueError(f"fast-sigmoid slope k must be > 0, got {k}")
            self.k = k
            self._s = k * self.delta
            self.scale = 2.0 / k  # c = 2/k (appendix A.2.2)
            if self.z_max is not None:
                t_cap = self._s * self.z_max
                self._trunc_mass = (t_cap / (1.0 + t_cap)) ** 2
        elif a is not None or k is not None:
            raise ValueError(f"{distribution} LocalZO takes no a / k parameter")
        self.reset_stats()

    # ------------------------------------------------------------------ set-up
    def _init_sigmoid(self) -> None:
        """Theorem 3 for g(x) = (1/a) σ'(x/a): tabulate t = kδ|z| and compute c."""
        p = self.p
        t_cap = _SIGMOID_T_MAX
        if self.z_max is not None:
            t_cap = min(t_cap, self._s * self.z_max)
        # J_p over the whole line (for c) and the truncated table for sampling
        full = _sigmoid_inverse_table(p, _SIGMOID_T_MAX)
        j_p = full[3]
        if p == 1:
            j_p = 0.5 * SIGMOID_TWO_J1  # closed form 7ζ(3)/(4π²)
        elif p == -1:
            j_p = 0.5  # ∫ −σ''(t) t dt = ∫ σ' = 1/2
        self._j = j_p
        self.scale = 2.0 * self._s ** (p + 1) * j_p
        if t_cap < _SIGMOID_T_MAX:
            table = _sigmoid_inverse_table(p, t_cap)
            self._trunc_mass = float(np.interp(t_cap, full[4], full[5]))
        else:
            table = full
        self._table_t, self._dxi, self._gamma = table[0], table[1], table[2]
        self._grid_t, self._grid_cdf = table[4], table[5]

    def _table(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = (device, dtype)
        if key not in self._tables:
            values = torch.as_tensor(self._table_t, dtype=torch.float64)
            steps = torch.diff(values, append=values[-1:])
            self._tables[key] = (values.to(device, dtype), steps.to(device, dtype))
        return self._tables[key]

    # ---------------------------------------------------------------- sampling
    def sample_abs_z(
        self, shape: tuple[int, ...] | torch.Size, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw ``|z|`` for ``z ~ λ`` (i.i.d., shape ``shape``) with :attr:`generator`.

        normal: |N(0,1)|; uniform: √3·U[0,1); Laplace(0, 1/√2): Exp(rate √2) = −log(1 − r)/√2;
        sigmoid: tabulated inverse CDF of t = kδ|z| fed with E = −log(1 − r) ~ Exp(1);
        fast-sigmoid: ``t = √r/(1 − √r)``, r ~ U[0, F(kδ z_max)) (appendix A.2.3, inverse
        transform sampling).
        """
        gen = self.generator
        kw = {"device": device, "dtype": dtype}
        dist = self.distribution
        if dist == "normal":
            return torch.randn(shape, generator=gen, **kw).abs_()
        if dist == "uniform":
            return torch.rand(shape, generator=gen, **kw).mul_(_SQRT3)
        if dist == "laplace":  # −log(1 − r)/√2 ~ Exp(rate √2); faster than exponential_
            return torch.rand(shape, generator=gen, **kw).neg_().log1p_().mul_(-1.0 / _SQRT2)
        if dist == "fast-sigmoid":
            root = torch.rand(shape, generator=gen, **kw)
            if self._trunc_mass < 1.0:
                root.mul_(self._trunc_mass)
            root.sqrt_()
            # |z| = t / s with t = √r / (1 − √r)
            return root.div_(torch.rsub(root, 1.0).mul_(self._s))
        # sigmoid: E ~ Exp(1), ξ = E^γ, t = table(ξ) by linear interpolation
        values, steps = self._table(torch.device(device), dtype)
        pos = torch.rand(shape, generator=gen, **kw).neg_().log1p_().neg_()
        if self._gamma != 1.0:
            pos.pow_(self._gamma)
        pos.div_(self._dxi).clamp_(max=float(_TABLE_POINTS - 1))
        idx = pos.long()
        frac = pos.sub_(idx)
        t = torch.take(values, idx).addcmul_(frac, torch.take(steps, idx))
        return t.div_(self._s)

    # ------------------------------------------------------------- derivative
    def __call__(self, u: Tensor, v_th: float) -> Tensor:
        """ψ(u) with fresh z per element of ``u`` (LocalZO paper, eqs. 6-7, Algorithm 1)."""
        dist = (u.detach() - v_th).abs_().div_(self.delta)  # |x|/δ
        m = self.m
        shape = u.shape if m == 1 else (m, *u.shape)
        z = self.sample_abs_z(shape, u.device, u.dtype)
        active = dist < z
        if self.p == 1:
            psi = z.mul_(active)
        else:
            psi = torch.where(active, z.pow_(self.p), 0.0)
        if m > 1:
            psi = psi.sum(0)
        psi.mul_(self.scale / (2.0 * self.delta * m))
        if self.track_stats:
            self._count(psi)
        return psi

    def nonzeros(self, u: Tensor, v_th: float) -> tuple[Tensor, Tensor]:
        """ψ(u)'s non-zero entries from the same draws as :meth:`__call__` (m = 1, p = 1: the
        active neurons' |z| scaled, without ψ's dense product); counted as one call."""
        if self.m != 1 or self.p != 1:
            return super().nonzeros(u, v_th)
        dist = (u.detach() - v_th).abs_().div_(self.delta).reshape(-1)
        z = self.sample_abs_z(dist.shape, u.device, u.dtype)
        index = (dist < z).nonzero().squeeze(1)
        psi = z[index].mul_(self.scale / (2.0 * self.delta))
        if self.track_stats:
            self.add_counts(index.numel(), dist.numel(), 1)
        return index, psi

    sampled = True

    @classmethod
    def examples(cls) -> list[Surrogate]:
        return [cls(delta=0.5), cls(delta=0.5, m=3, distribution="uniform"),
                cls(delta=0.3, distribution="sigmoid")]

    def expected(self, u: Tensor, v_th: float) -> Tensor:
        """E_z[ψ(u)], :meth:`expected_surrogate`."""
        return self.expected_surrogate(u, v_th)

    def primitive(self, u: Tensor, v_th: float) -> Tensor | None:
        """The smooth step whose derivative is E_z[ψ], where the paper gives it in closed
        form: Φ((u − V_th)/δ) (normal, p = 1, eq. 9); σ((u − V_th)/a) (matched sigmoid);
        x / (1 + k|x|) (matched fast sigmoid); untruncated only."""
        x = u - v_th
        if self.z_max is not None:
            return None
        if self.distribution == "normal" and self.p == 1:
            return 0.5 * (1.0 + torch.erf(x / (self.delta * math.sqrt(2.0))))
        if self.distribution == "sigmoid":
            assert self.a is not None
            return torch.sigmoid(x / self.a)
        if self.distribution == "fast-sigmoid":
            assert self.k is not None
            return x / (self.k * x.abs() + 1.0)
        return None

    def grad(self, g: Tensor, u: Tensor, v_th: float) -> Tensor:
        """g ⊙ ψ(u), one fresh draw of z (LocalZO paper, Algorithm 1, backward)."""
        psi = self(u, v_th)
        if psi.shape == g.shape and psi.dtype == g.dtype:
            return psi.mul_(g)
        return g * psi

    # ------------------------------------------------------------ analytics
    def expected_surrogate(self, u: Tensor, v_th: float) -> Tensor:
        """``E_z[ψ(u)]`` in closed form (LocalZO paper, eq. 8 and eqs. 9, 12, 13; Theorem 3).

        With ``w = |u − V_th|/δ`` and ``Q`` the regularised upper incomplete gamma function:
        normal ``2^{(p−1)/2} Γ((p+1)/2) Q((p+1)/2, w²/2) / (δ√(2π))``; uniform
        ``(3^{(p+1)/2} − w^{p+1}) / (2√3 δ (p+1))`` for ``w < √3``; Laplace
        ``2^{−(p+1)/2} Γ(p+1) Q(p+1, √2 w) / (δ√2)``; sigmoid / fast-sigmoid the matched
        surrogate g itself, or ``max(g(x) − g(δ z_max), 0) / P(|z| ≤ z_max)`` if truncated.
        Computed in float64, returned in ``u``'s dtype. Independent of m.
        """
        x = (u.detach().to(torch.float64) - v_th).abs()
        w = x / self.delta
        p, d = self.p, self.delta
        dist = self.distribution
        if dist == "normal":
            if p == 1:
                out = torch.exp(-0.5 * w * w) / (d * math.sqrt(2.0 * math.pi))
            else:
                shape = torch.full_like(w, 0.5 * (p + 1))
                out = torch.special.gammaincc(shape, 0.5 * w * w)
                out = out * (2.0 ** (0.5 * (p - 1)) * math.gamma(0.5 * (p + 1)))
                out = out / (d * math.sqrt(2.0 * math.pi))
        elif dist == "uniform":
            inner = (3.0 ** (0.5 * (p + 1)) - w ** (p + 1)) / (2.0 * _SQRT3 * d * (p + 1))
            out = torch.where(w < _SQRT3, inner, torch.zeros_like(w))
        elif dist == "laplace":
            shape = torch.full_like(w, float(p + 1))
            out = torch.special.gammaincc(shape, _SQRT2 * w)
            out = out * (2.0 ** (-0.5 * (p + 1)) * math.gamma(p + 1) / (d * _SQRT2))
        else:
            out = self._matched_surrogate(x)
            if self.z_max is not None:
                edge = self._matched_surrogate(torch.tensor(d * self.z_max, dtype=torch.float64))
                out = (out - edge).clamp_min(0.0) / self._trunc_mass
        return out.to(u.dtype)

    def _matched_surrogate(self, x: Tensor) -> Tensor:
        """g(x) of the surrogate the distribution reproduces (x = |u − V_th|, float64)."""
        if self.distribution == "sigmoid":
            assert self.a is not None
            sig = torch.sigmoid(x / self.a)
            return sig * (1.0 - sig) / self.a
        assert self.k is not None
        return (self.k * x + 1.0).reciprocal().square()

    def abs_z_cdf(self, t: np.ndarray | float) -> np.ndarray:
        """``F_{|z|}(t) = P(|z| ≤ t)`` (appendix A.3, eq. 18), float64, t ≥ 0."""
        t = np.maximum(np.asarray(t, dtype=np.float64), 0.0)
        dist = self.distribution
        if dist == "normal":
            return torch.special.erf(torch.as_tensor(t / _SQRT2)).numpy()
        if dist == "uniform":
            return np.minimum(t / _SQRT3, 1.0)
        if dist == "laplace":
            return -np.expm1(-_SQRT2 * t)
        scaled = self._s * t  # t = kδ|z|
        if dist == "fast-sigmoid":
            cdf = (scaled / (1.0 + scaled)) ** 2 / self._trunc_mass
            return np.minimum(cdf, 1.0)
        return np.interp(scaled, self._grid_t, self._grid_cdf, right=1.0)

    def active_probability(self, u: Tensor, v_th: float) -> Tensor:
        """``P(ψ(u) ≠ 0) = 1 − F_{|z|}(|u − V_th|/δ)^m`` (appendix A.3, eq. 19)."""
        w = ((u.detach().to(torch.float64) - v_th).abs() / self.delta).cpu().numpy()
        inactive = self.abs_z_cdf(w) ** self.m
        return torch.as_tensor(1.0 - inactive).to(u.device, u.dtype)

    def expected_threshold(self) -> float:
        """Expected back-propagation threshold ``B̃_th = δ E[max_k |z_k|]`` (eq. 21, Table 1).

        ``E[max_k |z_k|] = ∫_0^∞ (1 − F_{|z|}(t)^m) dt``: uniform ``√3 m/(m+1)`` (eq. 23),
        Laplace ``H_m/√2`` (eq. 24), normal m = 1 ``√(2/π)``; otherwise the integral is taken
        numerically (trapezoid, float64). Untruncated fast-sigmoid: ``inf`` (E|z| diverges,
        appendix A.2.2); pass ``z_max`` for a finite value. (For k = 100, δ = 0.05, z_max = 10
        this gives 0.0514; the paper quotes 0.0461, and its unnormalised formula
        ``(2/k) ∫_0^{kδ z_max} x²/(1+x)³ dx`` gives 0.0494: its exact recipe is not stated.)
        """
        m, d = self.m, self.delta
        dist = self.distribution
        if dist == "uniform":
            return d * _SQRT3 * m / (m + 1)
        if dist == "laplace":
            return d * sum(1.0 / i for i in range(1, m + 1)) / _SQRT2
        if dist == "normal":
            if m == 1:
                return d * math.sqrt(2.0 / math.pi)
            t = np.linspace(0.0, 12.0, _GRID_POINTS)
        elif dist == "fast-sigmoid":
            if self.z_max is None:
                return math.inf
            # the integrand decays like 2m/t: a geometric grid resolves it on [0, z_max]
            t = np.concatenate([[0.0], np.geomspace(1e-9, self.z_max, _GRID_POINTS)])
        else:
            t = self._grid_t / self._s
        return d * _trapezoid(1.0 - self.abs_z_cdf(t) ** m, t)

    def config(self) -> dict:
        cfg: dict = {
            "name": self.name,
            "delta": self.delta,
            "m": self.m,
            "p": self.p,
            "distribution": self.distribution,
        }
        if self.a is not None:
            cfg["a"] = self.a
        if self.k is not None:
            cfg["k"] = self.k
        if self.z_max is not None:
            cfg["z_max"] = self.z_max
        return cfg


class SparseGradSurrogate(SparsityStats, Surrogate):
    """Surrogate with a back-propagation threshold: LocalZO's baseline, SparseGrad.

    SparseGrad (Perez-Nieves & Goodman 2021) back-propagates only through neurons whose
    potential is near the threshold. The LocalZO paper (section 5.2, Table 3, appendix B)
    compares against it with the surrogate and threshold that LocalZO implies, so both methods
    have the same expected derivative and the same expected number of active neurons:

        ψ(u) = E_z[ψ_LocalZO(u)] · 1{|u − V_th| < B̃_th}

    with E_z[ψ_LocalZO] the expected surrogate (eq. 8; eq. 9 for the normal:
    exp(−x²/2δ²)/(δ√(2π))) and B̃_th = δ E[max_k |z_k|] the expected back-propagation
    threshold (eq. 21, Table 1: 0.798 δ for the normal with m = 1). Deterministic: unlike
    LocalZO no z is drawn. ``threshold`` overrides B̃_th. The other arguments are those of
    :class:`LocalZOSurrogate`, which defines the distribution. The fraction of neurons with
    a non-zero derivative is tracked as :attr:`nonzero_fraction`.
    """

    name = "sparsegrad"
    options = LOCALZO_OPTIONS

    @classmethod
    def from_config(cls, cfg: Options) -> SparseGradSurrogate:
        """The expected surrogate of the config's LocalZO distribution, thresholded."""
        return cls(delta=cfg.localzo_delta, m=cfg.localzo_m, distribution=cfg.localzo_dist,
                   sparse_backward=getattr(cfg, "sparse_backward", "auto"))

    def __init__(self, delta: float = 0.05, m: int = 1, distribution: str = "normal",
                 threshold: float | None = None, track_stats: bool = True,
                 sparse_backward: str = "auto", **localzo) -> None:
        self.local = LocalZOSurrogate(delta=delta, m=m, distribution=distribution,
                                      track_stats=False, **localzo)
        if threshold is None:
            threshold = self.local.expected_threshold()
        if not 0.0 < threshold < math.inf:
            raise ValueError(
                f"back-propagation threshold must be finite and > 0, got {threshold}: the "
                f"{distribution} distribution's E|z| is infinite unless |z| is truncated "
                "(pass z_max=... from Python, or use the normal, uniform, laplace or sigmoid "
                "distribution)")
        self.threshold = float(threshold)
        self.track_stats = track_stats
        self.sparse_backward = _check_sparse_mode(sparse_backward)
        self.reset_stats()

    def __call__(self, u: Tensor, v_th: float) -> Tensor:
        local = self.local
        x = u.detach() - v_th
        if local.distribution == "normal" and local.p == 1:
            d = local.delta
            # x clamped to ±B̃_th first: the same values where kept, and no exp of a hugely
            # negative number (torch's CPU exp takes a ~30x slower path below about −88)
            t = self.threshold
            psi = x.clamp(-t, t).square_().mul_(-0.5 / (d * d)).exp_().mul_(
                1.0 / (d * math.sqrt(2 * math.pi)))
        else:
            psi = local.expected_surrogate(u, v_th)
        psi = psi.masked_fill_(x.abs_() >= self.threshold, 0.0)
        if self.track_stats:
            self._count(psi)
        return psi

    def nonzeros(self, u: Tensor, v_th: float) -> tuple[Tensor, Tensor]:
        """The neurons within B̃_th of the threshold and their ψ, the expected surrogate
        computed at those entries only (normal, p = 1; otherwise from ψ itself); counted
        as one call."""
        local = self.local
        if not (local.distribution == "normal" and local.p == 1):
            return super().nonzeros(u, v_th)
        x = (u.detach() - v_th).reshape(-1)
        index = (x.abs() < self.threshold).nonzero().squeeze(1)
        d = local.delta
        psi = x[index].square_().mul_(-0.5 / (d * d)).exp_().mul_(
            1.0 / (d * math.sqrt(2 * math.pi)))
        keep = psi != 0  # exp underflows to 0 far inside a huge threshold
        if not bool(keep.all()):
            index, psi = index[keep], psi[keep]
        if self.track_stats:
            self.add_counts(index.numel(), x.numel(), 1)
        return index, psi

    @classmethod
    def examples(cls) -> list[Surrogate]:
        return [cls(delta=0.5), cls(delta=0.4, distribution="laplace")]

    def expected(self, u: Tensor, v_th: float) -> Tensor:
        """E_z[ψ_LocalZO(u)] · 1{|u − V_th| < B̃_th} (the class docstring)."""
        keep = ((u.detach() - v_th).abs() < self.threshold).to(u.dtype)
        return self.local.expected_surrogate(u, v_th) * keep

    def primitive(self, u: Tensor, v_th: float) -> Tensor | None:
        """G(V_th + clamp(u − V_th, ±B̃_th)) with G LocalZO's smooth step (where it has one):
        its derivative is the expected surrogate inside the threshold and 0 outside."""
        x = (u - v_th).clamp(-self.threshold, self.threshold)
        return self.local.primitive(x + v_th, v_th)

    def config(self) -> dict:
        cfg = {k: v for k, v in self.local.config().items() if k != "name"}
        return {"name": self.name, **cfg, "threshold": self.threshold}


def make_localzo(**kwargs) -> LocalZOSurrogate:
    """Build a :class:`LocalZOSurrogate` from keyword arguments, e.g. a :meth:`config` dict.

    A ``name`` entry, if present, must be ``"localzo"`` and is dropped.
    """
    name = kwargs.pop("name", LocalZOSurrogate.name)
    if name != LocalZOSurrogate.name:
        raise ValueError(f"make_localzo builds {LocalZOSurrogate.name!r}, got name {name!r}")
    return LocalZOSurrogate(**kwargs)
