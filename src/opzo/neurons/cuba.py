"""Current-based LIF (CubaLIF): a synaptic current with its own decay feeds the membrane.

    i[t+1] = λ_s i[t] + I[t+1]                        (I[t+1] = W x[t+1] + b)
    u[t+1] = λ (u[t] − V_th s[t]) + i[t+1]            (subtractive reset; "zero": λ u (1 − s))
    s[t+1] = H(u[t+1] − V_th)

State: u, s and i. Default λ_s = 0.5. NIR's CubaLIF node is its continuous-time relative;
``opzo`` does not export it (:mod:`opzo.nir` refuses non-LIF neurons).

**Presynaptic trace** (OTTT, approximate OTPE). With the spikes and the reset held constant
(OTTT's approximation), ∂i[t]/∂W = λ_s ∂i[t−1]/∂W + x[t] and ∂u[t]/∂W = λ ∂u[t−1]/∂W +
∂i[t]/∂W, so ∂u[t]/∂W is the input through two leaky sums in cascade:

    ĉ[t] = λ_s ĉ[t−1] + x[t],    â[t] = λ â[t−1] + ĉ[t],    ∇W += δ[t]ᵀ â[t]

(bias: ĉ^b = λ_s ĉ^b + 1, b̂ = λ b̂ + ĉ^b), i.e. ``presynaptic_leaks = (λ_s, λ)``. With
λ_s = 0 it is LIF's â = λ â + x.

**Own path** (OSTL, OTPE): ∂u[t+1]/∂u[t] = λ(1 − V_th ψ[t]) as for LIF, but the synaptic
current is a second state between W and u, so ∂u/∂W is not the scalar recursion
ε = κ ε + x those traces keep per synapse: they refuse this neuron.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..registry import Option
from ..surrogate import Surrogate
from .base import NEURON_OPTIONS, LayerState, Neuron, check_common, fire, membrane_


@dataclass(frozen=True)
class CubaLIF(Neuron):
    """Membrane leak λ, threshold V_th, reset mode and the synaptic current's leak λ_s."""

    lam: float = 0.5
    v_th: float = 1.0
    reset: str = "subtract"
    syn_lam: float = 0.5

    name = "cuba"
    state_vars = ("u", "s", "i")
    options = (*NEURON_OPTIONS,
               Option("syn_lambda", 0.5, "neuron cuba: leak λ_s of the synaptic current",
                      min=0.0, max=1.0))
    own_path_unsupported = (
        "the cuba neuron's synaptic current i is a second state between the weights and the "
        "membrane (∂u/∂W needs ∂i/∂W as well), so the per-synapse eligibility ε = κ ε + x of "
        "OSTL / OTPE is not its gradient; use trace 'ottt' or 'approx_otpe' (or their f_ "
        "variants) with this neuron")

    def __post_init__(self) -> None:
        check_common(self.lam, self.v_th, self.reset)
        if not 0.0 <= self.syn_lam <= 1.0:
            raise ValueError(f"synaptic leak syn_lam must lie in [0, 1], got {self.syn_lam}")

    @classmethod
    def from_options(cls, *, syn_lambda: float = 0.5, **options: Any) -> CubaLIF:
        return super().from_options(**options, syn_lam=syn_lambda)  # type: ignore[return-value]

    def describe(self) -> str:
        return f"{super().describe()}, λ_s={self.syn_lam:g}"

    def step(self, state: LayerState, current: Tensor, surrogate: Surrogate,
             detach_reset: bool = False) -> LayerState:
        u, s, i = state["u"], state["s"], state["i"]
        fired = s.detach() if detach_reset else s
        i = self.syn_lam * i + current
        if self.reset == "subtract":
            u = self.lam * (u - self.v_th * fired) + i
        else:
            u = self.lam * u * (1.0 - fired) + i
        return {"u": u, "s": fire(u, self.v_th, surrogate), "i": i}

    def step_(self, state: LayerState, current: Tensor, scratch: bool = False) -> LayerState:
        u, s = state["u"], state["s"]
        if scratch:
            i = current.add_(state["i"], alpha=self.syn_lam)
        else:
            i = torch.add(current, state["i"], alpha=self.syn_lam)
        u_new = membrane_(i, u, s, self.lam, self.v_th, self.reset, scratch=False)  # i is state
        s_new = torch.gt(u_new, self.v_th, out=torch.empty_like(u_new))
        return {"u": u_new, "s": s_new, "i": i}

    @property
    def presynaptic_leaks(self) -> tuple[float, ...]:
        return (self.syn_lam, self.lam)
