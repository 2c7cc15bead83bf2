"""One new part of each kind, as a contributor would write it outside the package, and the
lines that register them (tests/test_extension.py). This is the one place that says how a
part is added: when the way options or cost profiles are declared changes, only
:func:`register_toy_parts` (and the parts' declarations) change here.

What it assumes of today's mechanisms:

* a part declares its options (``options = (...)``: :class:`opzo.registry.Option`); a
  neuron's option of the same name as a field fills it (the base ``from_options``), and
  ``opzo train`` gets the flag (``--drive``);
* a rule is a ``SpatialRule`` class; a subclass of spatial BP inherits BP's cost profile,
  so ``opzo cost`` counts it;
* a trace is a ``Trace`` class (its ``f_`` form comes free); a surrogate a ``Surrogate``
  class with ``from_config``; a dataset a factory ``(cfg, split) -> Source`` with registry
  traits;
* each part supplies its conformance examples (``examples()``) and, where it documents
  them, ``Surrogate.expected`` / ``primitive``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from opzo.data import DATASETS
from opzo.data.sources import SequenceSource
from opzo.neurons import NEURONS
from opzo.neurons.base import NEURON_OPTIONS, LayerState, Neuron, Ops, check_common
from opzo.registry import Option
from opzo.rules import RULES, SpatialBP
from opzo.surrogate import SURROGATES, Surrogate
from opzo.traces import TRACES, OTTTTrace

# ------------------------------------------------------------------ a neuron with a parameter


@dataclass(frozen=True)
class DrivenLIF(Neuron):
    """LIF with a constant drive current c added at every step:
    u[t+1] = λ (u[t] − V_th s[t]) + I[t+1] + c (reset "zero": λ u (1 − s) + I + c)."""

    lam: float = 0.5
    v_th: float = 1.0
    reset: str = "subtract"
    drive: float = 0.1

    name = "driven-lif"
    options = (*NEURON_OPTIONS, Option("drive", 0.1, "driven-lif: the constant drive current c "
                                       "added at every step"))

    def __post_init__(self) -> None:
        check_common(self.lam, self.v_th, self.reset)

    @classmethod
    def examples(cls) -> list[Neuron]:
        return [cls(lam=0.6, drive=0.1), cls(lam=0.7, reset="zero", drive=-0.05)]

    def dynamics(self, state: LayerState, current: Tensor, ops: Ops) -> LayerState:
        u = ops.membrane(state["u"], state["s"], current + self.drive, self.lam, self.v_th,
                         self.reset)
        return {"u": u, "s": ops.fire(u, self.v_th)}

    def own_path_factor(self, u: Tensor, s: Tensor, psi: Tensor) -> Tensor:
        """The drive is a constant: LIF's κ = λ (1 − V_th ψ) or λ (1 − s − u ψ)."""
        if self.reset == "subtract":
            return psi.mul(-self.lam * self.v_th).add_(self.lam)
        return torch.addcmul(s, u, psi).neg_().add_(1.0).mul_(self.lam)


# -------------------------------------------------------------------------------- a rule


class SignSymmetricBP(SpatialBP):
    """Spatial BP with sign(W) in the backward pass (Liao, Leibo & Poggio 2016)."""

    name = "sign-bp"

    def feedback_weight(self, layer: Any) -> Tensor | None:
        return layer.op_weight().sign()


# --------------------------------------------------------------------------- a surrogate


class TriangleSurrogate(Surrogate):
    """ψ(u) = max(0, 1 − |u − V_th|/w) / w: a triangle of width 2w and area 1."""

    name = "triangle"

    def __init__(self, w: float = 0.5) -> None:
        if not w > 0:
            raise ValueError(f"triangle width w must be > 0, got {w}")
        self.w = float(w)

    @classmethod
    def examples(cls) -> list[Surrogate]:
        return [cls(), cls(w=1.3)]

    def __call__(self, u: Tensor, v_th: float) -> Tensor:
        return (1.0 - (u - v_th).abs() / self.w).clamp_min(0.0) / self.w

    def primitive(self, u: Tensor, v_th: float) -> Tensor:
        """0.5 + x/w − x|x|/(2w²) for x = u − V_th clamped to ±w (0 and 1 outside)."""
        x = (u - v_th).clamp(-self.w, self.w)
        return 0.5 + x / self.w - x * x.abs() / (2.0 * self.w ** 2)

    def config(self) -> dict:
        return {"name": self.name, "w": self.w}


# ------------------------------------------------------------------------------- a trace


class CountingOTTT(OTTTTrace):
    """OTTT's trace that counts the steps it recorded (a diagnostic variant)."""

    name = "counting-ottt"
    pushes = 0

    def push(self, *args: Any, **kwargs: Any) -> Any:
        type(self).pushes += 1
        return super().push(*args, **kwargs)


# ----------------------------------------------------------------------------- a dataset

XOR_STEPS = 4


def xor_source(cfg: Any, split: str) -> SequenceSource:
    """Noisy XOR as spike trains: inputs (a, b) ∈ {0, 1}², each a Bernoulli(0.1 + 0.8 a)
    spike per step on two input neurons; class a XOR b. 64 / 32 samples."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 64 if split == "train" else 32
    bits = torch.randint(0, 2, (n, 2), generator=g)
    p = (0.1 + 0.8 * bits.double()).expand(XOR_STEPS, n, 2)
    spikes = torch.bernoulli(p, generator=g).float()
    return SequenceSource(spikes, bits[:, 0] ^ bits[:, 1], 2)


# ------------------------------------------------------------------------ the registrations


def register_toy_parts() -> Callable[[], None]:
    """Register the five parts, one line each; returns the function that removes them."""
    NEURONS.register("driven-lif", DrivenLIF, "LIF with a constant drive current")
    RULES.register("sign-bp", SignSymmetricBP, "BP with sign(W) in the backward pass")
    SURROGATES.register("triangle", TriangleSurrogate, "a triangle of width 2w, area 1")
    TRACES.register("counting-ottt", CountingOTTT, "OTTT that counts its steps")
    DATASETS.register("xor", xor_source, "noisy XOR as spike trains", builtin=True,
                      events=True, vectors=True, steps=XOR_STEPS)

    def undo() -> None:
        for registry, name in ((NEURONS, "driven-lif"), (RULES, "sign-bp"),
                               (SURROGATES, "triangle"), (TRACES, "counting-ottt"),
                               (DATASETS, "xor")):
            if name in registry:
                registry.unregister(name)

    return undo


#: what each registration added, by kind (the names the CLI must now accept)
TOY_NAMES = {"neuron": "driven-lif", "method": "sign-bp", "surrogate": "triangle",
             "trace": "counting-ottt", "dataset": "xor"}
