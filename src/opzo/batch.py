"""What every learner shares about one batch (the online learner, BPTT, untruncated PZO and
the stream learner): its measurements (:class:`BatchStats`), the checks of its inputs, and
giving it up half-way (:class:`BatchAbandoned`). Below the learners, so that none of them
imports another."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["BatchAbandoned", "BatchStats", "check_labels", "check_optimizer", "check_stop"]


class BatchAbandoned(Exception):
    """A learner's ``should_stop`` said yes at a time step: the batch is given up half-way.
    Its partial gradients are in ``.grad`` and, with ``update="step"`` or a rule with
    per-step state (OPZO's M), the weights or the rule's state may have changed: the caller
    puts back what it saved at the batch's start (:mod:`opzo.train` does)."""


def check_stop(should_stop: Callable[[], bool] | None) -> None:
    """Raise :class:`BatchAbandoned` when ``should_stop`` (asked at every time step) says so."""
    if should_stop is not None and should_stop():
        raise BatchAbandoned


def check_labels(y: Tensor, batch: int, classes: int, like: Tensor) -> None:
    """``y`` must be the batch's class indices: an int64 (torch.long) tensor of shape
    (batch,) with values in 0..classes-1, on the input's device; else a ValueError naming
    ``y`` and what it must be. (int32, uint8 or float labels are refused, not converted: a
    float label such as 2.7 has no class.)"""
    if not isinstance(y, Tensor):
        raise ValueError(f"y (the labels) must be a torch.Tensor of class indices, got "
                         f"{type(y).__name__}")
    if y.dtype != torch.int64:
        raise ValueError(f"y (the labels) has dtype {y.dtype}; class indices must be int64 "
                         "(torch.long): pass y.long()")
    if y.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {tuple(y.shape)}")
    if y.device != like.device:
        raise ValueError(f"y (the labels) is on {y.device}, x on {like.device}: move them "
                         "to one device")
    if batch and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"labels must lie in 0..{classes - 1}")


def check_optimizer(optimizer: torch.optim.Optimizer, net: torch.nn.Module) -> set[int]:
    """``optimizer`` must be a torch optimizer holding some of ``net``'s parameters (one that
    holds none would step, and the network would never change); returns the ids of the
    parameters it holds."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got "
                         f"{type(optimizer).__name__}")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in held for p in net.parameters()):
        raise ValueError("optimizer holds none of the network's parameters, so the network "
                         "would never change: build it from net.parameters() (with an online "
                         "rule of its own parameters: [*net.parameters(), "
                         "*rule.parameters()])")
    return held


@dataclass
class BatchStats:
    """What one training batch measured (sums, so they can be pooled over an epoch)."""

    loss_sum: float  # Σ_b (1/T) Σ_t L_b[t] (a max-over-time readout: Σ_b L_b(max_t Y_b[t]))
    correct: int  # by argmax of Σ_t o[t] (or of max_t Y[t])
    count: int
    # Σ spikes and B·T·n_l per hidden layer (filled by evaluation; training skips the count)
    spike_counts: list[float] = field(default_factory=list)
    neuron_steps: list[int] = field(default_factory=list)


def score_steps(steps: Iterable[tuple[Tensor, list[Tensor]]], y: Tensor, loss: Any, T: int,
                sizes: list[int], readout: Any = None, synops: Any = None) -> BatchStats:
    """Inference statistics of one batch from its steps ``(o[t], spikes s_l[t] per hidden
    layer)``, whoever ran the forward (opzo's network, a chip): the loss of Σ_t o[t]/T terms
    and the accuracy of Σ_t o[t]; with ``readout`` (a max-over-time readout, ``scores``) the
    loss and the class of its scores; spikes counted per layer (also into ``synops``, an
    :class:`opzo.energy.SynOpsCounter`). Sums stay on the device until the end (float64;
    float32 on mps)."""
    batch = y.shape[0]
    dtype = torch.float32 if y.device.type == "mps" else torch.float64
    outputs: list[Tensor] = []  # o[t], for a max-over-time readout
    scores: Tensor | None = None  # Σ_t o[t]
    loss_sum = torch.zeros((), dtype=dtype, device=y.device)
    spikes = torch.zeros(len(sizes), dtype=dtype, device=y.device)
    for t, (o, layer_spikes) in enumerate(steps):
        if readout is None:
            scores = o if scores is None else scores + o
            loss_sum += loss.per_sample(o, y).sum().to(dtype)
        else:
            outputs.append(o)
        counts = (synops.add_step(layer_spikes, t) if synops is not None  # counted once
                  else [s.sum(dtype=dtype) for s in layer_spikes])
        for l, c in enumerate(counts):
            spikes[l] += c
    if readout is None:
        loss_value = float(loss_sum) / T
    else:
        scores = readout.scores(outputs)
        loss_value = float(loss.per_sample(scores, y).sum())
    assert scores is not None
    return BatchStats(loss_sum=loss_value, correct=int((scores.argmax(1) == y).sum()),
                      count=batch, spike_counts=spikes.tolist(),
                      neuron_steps=[batch * T * n for n in sizes])
