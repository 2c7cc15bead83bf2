"""Node perturbation: the noise α z_l[t] that OPZO and ZO inject in the forward pass (OPZO
paper sections 4.4 and C.2), and where its random numbers come from."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import native
from ..distributed import Shard
from ..network import NOISE_POSITIONS
from ..registry import Option, Options

NOISE_DISTRIBUTIONS = ("gaussian", "rademacher", "sphere")
#: where the noise comes from: the native Philox kernels or torch's generator
NOISE_RNGS = ("philox", "torch")


class Perturbed:
    """What a learner-side part that injects noise shares (the spatial rules OPZO and ZO,
    :mod:`opzo.pzo`'s feedback): its :class:`NoiseSampler` ``noise`` (None: noise-free),
    reset every batch, drawn every step for the layers ``sizes``, scheduled over training and
    saved with the part's state."""

    noise: NoiseSampler | None = None
    sizes: list[int]

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
        return self.noise.sample(t, batch, self.sizes, like, shard)

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1] (for schedules such as the α decay)."""
        if self.noise is not None:
            self.noise.set_progress(fraction)

    def state_dict(self) -> dict:
        return {"noise": self.noise.state_dict() if self.noise is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.noise is not None and state.get("noise") is not None:
            self.noise.load_state_dict(state["noise"])


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
        #: draw every step's z into the same buffer (set by :class:`~opzo.learner.
        #: OnlineLearner`, which uses z[t] within step t only): no fresh (B, Σ n_l) tensor,
        #: and no page faults of fresh memory, per step; the numbers are the same. Off for
        #: a sampler used on its own, whose caller may keep the z of earlier steps.
        self.reuse_buffer = False
        self._buffer: Tensor | None = None

    @classmethod
    def from_config(cls, cfg: Options) -> NoiseSampler:
        """The perturbation of a training config. On a chip with Gaussian noise
        (``hw_noise``, :mod:`opzo.hardware`) the chip's noise is the perturbation (OPZO paper
        Table 4's setting): α = hw_noise, Gaussian, before the neuron, no antithetic pairs."""
        if chip_noise_is_perturbation(cfg):
            return cls(alpha=cfg.hw_noise, distribution="gaussian", position="before",
                       antithetic=False, rng=cfg.noise_rng)
        return cls(alpha=cfg.alpha, alpha_final=cfg.alpha_final, distribution=cfg.noise,
                   position=cfg.noise_position, antithetic=cfg.antithetic, rng=cfg.noise_rng)

    def reset(self) -> None:
        self.z = None

    def set_progress(self, fraction: float) -> None:
        if self.alpha_final is not None:
            f = min(max(float(fraction), 0.0), 1.0)
            self.alpha = self.alpha0 + (self.alpha_final - self.alpha0) * f

    def _empty(self, batch: int, total: int, like: Tensor) -> Tensor:
        """An uninitialised (batch, total) tensor like ``like``: the kept buffer when
        ``reuse_buffer`` is on and it fits."""
        buf = self._buffer
        if (self.reuse_buffer and buf is not None and buf.shape == (batch, total)
                and buf.dtype == like.dtype and buf.device == like.device):
            return buf
        z = like.new_empty(batch, total)
        self._buffer = z if self.reuse_buffer else None
        return z

    def _draw(self, batch: int, sizes: list[int], like: Tensor) -> Tensor:
        total = sum(sizes)
        z = self._empty(batch, total, like)
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


def chip_noise_is_perturbation(cfg: Options) -> bool:
    """Whether a config trains on a chip whose fresh Gaussian noise serves as the rules'
    perturbation (then no 1/α in OPZO's M update: the noise is not the rule's choice)."""
    return bool(cfg.hw_noise) and cfg.hw_noise_kind == "gaussian"


_TOPIC = "method: noise (opzo, zo)"
#: the options of the perturbation (:meth:`NoiseSampler.from_config`), read by the rules that
#: inject noise (opzo, zo); with them ``alpha_factor``, which both read
NOISE_OPTIONS: tuple[Option, ...] = (
    Option("alpha", 0.2, "noise scale α (opzo, zo)", min=1e-9, topic=_TOPIC),
    Option("alpha_final", None, "decay α linearly to this value over the epochs (paper: "
           "0.01); unset = fixed", type=float, min=1e-9, topic=_TOPIC),
    Option("noise", "gaussian", "noise distribution z (opzo, zo)",
           choices=NOISE_DISTRIBUTIONS, topic=_TOPIC),
    Option("noise_position", "after", "inject noise after the neuron (spikes) or before it "
           "(membrane potential)", choices=NOISE_POSITIONS, topic=_TOPIC),
    Option("antithetic", False, "use z and -z on alternate time steps (opzo, zo)",
           topic=_TOPIC),
    Option("noise_rng", "philox", "generator of the noise (opzo, zo): the native Philox "
           "kernels (compiled on first use with the machine's C compiler; about three times "
           "as fast) or torch's normal_/randint (the streams of the results recorded before "
           "the kernels existed)", choices=NOISE_RNGS, topic=_TOPIC),
    Option("alpha_factor", None, "keep the 1/α factor (default: off for opzo as in the paper, "
           "on for zo)", type=bool, topic=_TOPIC),
)
