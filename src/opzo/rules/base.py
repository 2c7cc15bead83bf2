"""Spatial credit assignment: the interface every rule implements, and node perturbation.

At every time step t the learner runs one forward step, computes the output error
e[t] = ∂L[t]/∂o[t] in closed form, and asks the rule for δ_l[t] = ∂L[t]/∂u_l[t] of every
hidden layer l (the "spatial credit"). Each rule estimates the error g_l at what layer l
delivered (its spikes after noise and dropout) and multiplies it by the local derivative
m_l ⊙ ψ(u_l) (OPZO paper eq. 7), except BP, which propagates δ layer by layer.

Rules never touch the model's parameters: they only return δ's; the learner turns them into
``.grad`` with the temporal traces. A rule's own state (feedback matrices, their optimizers)
lives in the rule and is saved with :meth:`SpatialRule.state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..distributed import Shard
from ..losses import InstantLoss
from ..network import SpikingNet, StepRecord
from ..neurons.base import surrogate_grad_scaled
from ..registry import Option, Options
from .noise import NoiseSampler, Perturbed
from .profile import CostProfile


@dataclass
class StepContext:
    """Everything a rule may read at one time step.

    ``error``: e[t] of the batch-and-time-mean loss, i.e. ∂L_b[t]/∂o / (B·T), shape (B, m);
    ``loss``: L_b[t] / (B·T) per sample, shape (B,); ``output``: õ[t] (with the noise).
    ``labels`` (B,), ``target`` (one-hot, (B, m)), ``loss_fn`` and ``scale`` = 1/(B·T) let a
    rule compute further losses of its own (local learning's readouts).

    Data parallel (:mod:`opzo.distributed`): the tensors hold this process's rows of the
    batch, B in ``scale`` is the global batch ``batch_total``, and ``reduce`` sums a tensor
    over all processes in place (a rule whose state is a batch statistic, OPZO's M, sums its
    increment with it); ``reduce`` is None in a single process.
    """

    t: int
    T: int
    output: Tensor
    error: Tensor
    loss: Tensor
    record: StepRecord
    net: SpikingNet
    target: Tensor | None = None
    labels: Tensor | None = None
    loss_fn: InstantLoss | None = None
    scale: float = 1.0
    batch_total: int | None = None
    reduce: Callable[[Tensor], None] | None = None

    @property
    def global_batch(self) -> int:
        """B of the batch mean: the global batch (all processes), else this batch's rows."""
        return self.batch_total if self.batch_total is not None else int(self.output.shape[0])


class SpatialRule(Perturbed):
    """Base class of spatial credit rules (see the module docstring)."""

    name = "rule"
    #: the perturbation injected in the forward pass, or None for a noise-free rule
    noise: NoiseSampler | None = None
    #: the options it reads (CLI flags, config keys; merged by :mod:`opzo.config`)
    options: tuple[Option, ...] = ()
    #: how the rule's feedback reaches a layer, what it stores and learns, for
    #: :func:`opzo.cost.learning_cost`; None: the rule has no cost model
    cost_profile: CostProfile | None = None

    @classmethod
    def examples(cls) -> list[SpatialRule]:
        """Small instances for the conformance tests (``tests/test_conformance.py``);
        default: the rule with its defaults. Each call makes new objects."""
        return [cls()]

    @classmethod
    def from_config(cls, cfg: Options) -> SpatialRule:
        """The rule with the values of its :attr:`options` (``cfg.<name>``; a rule may also
        read the run's common options, e.g. ``weight_decay``); rules without options take
        none. Registered in :data:`opzo.rules.RULES`."""
        return cls()

    def bind(self, net: SpikingNet) -> None:
        """Allocate state for ``net`` (called once, before the first step)."""
        self.sizes = list(net.hidden_sizes)
        self.num_outputs = net.num_outputs

    def is_bound_to(self, net: SpikingNet) -> bool:
        """True when the rule already holds state shaped for ``net`` (e.g. a deep copy)."""
        return (getattr(self, "sizes", None) == list(net.hidden_sizes)
                and getattr(self, "num_outputs", None) == net.num_outputs)

    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable tensors the rule owns besides the model (local readouts); the model's
        optimizer must hold them too. None for the plain rules."""
        return []

    def deltas(self, ctx: StepContext) -> list[Tensor]:
        """δ_l[t] = ∂L/∂u_l estimated by the rule, one (B, n_l) tensor per hidden layer."""
        raise NotImplementedError

    def optimizer_step(self) -> None:
        """Called when the model's optimizer steps (rules with learned feedback update it)."""

    def freeze_feedback(self, frozen: bool) -> None:
        """Stop (or resume) learning the rule's feedback (OPZO's M; OPZO paper Table 9's
        ablation). A no-op for rules with fixed or no feedback."""

    def feedback_grads(self) -> list[Tensor]:
        """Gradients of the rule's own learned feedback (DKP), which data-parallel training
        sums over processes before :meth:`optimizer_step` like the model's gradients."""
        return []

    @staticmethod
    def apply_local_derivative(ctx: StepContext, g: list[Tensor]) -> list[Tensor]:
        """δ_l = g_l ⊙ m_l ⊙ ψ(u_l): error at the output times the local derivative."""
        return [local_delta(ctx.record, l, gl) for l, gl in enumerate(g)]


def local_delta(rec: StepRecord, l: int, g: Tensor) -> Tensor:
    """δ_l = g ⊙ m_l ⊙ D_l[t]: an error g at layer l's output x_l taken to its potential u_l,
    the local factor of the three-factor update (OPZO paper eq. 7).

    D_l[t] is, in this order: the temporal trace's local derivative where it gives one
    (``rec.derivatives``, e.g. OTPE's ḡ); else m_l ⊙ ψ(u_l[t]) as the fused native step
    computed it (``rec.dpsi``); else ψ(u_l[t]) of the network's surrogate, evaluated here at
    the threshold the spikes were compared with (with m_l · gain folded into g, precomputed
    per batch in ``rec.gains`` where available).
    """
    d = rec.derivatives[l] if rec.derivatives is not None else None
    if d is not None:
        return (g if rec.masks is None else g * rec.masks[l]) * d
    dp = rec.dpsi[l] if rec.dpsi is not None else None
    if dp is not None:
        return g * dp
    if rec.gains is not None:
        g = g * rec.gains[l]
    else:
        gain = rec.surrogate.gain()
        if rec.masks is not None:
            g = g * rec.masks[l]
        if gain != 1.0:
            g = g * gain
    return surrogate_grad_scaled(rec.surrogate, g, rec.u[l], rec.threshold(l))


class WrappingRule(SpatialRule):
    """A rule around another rule (``inner``), as :class:`~opzo.rules.LocalLearning` is: every
    hook of :class:`SpatialRule` and of its noise (:class:`~opzo.rules.noise.Perturbed`) is
    forwarded to ``inner`` and to the wrapper's :meth:`companions` (further rules it runs
    itself, e.g. IGL's copy of the inner rule), so a subclass writes only what it adds:
    its ``deltas`` (default: the inner rule's), its own ``bind`` / ``parameters`` /
    state after calling these.

    The perturbation is the inner rule's (``noise`` is the inner rule's sampler; companions
    take a view of it themselves); the state dict is ``{"inner": ..., **own_state()}``.
    """

    def __init__(self, inner: SpatialRule) -> None:
        self.inner = inner
        self.noise = inner.noise

    def companions(self) -> list[SpatialRule]:
        """Rules the wrapper runs besides ``inner`` (their hooks are forwarded too)."""
        return []

    def _all(self) -> list[SpatialRule]:
        return [self.inner, *self.companions()]

    def bind(self, net: SpikingNet) -> None:
        """Sizes of ``net``, and the inner rule bound to it (unless it already is)."""
        super().bind(net)
        if not self.inner.is_bound_to(net):
            self.inner.bind(net)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for r in self._all() for p in r.parameters()]

    def deltas(self, ctx: StepContext) -> list[Tensor]:
        return self.inner.deltas(ctx)

    def start_batch(self) -> None:
        for r in self._all():
            r.start_batch()

    def perturbation(self, t: int, batch: int, like: Tensor, shard: Shard | None = None
                     ) -> list[Tensor] | None:
        if shard is None:
            return self.inner.perturbation(t, batch, like)
        return self.inner.perturbation(t, batch, like, shard)

    def set_progress(self, fraction: float) -> None:
        for r in self._all():
            r.set_progress(fraction)

    def freeze_feedback(self, frozen: bool) -> None:
        for r in self._all():
            r.freeze_feedback(frozen)

    def optimizer_step(self) -> None:
        for r in self._all():
            r.optimizer_step()

    def feedback_grads(self) -> list[Tensor]:
        return [g for r in self._all() for g in r.feedback_grads()]

    def own_state(self) -> dict:
        """The wrapper's own state (besides the inner rule's) for :meth:`state_dict`."""
        return {}

    def load_own_state(self, state: dict) -> None:
        """Restore what :meth:`own_state` gave (``state`` is the whole state dict)."""

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), **self.own_state()}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        self.load_own_state(state)
