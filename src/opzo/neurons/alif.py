"""Adaptive-threshold LIF (ALIF): a threshold that rises with each spike and decays.

    θ[t] = V_th + β a[t]                               (the threshold of step t+1's spike)
    u[t+1] = λ (u[t] − V_th s[t]) + I[t+1]             (subtractive reset by the base V_th,
                                                        as in Bellec et al.'s LSNN; "zero":
                                                        λ u (1 − s))
    s[t+1] = H(u[t+1] − θ[t])
    a[t+1] = λ_a a[t] + s[t+1]

State: u, s and a. Defaults β = 0.2, λ_a = 0.9. The threshold is a (B, n) tensor per step:
every local derivative is ψ(u[t] − θ[t−1]); BPTT differentiates through θ too.

**Presynaptic trace** (OTTT, approximate OTPE): with the spikes, the reset and the threshold
held constant, ∂u[t]/∂W = λ ∂u[t−1]/∂W + x[t], LIF's â = λ â + x.

**Own path** (OSTL, OTPE): the adaptation a is a second state on the neuron's own path from
W to its spikes (∂s[t]/∂W has a term −β ψ ∂a[t−1]/∂W), so the scalar eligibility
ε = κ ε + x is not OSTL's exact diagonal RTRL here: those traces refuse this neuron.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..registry import Option
from .base import NEURON_OPTIONS, LayerState, Neuron, Ops, Threshold, check_common


@dataclass(frozen=True)
class ALIF(Neuron):
    """Membrane leak λ, base threshold V_th, reset mode, adaptation strength β and leak λ_a."""

    lam: float = 0.5
    v_th: float = 1.0
    reset: str = "subtract"
    beta: float = 0.2
    adapt_lam: float = 0.9

    name = "alif"
    state_vars = ("u", "s", "a")
    options = (*NEURON_OPTIONS,
               Option("adapt_beta", 0.2, "neuron alif: threshold increase β per unit of "
                      "adaptation", min=0.0),
               Option("adapt_lambda", 0.9, "neuron alif: leak λ_a of the adaptation",
                      min=0.0, max=1.0))
    own_path_unsupported = (
        "the alif neuron's threshold V_th + β a depends on its past spikes, a second state on "
        "its own path from the weights to its spikes, so the per-synapse eligibility "
        "ε = κ ε + x of OSTL / OTPE is not its gradient; use trace 'ottt' or 'approx_otpe' "
        "(or their f_ variants) with this neuron")

    def __post_init__(self) -> None:
        check_common(self.lam, self.v_th, self.reset)
        if not self.beta >= 0:
            raise ValueError(f"adaptation strength beta must be >= 0, got {self.beta}")
        if not 0.0 <= self.adapt_lam <= 1.0:
            raise ValueError(f"adaptation leak adapt_lam must lie in [0, 1], got "
                             f"{self.adapt_lam}")

    @classmethod
    def examples(cls) -> list[Neuron]:
        return [cls(lam=0.7, beta=0.5, adapt_lam=0.8),
                cls(lam=0.6, v_th=0.9, reset="zero", beta=0.3, adapt_lam=0.5)]

    @classmethod
    def from_options(cls, *, adapt_beta: float = 0.2, adapt_lambda: float = 0.9,
                     **options: Any) -> ALIF:
        return super().from_options(**options, beta=adapt_beta,  # type: ignore[return-value]
                                    adapt_lam=adapt_lambda)

    def describe(self) -> str:
        return f"{super().describe()}, β={self.beta:g}, λ_a={self.adapt_lam:g}"

    def threshold(self, state: LayerState) -> Threshold:
        return self.v_th + self.beta * state["a"]

    def dynamics(self, state: LayerState, current: Tensor, ops: Ops) -> LayerState:
        theta = self.threshold(state)
        u = ops.membrane(state["u"], state["s"], current, self.lam, self.v_th, self.reset)
        s = ops.fire(u, theta)
        return {"u": u, "s": s, "a": ops.leak(state["a"], self.adapt_lam, s)}
