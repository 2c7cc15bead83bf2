"""Instantaneous losses of online training and their output errors in closed form.

OTTT (Xiao et al. 2022) and the OPZO paper (appendix C.3.2) compute a loss at every time step
on the readout o[t]:

    L[t] = (1 − γ) · CE(o[t], y) + γ · MSE(o[t], onehot(y))

with CE the softmax cross-entropy and MSE the mean over the m classes of (o − onehot(y))².
The output error e = ∂L/∂o (OPZO paper section 4.1: "for CE ... σ(o) − y, for MSE o − y")
is written in closed form:

    ∂CE/∂o  = softmax(o) − onehot(y)
    ∂MSE/∂o = 2 (o − onehot(y)) / m
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_KINDS = ("ce", "mse", "mix")


class InstantLoss:
    """Per-sample instantaneous loss and its closed-form output error.

    ``kind``: ``"ce"`` (γ = 0), ``"mse"`` (γ = 1) or ``"mix"`` (the given γ, default 0.05
    as in OTTT's CIFAR setting).
    """

    def __init__(self, kind: str = "mix", gamma: float = 0.05) -> None:
        if kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss {kind!r}; choose one of {LOSS_KINDS}")
        if kind == "ce":
            gamma = 0.0
        elif kind == "mse":
            gamma = 1.0
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"loss mixing weight gamma must lie in [0, 1], got {gamma}")
        self.kind = kind
        self.gamma = float(gamma)

    def per_sample(self, o: Tensor, y: Tensor) -> Tensor:
        """L_b for every sample b of the batch: a (B,) tensor."""
        m = o.shape[-1]
        total = torch.zeros(o.shape[0], dtype=o.dtype, device=o.device)
        if self.gamma < 1.0:
            total = total + (1.0 - self.gamma) * F.cross_entropy(o, y, reduction="none")
        if self.gamma > 0.0:
            target = F.one_hot(y, m).to(o.dtype)
            total = total + self.gamma * (o - target).square().mean(dim=1)
        return total

    def error(self, o: Tensor, y: Tensor) -> Tensor:
        """e_b = ∂L_b/∂o_b in closed form, a (B, m) tensor (not divided by the batch size)."""
        m = o.shape[-1]
        target = F.one_hot(y, m).to(o.dtype)
        e = torch.zeros_like(o)
        if self.gamma < 1.0:
            e = e + (1.0 - self.gamma) * (torch.softmax(o, dim=1) - target)
        if self.gamma > 0.0:
            e = e + (2.0 * self.gamma / m) * (o - target)
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
            diff = o - target
            value.add_(diff.square().mean(dim=1), alpha=self.gamma)
            e.add_(diff, alpha=2.0 * self.gamma / m)
        return value, e

    def __repr__(self) -> str:
        return f"InstantLoss(kind={self.kind!r}, gamma={self.gamma})"
