"""The discrete leaky integrate-and-fire neuron (OPZO paper, section 3.1, eq. 1).

    u[t+1] = λ (u[t] − V_th s[t]) + I[t+1]          (subtractive reset, the paper's default)
    u[t+1] = λ u[t] (1 − s[t]) + I[t+1]              (reset to zero, exact in NIR)
    s[t+1] = H(u[t+1] − V_th)                        (a spike when u > V_th)

with I[t+1] = W s_in[t+1] + b the synaptic current. Defaults V_th = 1, λ = 0.5. State: u, s.
Own path: κ = λ (1 − V_th ψ) (subtractive) or λ (1 − s − u ψ) (zero); presynaptic trace
â = λ â + x. The network runs it on the native fused kernel where it can.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..deprecation import warn_renamed
from .base import RESET_MODES, InPlaceOps, LayerState, Neuron, Ops, check_common, same_dynamics

__all__ = ["LIF", "RESET_MODES", "lif_step"]


@dataclass(frozen=True)
class LIF(Neuron):
    """Parameters of the discrete LIF neuron of eq. 1: leak λ, threshold V_th, reset mode."""

    lam: float = 0.5
    v_th: float = 1.0
    reset: str = "subtract"

    name = "lif"

    def __post_init__(self) -> None:
        check_common(self.lam, self.v_th, self.reset)

    @classmethod
    def examples(cls) -> list[Neuron]:
        return [cls(lam=0.6), cls(lam=0.8, v_th=0.9, reset="zero")]

    def dynamics(self, state: LayerState, current: Tensor, ops: Ops) -> LayerState:
        u = ops.membrane(state["u"], state["s"], current, self.lam, self.v_th, self.reset)
        return {"u": u, "s": ops.fire(u, self.v_th)}

    # -- capabilities: they hold for eq. 1 itself, not for a subclass with other dynamics ---
    def uses_native_kernel(self) -> bool:
        """The fused kernel computes eq. 1 with either reset, any λ and V_th."""
        return same_dynamics(self, LIF) and self.reset in RESET_MODES

    def exports_to_nir(self) -> bool:
        return same_dynamics(self, LIF)

    def supports_untruncated_pzo(self) -> bool:
        return same_dynamics(self, LIF)

    def own_path_factor(self, u: Tensor, s: Tensor, psi: Tensor) -> Tensor:
        """Subtractive reset u[t+1] = λ(u[t] − V_th s[t]) + I[t+1]:   κ = λ (1 − V_th ψ[t]).
        Reset to zero    u[t+1] = λ u[t] (1 − s[t]) + I[t+1]:      κ = λ (1 − s[t] − u[t] ψ[t])."""
        if self.reset == "subtract":
            return psi.mul(-self.lam * self.v_th).add_(self.lam)
        return torch.addcmul(s, u, psi).neg_().add_(1.0).mul_(self.lam)


def __getattr__(name: str) -> object:
    """``LIFParams``: the LIF neuron's old name (it was a parameter record before the neuron
    seam); warns once, then is :class:`LIF`."""
    if name == "LIFParams":
        warn_renamed("opzo.neurons.LIFParams", "opzo.neurons.LIF")
        return LIF
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def lif_step(u: Tensor, s: Tensor, current: Tensor, p: LIF,
             current_is_scratch: bool = False) -> tuple[Tensor, Tensor]:
    """One step of eq. 1: returns the new membrane potential and spikes ``(u[t+1], s[t+1])``.

    ``u`` and ``s`` are the previous potential and spikes, ``current`` is I[t+1]. With
    ``current_is_scratch`` the current's storage is reused for u[t+1] (no allocation).
    """
    new = p.dynamics({"u": u, "s": s}, current, InPlaceOps(current, current_is_scratch))
    return new["u"], new["s"]
