"""Instantaneous losses of online training and their output errors in closed form.

OTTT (Xiao et al. 2022) and the OPZO paper (appendix C.3.2) compute a loss at every time step
on the readout o[t]:

    L[t] = (1 − γ) · CE(o[t], y) + γ · MSE(o[t], onehot(y))

with CE the softmax cross-entropy and MSE the mean over the m classes of (o − onehot(y))².
The output error e = ∂L/∂o (OPZO paper section 4.1: "for CE ... σ(o) − y, for MSE o − y")
is written in closed form:

    ∂CE/∂o  = softmax(o) − onehot(y)
    ∂MSE/∂o = 2 (o − onehot(y)) / m

TET (temporal efficient training, Deng et al. 2022, eqs. 8-10; the LocalZO paper's
"LocalZO + TET", section 5.1 and Table 7) is the same per-step form with the MSE term pulling
every output towards a constant φ instead of the one-hot target:

    L = (1/T) Σ_t [ (1 − λ) CE(o[t], y) + λ MSE(o[t], φ) ],   MSE(o, φ) = (1/m) Σ_c (o_c − φ)²

(TET's L_TET + its regulariser L_MSE, mixed as (1 − λ) L_TET + λ L_MSE; φ = V_th = 1 in TET's
code, λ_TET from the LocalZO paper's Table 7: 0.05 for CIFAR, DVS-Gesture, N-Caltech-101 and
N-CARS, 0.001 for ImageNet-100, 0.0001 for DVS-CIFAR10). Since it is a mean over the time
steps of a per-step loss, the online rules take its per-step error in closed form,

    ∂L[t]/∂o[t] = (1 − λ) (softmax(o[t]) − onehot(y)) + 2 λ (o[t] − φ) / m,

and BPTT its sum over t: both are exact, nothing of TET needs the whole sequence.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_KINDS = ("ce", "mse", "mix", "tet")


class InstantLoss:
    """Per-sample instantaneous loss and its closed-form output error.

    ``kind``: ``"ce"`` (γ = 0), ``"mse"`` (γ = 1), ``"mix"`` (the given γ, default 0.05
    as in OTTT's CIFAR setting) or ``"tet"`` (TET: weight ``tet_lambda`` = λ on the MSE
    towards the constant ``tet_phi`` = φ; ``gamma`` is not used). ``self.gamma`` is the MSE
    weight in every case, ``self.phi`` the MSE's constant target (None: one-hot(y)).
    """

    def __init__(self, kind: str = "mix", gamma: float = 0.05, *, tet_lambda: float = 0.05,
                 tet_phi: float = 1.0) -> None:
        if kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss {kind!r}; choose one of {LOSS_KINDS}")
        if kind == "ce":
            gamma = 0.0
        elif kind == "mse":
            gamma = 1.0
        elif kind == "tet":
            gamma = tet_lambda
        if not 0.0 <= gamma <= 1.0:
            what = "TET's lambda" if kind == "tet" else "loss mixing weight gamma"
            raise ValueError(f"{what} must lie in [0, 1], got {gamma}")
        if kind == "tet" and not math.isfinite(tet_phi):
            raise ValueError(f"TET's phi must be a finite number, got {tet_phi}")
        self.kind = kind
        self.gamma = float(gamma)
        self.phi: float | None = float(tet_phi) if kind == "tet" else None

    @classmethod
    def from_config(cls, cfg: Any) -> InstantLoss:
        """The loss of a :class:`~opzo.config.TrainConfig` (``loss``, ``gamma``,
        ``tet_lambda``, ``tet_phi``)."""
        return cls(cfg.loss, cfg.gamma, tet_lambda=getattr(cfg, "tet_lambda", 0.05),
                   tet_phi=getattr(cfg, "tet_phi", 1.0))

    def _mse_target(self, o: Tensor, y: Tensor, onehot: Tensor | None = None) -> Tensor | float:
        """What the MSE term pulls o towards: φ (TET) or onehot(y)."""
        if self.phi is not None:
            return self.phi
        return F.one_hot(y, o.shape[-1]).to(o.dtype) if onehot is None else onehot

    def per_sample(self, o: Tensor, y: Tensor) -> Tensor:
        """L_b for every sample b of the batch: a (B,) tensor."""
        total = torch.zeros(o.shape[0], dtype=o.dtype, device=o.device)
        if self.gamma < 1.0:
            total = total + (1.0 - self.gamma) * F.cross_entropy(o, y, reduction="none")
        if self.gamma > 0.0:
            total = total + self.gamma * (o - self._mse_target(o, y)).square().mean(dim=1)
        return total

    def error(self, o: Tensor, y: Tensor) -> Tensor:
        """e_b = ∂L_b/∂o_b in closed form, a (B, m) tensor (not divided by the batch size)."""
        m = o.shape[-1]
        target = F.one_hot(y, m).to(o.dtype)
        e = torch.zeros_like(o)
        if self.gamma < 1.0:
            e = e + (1.0 - self.gamma) * (torch.softmax(o, dim=1) - target)
        if self.gamma > 0.0:
            e = e + (2.0 * self.gamma / m) * (o - self._mse_target(o, y, target))
        return e

    def value_and_error(self, o: Tensor, target: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(L_b, e_b) together, sharing the softmax; ``target`` = onehot(y) in o's dtype."""
        m = o.shape[-1]
        if self.gamma < 1.0:
            logp = torch.log_softmax(o, dim=1)
            value = logp.gather(1, y[:, None]).squeeze(1).mul_(-(1.0 - self.gamma))
            e = logp.exp_().sub_(target).mul_(1.0 - self.gamma)
        else:
            value = o.new_zeros(o.shape[0])
            e = torch.zeros_like(o)
        if self.gamma > 0.0:
            diff = o - self._mse_target(o, y, target)
            value.add_(diff.square().mean(dim=1), alpha=self.gamma)
            e.add_(diff, alpha=2.0 * self.gamma / m)
        return value, e

    def __repr__(self) -> str:
        if self.phi is not None:
            return f"InstantLoss(kind='tet', tet_lambda={self.gamma}, tet_phi={self.phi})"
        return f"InstantLoss(kind={self.kind!r}, gamma={self.gamma})"


class MaxOverTime:
    """The max-over-time readout of the SpyTorch / SparseGrad framework, which the LocalZO
    paper's comparison follows (LocalZO paper, appendix B.2 and Table 8; Zenke & Vogels
    2021; Perez-Nieves & Goodman 2021): the output units are non-spiking leaky integrators
    of the readout currents o[t],

        Y[t] = λ_o · Y[t−1] + o[t],      Y[−1] = 0,

    the class scores are their maxima over time, score_c = max_t Y_c[t], the loss is taken
    once per sample on the scores and the predicted class is their argmax.

    Y is the same leaky sum as the F-variants' output (OTPE paper section 3.2). SparseGrad
    scales the input of its integrators by (1 − λ_o); that is a constant factor on the
    readout weights, left out here: at λ_o = 0.905 it shrinks the scores ten-fold, and with
    Adam's fixed step size the readout then needs ten times as many steps to reach the same
    scores (measured in ``benchmarks/run_localzo_fashion.py``'s docstring).

    The maximum needs the whole sequence, so this readout trains by BPTT only; the online
    rules keep the per-step loss on o[t] and the Σ_t o[t] classification.
    """

    def __init__(self, leak: float = 0.0) -> None:
        if not 0.0 <= leak < 1.0:
            raise ValueError(f"readout leak λ_o must lie in [0, 1), got {leak}")
        self.leak = float(leak)

    def scores(self, outputs: list[Tensor]) -> Tensor:
        """max_t Y[t] for the readout currents o[0..T−1], each (B, m): a (B, m) tensor
        (differentiable; the gradient reaches the o[t'] with t' ≤ the argmax step).

        The recurrence step by step on (B, m) tensors: T tiny operations, negligible next to
        the network's; the figures of RESULTS.md section 9 were computed in this order.
        """
        if not outputs:
            raise ValueError("MaxOverTime.scores needs at least one time step")
        y = best = None
        for o in outputs:
            y = o if y is None else self.leak * y + o
            best = y if best is None else torch.maximum(best, y)
        assert best is not None
        return best

    def __repr__(self) -> str:
        return f"MaxOverTime(leak={self.leak})"
