"""The deployed chip's imperfections: noise on the synaptic currents and device mismatch.

OPZO's stated target (OPZO paper, section 5.4 and Table 4) is adapting an SNN after it is
deployed on neuromorphic hardware, whose analog noise costs accuracy. Two models of it:

* ``gaussian`` — the paper's setting: at every step every hidden neuron's synaptic current
  gets fresh Gaussian noise, I_l[t] ← I_l[t] + σ ε_l[t], ε ~ N(0, 1) ("before the neuron",
  OPZO paper section 4.4). Under training, OPZO and ZO use exactly this noise as their
  perturbation (α = σ, no antithetic pairs, no 1/α in M's update, :func:`opzo.train
  .build_rule`): the chip's noise is their probe, as in Table 4.
* ``fixed`` — device mismatch, which no paper here models: one static offset per neuron,
  I_l[t] ← I_l[t] + σ δ_l with δ_l ~ N(0, 1) drawn once from ``seed`` (a given chip), and,
  for evaluation, optionally a static multiplicative error per synapse, W ← W ⊙ (1 + σ_w η),
  η ~ N(0, 1) (:func:`perturb_weights`).

A :class:`HardwareNoise` is attached to a network as ``net.hardware``; the network's step (and
BPTT's forward) then applies it to every hidden layer's current, for every rule, in training
and in inference. Its fixed offsets are non-persistent buffers: they move with ``net.to`` and
are not part of the network's weights (checkpoints, NIR export).

Data parallel (:mod:`opzo.distributed`): while :func:`sharded` holds a :class:`Shard`, the
Gaussian noise is drawn for the whole global batch and each process keeps its rows, as the
rules' own noise is: a sample gets the chip noise it would get in one process, and the
generators of all processes advance alike.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .distributed import Shard

HW_KINDS = ("gaussian", "fixed")


class HardwareNoise(nn.Module):
    """Noise on the synaptic current of every hidden layer (see the module docstring).

    ``scale`` σ; ``kind`` ``gaussian`` (fresh every step, from torch's generator of the
    current's device) or ``fixed`` (per-neuron offsets from ``seed``); ``sizes``: the hidden
    layers' neuron counts n_l (for ``fixed``).
    """

    def __init__(self, scale: float, kind: str = "gaussian", sizes: list[int] | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        if not (scale >= 0 and math.isfinite(scale)):
            raise ValueError(f"hardware noise scale must be a finite number >= 0, got {scale}")
        if kind not in HW_KINDS:
            raise ValueError(f"unknown hardware noise kind {kind!r}; choose one of {HW_KINDS}")
        self.scale = float(scale)
        self.kind = kind
        self.seed = int(seed)
        self.offsets: list[Tensor] = []
        #: while set (:func:`sharded`): the currents are these rows of a global batch
        self.shard: Shard | None = None
        if kind == "fixed":
            if sizes is None:
                raise ValueError("fixed hardware noise needs the hidden layer sizes")
            g = torch.Generator(device="cpu").manual_seed(self.seed)
            for l, n in enumerate(sizes):
                offset = torch.randn(n, generator=g, device="cpu").mul_(self.scale)
                self.register_buffer(f"offset{l}", offset, persistent=False)
            self.offsets = [getattr(self, f"offset{l}") for l in range(len(sizes))]

    def _apply(self, fn, recurse=True):  # keep self.offsets pointing at the moved buffers
        out = super()._apply(fn, recurse)
        self.offsets = [getattr(self, f"offset{l}") for l in range(len(self.offsets))]
        return out

    def perturb_(self, current: Tensor, l: int, scratch: bool) -> Tensor:
        """I_l + σ ε (gaussian) or I_l + σ δ_l (fixed) for a (B, n_l) current; in place when
        ``scratch`` (the current's storage is the caller's own)."""
        if self.scale == 0.0:
            return current
        if self.kind == "fixed":
            offset = self.offsets[l]
            return current.add_(offset) if scratch else current + offset
        shard = self.shard
        if shard is None:
            noise = torch.randn_like(current)
        else:  # drawn for the global batch; this process's rows
            if current.shape[0] != shard.size:
                raise ValueError(f"chip noise for shard {shard}: the current has "
                                 f"{current.shape[0]} rows")
            noise = shard.rows(torch.randn((shard.total, *current.shape[1:]),
                                           dtype=current.dtype, device=current.device))
        return (current.add_(noise, alpha=self.scale) if scratch
                else torch.add(current, noise, alpha=self.scale))

    def extra_repr(self) -> str:
        return f"scale={self.scale}, kind={self.kind!r}, seed={self.seed}"


@contextmanager
def sharded(net: nn.Module, shard: Shard | None) -> Iterator[None]:
    """While in the block, ``net``'s chip noise (if any) is drawn for the global batch of
    ``shard`` and the currents get the shard's rows (nothing changes with ``shard`` None or
    no chip noise)."""
    hw = getattr(net, "hardware", None)
    if hw is None or shard is None:
        yield
        return
    previous, hw.shard = hw.shard, shard
    try:
        yield
    finally:
        hw.shard = previous


def attach(net: nn.Module, scale: float, kind: str = "gaussian", seed: int = 0
           ) -> HardwareNoise | None:
    """Put a :class:`HardwareNoise` on ``net`` (on its device; ``scale`` 0 removes it)."""
    if not scale:
        net.hardware = None  # type: ignore[assignment]
        return None
    device = net.readout.weight.device  # type: ignore[union-attr]
    hw = HardwareNoise(scale, kind, list(net.hidden_sizes), seed).to(device)  # type: ignore[arg-type]
    net.hardware = hw  # type: ignore[assignment]
    return hw


@torch.no_grad()
def perturb_weights(net: nn.Module, scale: float, seed: int) -> None:
    """A chip's static synapse mismatch, in place: W ← W ⊙ (1 + σ_w η), η ~ N(0, 1) from
    ``seed``, for every weight matrix and conv kernel (hidden layers and readout)."""
    g = torch.Generator(device="cpu").manual_seed(int(seed) + 7919)
    for name, p in net.named_parameters():
        if name.endswith("weight"):
            eta = torch.randn(p.shape, generator=g, device="cpu", dtype=p.dtype)
            p.mul_(eta.to(p.device).mul_(scale).add_(1.0))


def evaluate_under_noise(evaluate: Callable[[nn.Module], dict[str, Any]], net: nn.Module,
                         scale: float, kind: str = "gaussian", repeats: int = 5, seed: int = 0,
                         weight_scale: float = 0.0) -> dict[str, Any]:
    """Test accuracy of ``net`` on the chip, averaged over ``repeats`` draws: for ``fixed``
    noise ``repeats`` chips (offsets and synapse errors from ``seed + r``), for ``gaussian``
    noise ``repeats`` passes with the generator seeded ``seed + r``. ``evaluate(net)`` returns
    a dict with ``acc`` (:func:`opzo.train.evaluate`). The network is left as it was."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if weight_scale and kind != "fixed":
        raise ValueError("a per-synapse weight perturbation is device mismatch: use it with "
                         "kind 'fixed'")
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    previous = getattr(net, "hardware", None)
    accs: list[float] = []
    try:
        for r in range(repeats):
            torch.manual_seed(seed + r)
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(seed + r)
            attach(net, scale, kind, seed + r)
            if weight_scale:
                perturb_weights(net, weight_scale, seed + r)
            accs.append(float(evaluate(net)["acc"]))
            net.load_state_dict(saved)
    finally:
        net.hardware = previous  # type: ignore[assignment]
        net.load_state_dict(saved)
    return {"hw_noise": scale, "hw_noise_kind": kind, "hw_weight_noise": weight_scale,
            "repeats": repeats, "seed": seed, "acc_mean": statistics.fmean(accs),
            "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "acc": accs}
