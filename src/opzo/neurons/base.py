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
  LIF neuron also has a native fused kernel (:meth:`Neuron.uses_native_kernel`), which
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

**Capabilities** are the model's own answers, never looked up by its name:
:meth:`Neuron.uses_native_kernel` (the fused LIF kernel computes its step),
:meth:`Neuron.exports_to_nir` (NIR's LIF / IF node is its model, :mod:`opzo.nir`),
:meth:`Neuron.supports_untruncated_pzo` (:mod:`opzo.pzo`'s recursion is its gradient) and
:meth:`Neuron.own_path_problem` (OSTL / OTPE). A capability declared for a model's dynamics
is not inherited by a subclass that changes them (:func:`same_dynamics`): a LIF subclass
with its own step runs its own step, not LIF's kernel.

A new model is one file with a subclass and one line in :data:`opzo.neurons.NEURONS`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..registry import Option
from ..surrogate import Surrogate, spike_with_surrogate

RESET_MODES = ("subtract", "zero")

#: the options every neuron model reads (its own come after them in its ``options``);
#: ``leak`` is the model-neutral name of ``lif_lambda`` (the key of the runs before it)
NEURON_OPTIONS: tuple[Option, ...] = (
    Option("lif_lambda", 0.5, "membrane leak λ of the neuron (every model)",
           min=0.0, max=1.0, aliases=("leak",)),
    Option("v_th", 1.0, "firing threshold V_th", min=1e-9),
    Option("reset", "subtract", "reset after a spike", choices=RESET_MODES),
)

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


#: what makes up a model's dynamics: a subclass that overrides any of them is another model
DYNAMICS = ("state_vars", "initial_state", "threshold", "dynamics", "step", "step_",
            "presynaptic_leaks", "own_path_factor")


def _defined_by(cls: type, attr: str) -> type:
    """The class of ``cls``'s MRO whose body defines ``attr``."""
    return next(k for k in cls.__mro__ if attr in vars(k))


def same_dynamics(neuron: Neuron, model: type[Neuron]) -> bool:
    """Whether ``neuron`` computes exactly ``model``'s dynamics: an instance of ``model`` whose
    class overrides none of :data:`DYNAMICS` (a subclass that only adds a description or an
    option keeps them; one with its own step is another model)."""
    return _same_dynamics(type(neuron), model)


@functools.cache
def _same_dynamics(cls: type, model: type) -> bool:
    """:func:`same_dynamics` by class (asked at every step of the network: cached)."""
    return issubclass(cls, model) and all(_defined_by(cls, a) is _defined_by(model, a)
                                          for a in DYNAMICS)


class Neuron:
    """The interface of a neuron model (see the module docstring). Subclasses are frozen
    dataclasses with at least ``lam`` (membrane leak λ), ``v_th`` (base threshold) and
    ``reset`` ("subtract" or "zero")."""

    name: ClassVar[str] = "neuron"
    #: per-layer state variables; "u" and "s" first
    state_vars: ClassVar[tuple[str, ...]] = ("u", "s")
    #: why OSTL / OTPE's scalar eligibility does not hold for this model (None: it holds)
    own_path_unsupported: ClassVar[str | None] = None
    #: the options the model reads (CLI flags, config keys): the common ones, then its own
    options: ClassVar[tuple[Option, ...]] = NEURON_OPTIONS

    lam: float
    v_th: float
    reset: str

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_options(cls, **options: Any) -> Neuron:
        """Build from the values of the training options (:attr:`options`): each field of
        the model takes the option of its name, ``lam`` the membrane leak ``lif_lambda`` (or
        ``lam``); options another model reads are ignored. A model whose fields are named
        otherwise than its options maps them in its own ``from_options``."""
        values = dict(options)
        leak = values.pop("lif_lambda", None)
        if leak is not None:
            values.setdefault("lam", leak)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in values.items() if k in names})

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

    # -- capabilities (declared by the model; see the module docstring) -------------------
    def uses_native_kernel(self) -> bool:
        """Whether the native fused LIF kernel (:func:`opzo.native.lif_step`) computes this
        model's step exactly. Only LIF's dynamics (:func:`same_dynamics`) answer True."""
        return False

    def exports_to_nir(self) -> bool:
        """Whether NIR's LIF / IF node is this model (:func:`opzo.nir.to_nir`)."""
        return False

    def supports_untruncated_pzo(self) -> bool:
        """Whether :mod:`opzo.pzo`'s recursion (derived for eq. 1's leak and reset) is this
        model's gradient."""
        return False

    def own_path_problem(self) -> str | None:
        """Why OSTL / OTPE's scalar eligibility ε = κ ε + x is not this model's gradient, or
        None when it is: :attr:`own_path_unsupported`, else a reason when the class's
        :meth:`own_path_factor` was written for other dynamics than its own (inherited from
        a parent whose step it overrides) or is not written at all."""
        if self.own_path_unsupported is not None:
            return self.own_path_unsupported
        cls = type(self)
        factor = _defined_by(cls, "own_path_factor")
        stale = [a for a in ("step", "step_", "threshold")
                 if not issubclass(factor, _defined_by(cls, a))]
        if factor is Neuron or stale:
            return (f"the {self.name} neuron ({cls.__name__}) has no own-path derivative "
                    f"κ = ∂u[t+1]/∂u[t] written for its own dynamics (own_path_factor comes "
                    f"from {factor.__name__}), so OSTL / OTPE cannot use it; use trace "
                    "'ottt' or 'approx_otpe' (or their f_ variants), or write its "
                    "own_path_factor")
        return None
