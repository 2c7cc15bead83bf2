"""The discrete leaky integrate-and-fire neuron (OPZO paper, section 3.1, eq. 1).

    u[t+1] = λ (u[t] − V_th s[t]) + I[t+1]          (subtractive reset, the paper's default)
    u[t+1] = λ u[t] (1 − s[t]) + I[t+1]              (reset to zero, for faithful NIR export)
    s[t+1] = H(u[t+1] − V_th)                        (a spike when u > V_th)

with I[t+1] = W s_in[t+1] + b the synaptic current. Defaults V_th = 1, λ = 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

RESET_MODES = ("subtract", "zero")


@dataclass(frozen=True)
class LIFParams:
    """Parameters of the discrete LIF neuron of eq. 1: leak λ, threshold V_th, reset mode."""

    lam: float = 0.5
    v_th: float = 1.0
    reset: str = "subtract"

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"LIF leak lam must lie in [0, 1], got {self.lam}")
        if not self.v_th > 0:
            raise ValueError(f"LIF threshold v_th must be > 0, got {self.v_th}")
        if self.reset not in RESET_MODES:
            raise ValueError(f"unknown reset mode {self.reset!r}; choose one of {RESET_MODES}")


def lif_step(u: Tensor, s: Tensor, current: Tensor, p: LIFParams,
             current_is_scratch: bool = False) -> tuple[Tensor, Tensor]:
    """One step of eq. 1: returns the new membrane potential and spikes ``(u[t+1], s[t+1])``.

    ``u`` and ``s`` are the previous potential and spikes, ``current`` is I[t+1]. With
    ``current_is_scratch`` the current's storage is reused for u[t+1] (no allocation).
    """
    if current_is_scratch:
        u_new = current.add_(u, alpha=p.lam)
    else:
        u_new = torch.add(current, u, alpha=p.lam)
    if p.reset == "subtract":
        u_new.sub_(s, alpha=p.lam * p.v_th)
    else:
        u_new.addcmul_(u, s, value=-p.lam)
    s_new = torch.gt(u_new, p.v_th, out=torch.empty_like(u_new))
    return u_new, s_new
