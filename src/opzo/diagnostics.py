"""Gradient diagnostics: alignment with a reference gradient, and gradient variance.

* :func:`gradient_cosine` — per-layer cosine similarity between a rule's weight-gradient
  estimate and a reference gradient on the same batch, weights and dropout masks (OPZO paper
  appendix D.3, Fig. 4: OPZO vs spatial BP; OTPE paper Figs. 3-4: traces vs BPTT). The rule's
  state is untouched (a deep copy runs) and the global RNG state is restored, so measuring
  does not change the training run.
* :class:`GradientVariance` — per-layer variance of the batch gradients over an epoch,
  var = Σ_i ‖g_i − ḡ‖² / n with n = (number of batches) × (elements of the gradient)
  (OPZO paper, appendix C.3.2, Fig. 2), accumulated online (Welford) without storing them,
  and its scale-free form Σ_i ‖g_i − ḡ‖² / (n_batches ‖ḡ‖²).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from .bptt import BPTTLearner
from .learner import OnlineLearner
from .losses import InstantLoss
from .network import SpikingNet
from .rules import SpatialBP, SpatialRule

REFERENCES = ("bp", "bptt")


def weight_names(net: SpikingNet) -> list[str]:
    """Names of the weight matrices, input to output (``hidden.0.weight`` … ``readout.weight``)."""
    return [n for n, p in net.named_parameters() if n.endswith("weight")]


def _grads_of(net: SpikingNet, run) -> dict[str, Tensor]:
    saved = {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = None
    run()
    out = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    for n, p in net.named_parameters():
        p.grad = saved[n]
    return out


def gradient_cosine(net: SpikingNet, rule: SpatialRule | None, x: Tensor, y: Tensor, T: int,
                    loss: InstantLoss, reference: str = "bp", trace: str = "ottt",
                    gbar: str = "paper") -> dict[str, float]:
    """Cosine similarity, per weight matrix, of ``rule``'s gradient with the reference's.

    ``rule=None`` measures BPTT itself (against ``reference="bp"`` that is OTTT's alignment
    with the exact gradient seen from the other side). ``trace``: the rule's temporal trace
    (:mod:`opzo.traces`; the reference "bp" uses OTTT's, BPTT the exact gradient) and ``gbar``
    its ḡ normalisation (OTPE traces). For an ``f_`` trace both references take the same loss
    on the leaky sum of the outputs (``f_ottt``; BPTT with that output leak).
    """
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; choose one of {REFERENCES}")
    x, T = net.prepare_input(x, T)  # flattened: (B, F) static or (T, B, F)
    rng = torch.get_rng_state()
    # batch norm's running averages move in every training-mode pass: measuring must not
    buffers = {k: b.detach().clone() for k, b in net.named_buffers()}
    try:
        batch = x.shape[0] if x.dim() == 2 else x.shape[1]
        masks = net.dropout_masks(batch, x)
        # the F-variants' loss is on the leaky sum of the outputs: so is their reference's
        leaky = trace.startswith("f_")
        exact = BPTTLearner(net, loss, output_leak=net.neuron.lam if leaky else 0.0)
        if rule is None:
            ours = _grads_of(net, lambda: exact.accumulate(x, y, T, masks=masks))
        else:
            probe = OnlineLearner(net, copy.deepcopy(rule), loss, trace=trace, gbar=gbar)
            ours = _grads_of(net, lambda: probe.accumulate(x, y, T, masks=masks))
        if reference == "bp":
            ref_learner = OnlineLearner(net, SpatialBP(), loss,
                                        trace="f_ottt" if leaky else "ottt")
            ref = _grads_of(net, lambda: ref_learner.accumulate(x, y, T, masks=masks))
        else:
            ref = _grads_of(net, lambda: exact.accumulate(x, y, T, masks=masks))
    finally:
        torch.set_rng_state(rng)
        with torch.no_grad():
            for k, b in net.named_buffers():
                b.copy_(buffers[k])
    return {name: _cosine(ours[name], ref[name]) for name in weight_names(net)}


def _cosine(a: Tensor, b: Tensor) -> float:
    """cos(a, b) in float64, clamped to [−1, 1] (float32 rounding can exceed 1)."""
    c = F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0)
    return float(c.clamp(-1.0, 1.0))


class GradientVariance:
    """Welford accumulation of var = Σ_i ‖g_i − ḡ‖² / (n_batches · numel), per weight matrix."""

    def __init__(self, net: SpikingNet) -> None:
        self.net = net
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.mean: dict[str, Tensor] = {}
        self.m2: dict[str, float] = {}

    def update(self) -> None:
        """Add the batch gradient now in the weights' ``.grad``."""
        self.count += 1
        for name, p in self.net.named_parameters():
            if not name.endswith("weight") or p.grad is None:
                continue
            g = p.grad
            if self.count == 1:
                self.mean[name] = g.detach().clone()
                self.m2[name] = 0.0
                continue
            delta = g - self.mean[name]
            self.mean[name].add_(delta, alpha=1.0 / self.count)
            self.m2[name] += float((delta * (g - self.mean[name])).sum())

    def result(self) -> dict[str, float]:
        """The variance per weight matrix over the batches seen since :meth:`reset`."""
        return {name: self.m2[name] / (self.count * self.mean[name].numel())
                for name in self.mean if self.count > 0}

    def relative(self) -> dict[str, float]:
        """Scale-free noise-to-signal ratio Σ_i ‖g_i − ḡ‖² / (n_batches ‖ḡ‖²) per matrix.

        Comparable across rules whose gradients differ in scale (OPZO's M starts at zero and
        grows over training, so its raw variance is small early on for that reason alone).
        """
        out = {}
        for name in self.mean:
            norm2 = float(self.mean[name].square().sum())
            out[name] = self.m2[name] / (self.count * norm2) if norm2 > 0 else float("inf")
        return out
