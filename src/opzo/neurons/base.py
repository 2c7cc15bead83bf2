"""The neuron seam: one object per neuron model that everything else asks.

A :class:`Neuron` holds a model's parameters and answers every question the network, BPTT,
the temporal traces and the rules have about it:

* **state layout** (:attr:`Neuron.state_vars`): the names of its per-layer state tensors,
  each (B, n) like the layer; always ``"u"`` (membrane potential) and ``"s"`` (last
  spikes) first, then the model's own (CubaLIF: ``"i"``, the synaptic current; ALIF:
  ``"a"``, the adaptation). :class:`~opzo.network.NetState` keeps any number of them.
* **its dynamics, written once** (:meth:`Neuron.dynamics`): one time step in terms of three
  primitives of an :class:`Ops` object (``leak``: λ x + input; ``membrane``: eq. 1's leak,
  reset and input; ``fire``: H(u − θ)). Both steps below run it:
* **a pure step** (:meth:`Neuron.step`): the dynamics on :class:`PureOps`, out-of-place
  torch ops with spikes through :func:`fire` (Heaviside forward, surrogate backward),
  differentiable by autograd; BPTT (:mod:`opzo.bptt`) and the tests' references use it.
* **a fast step** (:meth:`Neuron.step_`): the dynamics on :class:`InPlaceOps`, the same
  values with in-place ops, for the online learners' forward pass (outside autograd). The
  LIF neuron also has a native fused kernel (:attr:`Neuron.native`), which
  :meth:`~opzo.network.SpikingNet.step` uses when it can.
* **the threshold** (:meth:`Neuron.threshold`): the V_th the next step's spike compares
  with, a float or a (B, n) tensor (ALIF: it changes per neuron and step). Every local
  derivative ψ(u − V_th) uses it (:func:`surrogate_at`).
* **its own-path derivative** (:meth:`Neuron.own_path_factor`): κ[t+1] = ∂u[t+1]/∂u[t] along
  the neuron's own temporal path, for OSTL / OTPE's eligibility ε = κ ε + x. That recursion
  needs u to be the only state on the path from W to u; a model where it does not hold sets
  :attr:`Neuron.own_path_unsupported` to the reason, and those traces refuse it.
* **its presynaptic trace** (:attr:`Neuron.presynaptic_leaks`): OTTT's ∂u[t]/∂W with the
  spikes and the reset held constant is the input x filtered by a cascade of first-order
  leaky sums, â_k[t] = λ_k â_k[t−1] + â_{k−1}[t] (â_0 = x), whose leaks, from the input
  towards the membrane, this tuple gives; its last entry is the membrane leak λ.

A new model is one file with a subclass and one line in :data:`opzo.neurons.NEURONS`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..surrogate import Surrogate, spike_with_surrogate

RESET_MODES = ("subtract", "zero")

#: one layer's state: name -> (B, n) tensor (see :attr:`Neuron.state_vars`)
LayerState = dict[str, Tensor]
Threshold = float | Tensor


def fire(u: Tensor, v_th: Threshold, surrogate: Surrogate) -> Tensor:
    """s = H(u − V_th) with autograd derivative ψ(u − V_th); a tensor threshold is
    differentiated too (∂s/∂V_th = −ψ), a float one is a constant."""
    if isinstance(v_th, Tensor):
        return spike_with_surrogate(u - v_th, 0.0, surrogate)
    return spike_with_surrogate(u, v_th, surrogate)


def surrogate_at(surrogate: Surrogate, u: Tensor, v_th: Threshold) -> Tensor:
    """ψ(u − V_th) for a float or tensor threshold (a tensor one is passed as u − V_th
    against 0, so every surrogate, LocalZO's included, takes it unchanged)."""
    if isinstance(v_th, Tensor):
        return surrogate(u - v_th, 0.0)
    return surrogate(u, v_th)


def surrogate_grad_scaled(surrogate: Surrogate, g: Tensor, u: Tensor, v_th: Threshold
                          ) -> Tensor:
    """:meth:`Surrogate.grad_scaled` for a float or tensor threshold."""
    if isinstance(v_th, Tensor):
        return surrogate.grad_scaled(g, u - v_th, 0.0)
    return surrogate.grad_scaled(g, u, v_th)


def membrane_(inp: Tensor, u: Tensor, s: Tensor, lam: float, v_th: float, reset: str,
              scratch: bool) -> Tensor:
    """u[t+1] = inp + λ u[t] − λ V_th s[t] (reset "subtract") or − λ u[t] s[t] ("zero"): the
    membrane update of OPZO paper eq. 1, fed by ``inp`` (the synaptic current, or CubaLIF's
    filtered current). With ``scratch`` the result is written into ``inp``'s storage."""
    u_new = inp.add_(u, alpha=lam) if scratch else torch.add(inp, u, alpha=lam)
    if reset == "subtract":
        u_new.sub_(s, alpha=lam * v_th)
    else:
        u_new.addcmul_(u, s, value=-lam)
    return u_new


class Ops:
    """The primitives a neuron's :meth:`Neuron.dynamics` is written in. Two implementations
    give the same values: :class:`PureOps` (differentiable, for BPTT and references) and
    :class:`InPlaceOps` (in place, for the online forward pass)."""

    def leak(self, x: Tensor, lam: float, inp: Tensor) -> Tensor:
        """λ x + inp: a first-order leaky sum (a synaptic current, an adaptation)."""
        raise NotImplementedError

    def membrane(self, u: Tensor, s: Tensor, inp: Tensor, lam: float, v_th: float,
                 reset: str) -> Tensor:
        """u[t+1] = λ (u[t] − V_th s[t]) + inp (reset "subtract") or λ u[t] (1 − s[t]) + inp
        ("zero"): OPZO paper eq. 1's membrane update."""
        raise NotImplementedError

    def fire(self, u: Tensor, theta: Threshold) -> Tensor:
        """s = H(u − θ) as the membrane's dtype."""
        raise NotImplementedError


class PureOps(Ops):
    """Out-of-place ops, spikes through the surrogate (autograd differentiates them).
    ``detach_reset``: the spikes in the reset term are constants (SparseGrad's choice)."""

    __slots__ = ("detach_reset", "surrogate")

    def __init__(self, surrogate: Surrogate, detach_reset: bool = False) -> None:
        self.surrogate = surrogate
        self.detach_reset = detach_reset

    def leak(self, x: Tensor, lam: float, inp: Tensor) -> Tensor:
        return lam * x + inp

    def membrane(self, u: Tensor, s: Tensor, inp: Tensor, lam: float, v_th: float,
                 reset: str) -> Tensor:
        fired = s.detach() if self.detach_reset else s
        if reset == "subtract":
            return lam * (u - v_th * fired) + inp
        return lam * u * (1.0 - fired) + inp

    def fire(self, u: Tensor, theta: Threshold) -> Tensor:
        return fire(u, theta, self.surrogate)


class InPlaceOps(Ops):
    """In-place ops outside autograd. ``current``: the step's synaptic current; with
    ``scratch`` its storage may hold the first result computed from it (afterwards that
    result is state, and the ops allocate)."""

    __slots__ = ("current", "scratch")

    def __init__(self, current: Tensor, scratch: bool = False) -> None:
        self.current: Tensor | None = current
        self.scratch = scratch

    def _reuse(self, inp: Tensor) -> bool:
        """Whether ``inp``'s storage may take the result (then it no longer may)."""
        if self.scratch and inp is self.current:
            self.current = None
            return True
        return False

    def leak(self, x: Tensor, lam: float, inp: Tensor) -> Tensor:
        return inp.add_(x, alpha=lam) if self._reuse(inp) else torch.add(inp, x, alpha=lam)

    def membrane(self, u: Tensor, s: Tensor, inp: Tensor, lam: float, v_th: float,
                 reset: str) -> Tensor:
        return membrane_(inp, u, s, lam, v_th, reset, self._reuse(inp))

    def fire(self, u: Tensor, theta: Threshold) -> Tensor:
        return torch.gt(u, theta, out=torch.empty_like(u))


def check_common(lam: float, v_th: float, reset: str) -> None:
    """Validate the parameters every model has: leak λ, threshold V_th, reset mode."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"membrane leak lam must lie in [0, 1], got {lam}")
    if not v_th > 0:
        raise ValueError(f"threshold v_th must be > 0, got {v_th}")
    if reset not in RESET_MODES:
        raise ValueError(f"unknown reset mode {reset!r}; choose one of {RESET_MODES}")


class Neuron:
    """The interface of a neuron model (see the module docstring). Subclasses are frozen
    dataclasses with at least ``lam`` (membrane leak λ), ``v_th`` (base threshold) and
    ``reset`` ("subtract" or "zero")."""

    name: ClassVar[str] = "neuron"
    #: per-layer state variables; "u" and "s" first
    state_vars: ClassVar[tuple[str, ...]] = ("u", "s")
    #: whether the native fused LIF kernel computes this model's step
    native: ClassVar[bool] = False
    #: why OSTL / OTPE's scalar eligibility does not hold for this model (None: it holds)
    own_path_unsupported: ClassVar[str | None] = None

    lam: float
    v_th: float
    reset: str

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_options(cls, **options: Any) -> Neuron:
        """Build from the training options (``lam``, ``v_th``, ``reset`` and the model's
        own, e.g. ``syn_lambda``); options another model uses are ignored."""
        raise NotImplementedError

    @classmethod
    def examples(cls) -> list[Neuron]:
        """A few small, differing parameter sets of this model, for the conformance tests
        (``tests/test_conformance.py``): both reset modes and non-default leaks, so that
        every term of the dynamics matters. Default: the model with its defaults."""
        return [cls()]

    def describe(self) -> str:
        """One line with the model and its parameters."""
        return f"{self.name} neuron, λ={self.lam:g}, V_th={self.v_th:g}, reset {self.reset}"

    # -- state -----------------------------------------------------------------------------
    def initial_state(self, batch: int, n: int, like: Tensor) -> LayerState:
        """Every state variable at rest (zeros), (batch, n) like ``like``."""
        u = like.new_zeros(batch, n)
        return {"u": u, **{k: u.clone() for k in self.state_vars[1:]}}

    def threshold(self, state: LayerState) -> Threshold:
        """V_th of the next step's spike given the layer's state before the step."""
        return self.v_th

    # -- dynamics --------------------------------------------------------------------------
    def dynamics(self, state: LayerState, current: Tensor, ops: Ops) -> LayerState:
        """One time step from ``state`` with synaptic input ``current`` (I[t+1] = W x[t+1] +
        b), written once in ``ops``' primitives; returns the new state (every name of
        :attr:`state_vars`). :meth:`step` and :meth:`step_` run it; a model may instead
        override both."""
        raise NotImplementedError(f"{type(self).__name__} writes neither dynamics() nor "
                                  "step() / step_()")

    def step(self, state: LayerState, current: Tensor, surrogate: Surrogate,
             detach_reset: bool = False) -> LayerState:
        """One pure, differentiable step from ``state`` with synaptic input ``current``
        (I[t+1] = W x[t+1] + b); returns the new state. ``detach_reset``: the spikes in the
        reset term are constants (SparseGrad's choice). :meth:`dynamics` on
        :class:`PureOps`."""
        return self.dynamics(state, current, PureOps(surrogate, detach_reset))

    def step_(self, state: LayerState, current: Tensor, scratch: bool = False) -> LayerState:
        """The same step's values with in-place ops (outside autograd); ``scratch``: the
        current's storage may be reused. Returns the new state (the old tensors are left
        as they were: step records keep them). :meth:`dynamics` on :class:`InPlaceOps`."""
        return self.dynamics(state, current, InPlaceOps(current, scratch))

    # -- learning --------------------------------------------------------------------------
    @property
    def presynaptic_leaks(self) -> tuple[float, ...]:
        """The filter cascade of OTTT's presynaptic trace, input first, membrane leak last."""
        return (self.lam,)

    def own_path_factor(self, u: Tensor, s: Tensor, psi: Tensor) -> Tensor:
        """κ[t+1] = ∂u[t+1]/∂u[t] along the own path, with ∂s[t]/∂u[t] = ψ[t]."""
        raise ValueError(self.own_path_unsupported or f"{self.name}: no own-path derivative")
