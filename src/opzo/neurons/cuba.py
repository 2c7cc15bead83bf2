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

from torch import Tensor

from ..registry import Option
from .base import NEURON_OPTIONS, LayerState, Neuron, Ops, check_common


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
    def examples(cls) -> list[Neuron]:
        return [cls(lam=0.6, syn_lam=0.4), cls(lam=0.7, v_th=0.9, reset="zero", syn_lam=0.6)]

    @classmethod
    def from_options(cls, *, syn_lambda: float = 0.5, **options: Any) -> CubaLIF:
        return super().from_options(**options, syn_lam=syn_lambda)  # type: ignore[return-value]

    def describe(self) -> str:
        return f"{super().describe()}, λ_s={self.syn_lam:g}"

    def dynamics(self, state: LayerState, current: Tensor, ops: Ops) -> LayerState:
        i = ops.leak(state["i"], self.syn_lam, current)
        u = ops.membrane(state["u"], state["s"], i, self.lam, self.v_th, self.reset)
        return {"u": u, "s": ops.fire(u, self.v_th), "i": i}

    @property
    def presynaptic_leaks(self) -> tuple[float, ...]:
        return (self.syn_lam, self.lam)
