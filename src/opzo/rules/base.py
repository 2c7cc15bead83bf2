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

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import native
from ..distributed import Shard
from ..losses import InstantLoss
from ..network import NOISE_POSITIONS, SpikingNet, StepRecord

NOISE_DISTRIBUTIONS = ("gaussian", "rademacher", "sphere")
#: where the noise comes from: the native Philox kernels or torch's generator
NOISE_RNGS = ("philox", "torch")


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


class SpatialRule:
    """Base class of spatial credit rules (see the module docstring)."""

    name = "rule"
    #: the perturbation injected in the forward pass, or None for a noise-free rule
    noise: NoiseSampler | None = None

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

    def start_batch(self) -> None:
        """A new batch begins (membrane state and traces were reset)."""
        if self.noise is not None:
            self.noise.reset()

    def perturbation(self, t: int, batch: int, like: Tensor, shard: Shard | None = None
                     ) -> list[Tensor] | None:
        """z_l[t] per hidden layer for this step (to be scaled by ``noise.alpha``), or None.
        With ``shard`` the draw is for the global batch and these are its rows."""
        if self.noise is None:
            return None
        if shard is None:
            return self.noise.sample(t, batch, self.sizes, like)
        return self.noise.sample(t, batch, self.sizes, like, shard)

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

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1] (for schedules such as the α decay)."""
        if self.noise is not None:
            self.noise.set_progress(fraction)

    def state_dict(self) -> dict:
        return {"noise": self.noise.state_dict() if self.noise is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.noise is not None and state.get("noise") is not None:
            self.noise.load_state_dict(state["noise"])

    @staticmethod
    def apply_local_derivative(ctx: StepContext, g: list[Tensor]) -> list[Tensor]:
        """δ_l = g_l ⊙ m_l ⊙ ψ(u_l): error at the output times the local derivative."""
        return [ctx.record.local_grad(l, gl) for l, gl in enumerate(g)]


class NoiseSampler:
    """Node perturbation α z_l[t] for every hidden layer (OPZO paper sections 4.4 and C.2).

    * ``distribution``: ``gaussian`` N(0, 1); ``rademacher`` ±1 (drawn as random bits, 32 per
      random word: about a third of a Gaussian draw's time); ``sphere`` uniform on the
      sphere of radius √n per sample and layer, so every component has unit variance.
    * ``position``: ``after`` the neuron (added to the spikes) or ``before`` it (added to the
      synaptic current, i.e. the membrane potential).
    * ``antithetic``: z[t] = −z[t−1] on every second step (t = 1, 3, 5, …).
    * ``alpha`` fixed, or decayed linearly from ``alpha`` to ``alpha_final`` over training.
    * ``rng``: where the random numbers come from: ``philox``, the native Philox4x32-10
      kernels of :mod:`opzo.native` (Box-Muller Gaussians in about a third of the time of
      torch's CPU ``normal_``, and 32 signs per random word for Rademacher; float32 CPU
      tensors, torch's generator otherwise, and with a warning where no C compiler is
      found), or ``torch``'s ``normal_`` and ``randint`` (the streams of the figures
      measured before the kernels existed). Both are seeded by ``torch.manual_seed``.

    One draw of shape (B, Σ_l n_l) serves all layers: one random-number call per step.
    """

    def __init__(
        self,
        alpha: float = 0.2,
        alpha_final: float | None = None,
        distribution: str = "gaussian",
        position: str = "after",
        antithetic: bool = False,
        rng: str = "philox",
    ) -> None:
        if not alpha > 0:
            raise ValueError(f"noise scale alpha must be > 0, got {alpha}")
        if alpha_final is not None and not alpha_final > 0:
            raise ValueError(f"final noise scale alpha_final must be > 0, got {alpha_final}")
        if distribution not in NOISE_DISTRIBUTIONS:
            raise ValueError(
                f"unknown noise distribution {distribution!r}; choose one of "
                f"{NOISE_DISTRIBUTIONS}"
            )
        if position not in NOISE_POSITIONS:
            raise ValueError(
                f"unknown noise position {position!r}; choose one of {NOISE_POSITIONS}"
            )
        if rng not in NOISE_RNGS:
            raise ValueError(f"unknown noise generator {rng!r}; choose one of {NOISE_RNGS}")
        self.rng = rng
        self.alpha0 = float(alpha)
        self.alpha_final = None if alpha_final is None else float(alpha_final)
        self.alpha = float(alpha)
        self.distribution = distribution
        self.position = position
        self.antithetic = bool(antithetic)
        self.z: Tensor | None = None  # unscaled z[t], (B, Σ n_l)

    def reset(self) -> None:
        self.z = None

    def set_progress(self, fraction: float) -> None:
        if self.alpha_final is not None:
            f = min(max(float(fraction), 0.0), 1.0)
            self.alpha = self.alpha0 + (self.alpha_final - self.alpha0) * f

    def _draw(self, batch: int, sizes: list[int], like: Tensor) -> Tensor:
        total = sum(sizes)
        z = like.new_empty(batch, total)
        fast = (self.rng == "philox" and z.dtype == torch.float32 and z.device.type == "cpu"
                and native.ready())
        if self.distribution == "rademacher":
            return native.philox_signs_(z) if fast else _random_signs(batch, total, like)
        if fast:
            native.philox_normal_(z)
        else:
            z.normal_()
        if self.distribution == "sphere":
            parts = []
            for zl, n in zip(z.split(sizes, dim=1), sizes):
                parts.append(zl * (math.sqrt(n) / zl.norm(dim=1, keepdim=True).clamp_min(1e-12)))
            z = torch.cat(parts, dim=1)
        return z

    def sample(self, t: int, batch: int, sizes: list[int], like: Tensor,
               shard: Shard | None = None) -> list[Tensor]:
        """Draw z[t] (unscaled; the network multiplies by ``alpha``), split per layer.

        With ``shard`` (data-parallel training) z is drawn for the whole global batch and
        this process keeps the shard's rows: a sample gets the noise it would get in one
        process, whatever the number of processes.
        """
        if self.antithetic and t % 2 == 1 and self.z is not None:
            self.z = -self.z
        elif shard is None:
            self.z = self._draw(batch, sizes, like)
        else:
            if shard.size != batch:
                raise ValueError(f"shard {shard} does not hold this batch's {batch} rows")
            self.z = shard.rows(self._draw(shard.total, sizes, like))
        return list(self.z.split(sizes, dim=1))

    def state_dict(self) -> dict:
        return {"alpha": self.alpha}

    def load_state_dict(self, state: dict) -> None:
        self.alpha = float(state["alpha"])

    def __repr__(self) -> str:
        sched = f"{self.alpha0}->{self.alpha_final}" if self.alpha_final else f"{self.alpha0}"
        return (
            f"NoiseSampler(alpha={sched}, distribution={self.distribution!r}, "
            f"position={self.position!r}, antithetic={self.antithetic}, rng={self.rng!r})"
        )


_SHIFTS: dict[torch.device, Tensor] = {}


def _random_signs(batch: int, total: int, like: Tensor) -> Tensor:
    """A (batch, total) tensor of independent fair ±1, from 32 random bits per int32 draw."""
    n = batch * total
    shifts = _SHIFTS.get(like.device)
    if shifts is None:
        shifts = _SHIFTS[like.device] = torch.arange(32, dtype=torch.int32, device=like.device)
    words = torch.randint(-(2**31), 2**31, ((n + 31) // 32,), dtype=torch.int32,
                          device=like.device)
    bits = words.unsqueeze(1).bitwise_right_shift(shifts).bitwise_and_(1)
    signs = bits.view(-1)[:n].to(like.dtype).mul_(2.0).sub_(1.0)
    return signs.view(batch, total)
