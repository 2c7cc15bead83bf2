"""Temporal credit assignment: eligibility traces that turn per-step errors into gradients.

:class:`OTTTTrace` is OTTT's presynaptic trace (Xiao et al. 2022; OPZO paper section 3.1):

    â[t] = λ â[t−1] + x[t]          (x[t]: the input the synapse received at step t)
    ∇W  += δ[t]ᵀ â[t]               (δ[t] = ∂L[t]/∂u[t] of the postsynaptic layer, (B, n_out))
    ∇b  += b̂[t] Σ_batch δ[t],  b̂[t] = λ b̂[t−1] + 1   (the bias is a synapse from a constant 1)

This is the gradient of L[t] with respect to W through the leaky membrane of the same
neuron, with the reset and every earlier spike treated as constants. Memory is O(n): one
trace per synapse input, independent of T.

A static input (the same x at every step, as with direct-current encoding) has
â[t] = c_t x with c_t = b̂[t], so Σ_t δ[t]ᵀ â[t] = (Σ_t c_t δ[t])ᵀ x: the trace keeps the
(B, n_out) sum and does one weight-gradient product at :meth:`flush` instead of T.
"""

from __future__ import annotations

import torch
from torch import Tensor

TRACES = ("ottt",)


class OTTTTrace:
    """OTTT presynaptic trace of one synaptic layer (see the module docstring)."""

    def __init__(self, lam: float, static_input: bool = False) -> None:
        self.lam = float(lam)
        self.static_input = static_input
        self.reset()

    def reset(self) -> None:
        """Forget the past (start of a new sample batch)."""
        self.a: Tensor | None = None  # â[t], or the static input x
        self.c = 0.0  # b̂[t]
        self._delta_sum: Tensor | None = None  # Σ_t c_t δ[t] (static input only)

    def push(self, x: Tensor) -> None:
        """Record the synapse's input x[t]: â[t] = λ â[t−1] + x[t]."""
        self.c = self.lam * self.c + 1.0
        if self.static_input:
            if self.a is None:
                self.a = x
        elif self.a is None:
            self.a = x.clone()
        else:
            torch.add(x, self.a, alpha=self.lam, out=self.a)

    @property
    def value(self) -> Tensor:
        """â[t] (materialised for a static input)."""
        assert self.a is not None, "push() an input first"
        return self.a * self.c if self.static_input else self.a

    def accumulate(self, delta: Tensor, grad_w: Tensor, grad_b: Tensor | None) -> None:
        """∇W += δ[t]ᵀ â[t] and ∇b += b̂[t] Σ_batch δ[t]."""
        assert self.a is not None, "push() the step's input before accumulating"
        if self.static_input:
            if self._delta_sum is None:
                self._delta_sum = delta * self.c
            else:
                self._delta_sum.add_(delta, alpha=self.c)
            return
        grad_w.addmm_(delta.t(), self.a)
        if grad_b is not None:
            grad_b.add_(delta.sum(0), alpha=self.c)

    def flush(self, grad_w: Tensor, grad_b: Tensor | None) -> None:
        """Write what is still pending (static input: one GEMM for all steps so far)."""
        if self._delta_sum is not None:
            assert self.a is not None
            grad_w.addmm_(self._delta_sum.t(), self.a)
            if grad_b is not None:
                grad_b.add_(self._delta_sum.sum(0))
            self._delta_sum = None


def make_trace(name: str, lam: float, static_input: bool = False) -> OTTTTrace:
    """Build a temporal trace by name (``"ottt"``)."""
    if name != "ottt":
        raise ValueError(f"unknown temporal trace {name!r}; choose one of {TRACES}")
    return OTTTTrace(lam, static_input)
