"""Batch normalisation of synaptic currents (issue 26 piece 1): ``bn``, ``tdbn``, ``bn-all-t``.

A normalised layer is a synaptic op followed by a per-channel affine batch norm of its
current, I = γ' · (op(x) − μ) / √(σ² + ε) + β, γ' = γ·s, before the neurons (as in tdBN's
and TET's networks: conv → BN → LIF). The channels are a feature map's C (statistics over
batch and space) or a dense layer's neurons. The three kinds differ in which values μ, σ²
are taken over and in the scale s:

* ``bn``: **per-step batch statistics**. At every time step t, μ[t] and σ²[t] are the mean
  and biased variance of the step's current over (batch, H, W); γ, β and the running
  averages are one module shared by all steps (the "one BN module applied at every step" of
  step-by-step BPTT-trained SNNs, e.g. SpikingJelly's ``BatchNorm2d`` in single-step mode;
  BNTT, Kim & Panda 2021, "Revisiting Batch Normalization for Training Low-Latency Deep
  Spiking Neural Networks From Scratch", keeps separate statistics and γ per step; here they
  are shared). s = 1. Step t's statistics depend on step t's inputs only, so this is what BN
  means for the **online rules** too: the rule's δ at step t is taken back through that
  step's normalisation (the exact transpose of batch norm, below), nothing of a later step
  is used. Running averages (momentum 0.1, unbiased variance, as ``nn.BatchNorm2d``) are
  updated at every step the layer runs in training mode and used in evaluation mode.
* ``tdbn``: threshold-dependent BN (Zheng et al. 2021, "Going Deeper With Directly-Trained
  Larger Spiking Neural Networks", AAAI, section 4, eq. 7–8): μ, σ² over (batch, **time**,
  H, W) of the whole sequence, and s = α·V_th (α = 1, and 1/√2 where two normalised branches
  are added before a neuron, the paper's residual block). Step t's current is normalised
  with statistics of the steps after t: only a method that sees the whole sequence before
  the update may train with it (``--method bptt``; untruncated PZO, :mod:`opzo.pzo`).
* ``bn-all-t``: BN along all time steps (OPZO paper, appendix E.2 and Table 13's second
  row, "we can also adopt BN (along all time steps)"): tdBN's statistics with s = 1, for
  BPTT, untruncated PZO and DFA through time.

Training and evaluation: in training mode the batch statistics are used (per step, or of the
whole sequence), in evaluation mode the running averages, which are causal: a sequence norm
evaluates step by step. A sequence-normalised layer in training mode refuses to run one step
(:class:`SequenceNormError`) unless a whole-sequence pass (:func:`whole_sequence`,
:mod:`opzo.layer_major`) holds it: the online learners would otherwise train on statistics
that do not exist yet (or, computed per step, on another normaliser than the one asked for).

**Explicit maps** (the online rules and untruncated PZO use no autograd). With x̂ the
normalised current of the rows of the last training forward call (N of them per channel: the
batch·H·W of one step, or of all T steps at once) and δ = ∂L/∂I:

    ∂L/∂γ = s Σ δ ⊙ x̂,   ∂L/∂β = Σ δ,
    ∂L/∂op(x) = (γ'/σ̃) (δ − mean(δ) − x̂ ⊙ mean(δ ⊙ x̂))        (σ̃ = √(σ² + ε))

(the means per channel over the N values), the batch norm's transpose (Ioffe & Szegedy 2015,
section 3); in evaluation mode ∂L/∂op(x) = γ' δ / √(running σ² + ε). These are computed
from the stored x̂ of the last forward call, i.e. the step being credited (online), or the
whole sequence when the caller ran the layer on all T·B rows at once (untruncated PZO).
With OTTT's presynaptic traces, the op's weight gradient takes ∂L/∂op(x) against the trace
â, γ and β the step's instantaneous ones (β with the bias trace b̂, a bias being a synapse
from a constant 1).

:func:`apply_norm` puts a normaliser after every convolution of a network (the terms of a
composite layer included: ResNet-19's projection shortcut); the convolutions then compute
plain convolutions (no weight standardization: the normaliser does its job).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["NORMS", "SEQUENCE_NORMS", "Normed", "SequenceNormError", "apply_norm",
           "has_sequence_norm", "normed_layers", "whole_sequence"]

#: the ``norm`` option's values
NORMS = ("none", "bn", "tdbn", "bn-all-t")
#: the kinds whose statistics are over all time steps of a sequence
SEQUENCE_NORMS = ("tdbn", "bn-all-t")


class SequenceNormError(RuntimeError):
    """A sequence normaliser asked to train on one time step (see the module docstring)."""


class Normed(nn.Module):
    """A synaptic layer (``inner``: a :class:`~opzo.layers.ConvLayer` or
    :class:`~opzo.layers.DenseLayer`) followed by batch norm of its current (see the module
    docstring); a convolution's weight standardization is switched off (the normaliser does
    its job). Every attribute it does not define (shapes, pooling, ``op_input``, ``token``
    ...) is the inner layer's. Parameters: ``inner.*``, ``bn_weight`` γ, ``bn_bias`` β;
    buffers ``running_mean``, ``running_var``."""

    def __init__(self, inner: nn.Module, kind: str = "bn", *, alpha: float = 1.0,
                 v_th: float = 1.0, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if kind not in NORMS or kind == "none":
            raise ValueError(f"unknown normaliser {kind!r}; choose one of {NORMS[1:]}")
        self.inner = inner
        if hasattr(inner, "standardize"):  # a plain convolution: the normaliser scales
            inner.standardize = False
        self.kind = kind
        shape = tuple(int(d) for d in inner.out_shape)
        self.channels = shape[0]
        self.spatial = math.prod(shape[1:])
        #: s: α·V_th for tdBN, 1 otherwise
        self.scale = float(alpha) * float(v_th) if kind == "tdbn" else 1.0
        self.eps = float(eps)
        self.momentum = float(momentum)
        dev, dt = inner.weight.device, inner.weight.dtype
        self.bn_weight = nn.Parameter(torch.ones(self.channels, device=dev, dtype=dt))
        self.bn_bias = nn.Parameter(torch.zeros(self.channels, device=dev, dtype=dt))
        self.register_buffer("running_mean", torch.zeros(self.channels, device=dev, dtype=dt))
        self.register_buffer("running_var", torch.ones(self.channels, device=dev, dtype=dt))
        #: set by :func:`whole_sequence`: the caller hands this layer all steps at once
        self.sequence_pass = False
        self._cache: tuple[Tensor, Tensor] | None = None  # x̂ (N, C, S), 1/σ̃ (C,)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    @property
    def per_step(self) -> bool:
        """Whether the statistics are per time step (``bn``)."""
        return self.kind not in SEQUENCE_NORMS

    @property
    def token(self) -> str:
        return f"{self.inner.token}[{self.kind}]"

    def _view(self, y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], self.channels, self.spatial)

    def _gamma(self) -> Tensor:
        return self.bn_weight * self.scale

    def normalize(self, y: Tensor) -> Tensor:
        """BN of the currents y (rows × C·S, flattened): batch statistics over the rows and
        space in training mode (kept for the transpose; running averages updated), running
        averages in evaluation mode. Autograd-differentiable."""
        v = self._view(y)
        if self.training:
            n = v.shape[0] * v.shape[2]
            mean = v.mean(dim=(0, 2))
            var = (v - mean[:, None]).square().mean(dim=(0, 2))
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach(), alpha=m * n / max(n - 1, 1))
        else:
            mean, var = self.running_mean, self.running_var
        inv = (var + self.eps).rsqrt()
        xhat = (v - mean[:, None]) * inv[:, None]
        if self.training:
            self._cache = (xhat.detach(), inv.detach())
        out = xhat * self._gamma()[:, None] + self.bn_bias[:, None]
        return out.reshape(y.shape)

    def op(self, x: Tensor) -> Tensor:
        """I = BN(op(x)) for the (pooled) op input x."""
        if self.training and not self.per_step and not self.sequence_pass:
            raise SequenceNormError(
                f"norm {self.kind!r} normalises over all time steps of a sequence: one step "
                "cannot be trained with it; use method 'bptt' (or untruncated PZO), or norm "
                "'bn' (per-step statistics) with an online rule")
        return self.normalize(self.inner.op(x))

    def forward(self, x: Tensor) -> Tensor:
        """I = BN(op(P x)) (autograd-differentiable; BPTT uses it)."""
        return self.op(self.inner.op_input(x))

    def transpose(self, delta: Tensor) -> Tensor:
        """∂L/∂op(x) from δ = ∂L/∂I (the batch norm's transpose, module docstring)."""
        d = self._view(delta)
        g = self._gamma()[:, None]
        if not self.training:
            inv = (self.running_var + self.eps).rsqrt()[:, None]
            return (d * (g * inv)).reshape(delta.shape)
        xhat, inv = self._stats(d)
        mean_d = d.mean(dim=(0, 2), keepdim=True)
        mean_dx = (d * xhat).mean(dim=(0, 2), keepdim=True)
        return ((g * inv[:, None]) * (d - mean_d - xhat * mean_dx)).reshape(delta.shape)

    def _stats(self, d: Tensor) -> tuple[Tensor, Tensor]:
        if self._cache is None or self._cache[0].shape != d.shape:
            raise RuntimeError("batch norm's transpose needs the forward of the same rows "
                               "first (their statistics)")
        return self._cache

    def input_grad(self, delta: Tensor, weight: Tensor | None = None) -> Tensor:
        """Pᵀ opᵀ(BNᵀ δ): the error at the layer's input."""
        return self.inner.input_grad(self.transpose(delta))

    def accumulate_grad(self, delta: Tensor, trace: Tensor, bias_trace: float = 1.0) -> None:
        """∇γ += s Σ δ ⊙ x̂, ∇β += b̂ Σ δ, and the op's gradient of BNᵀ δ against ``trace``."""
        d = self._view(delta)
        if self.training:
            xhat, _ = self._stats(d)
        else:
            inv = (self.running_var + self.eps).rsqrt()[:, None]
            xhat = (self._view(self.inner.op(trace)) - self.running_mean[:, None]) * inv
        gg = (d * xhat).sum(dim=(0, 2)) * self.scale
        gb = d.sum(dim=(0, 2)) * bias_trace
        for p, g in ((self.bn_weight, gg), (self.bn_bias, gb)):
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.add_(g)
        self.inner.accumulate_grad(self.transpose(delta), trace, bias_trace)


def normed_layers(net: nn.Module) -> Iterator[Normed]:
    """Every normaliser of a network."""
    return (m for m in net.modules() if isinstance(m, Normed))


def has_sequence_norm(net: nn.Module) -> bool:
    """Whether a network has a normaliser over all time steps (``tdbn``, ``bn-all-t``)."""
    return any(not m.per_step for m in normed_layers(net))


@contextmanager
def whole_sequence(net: nn.Module) -> Iterator[None]:
    """Within this block the network's sequence normalisers accept training forward calls:
    the caller (:mod:`opzo.layer_major`) hands each layer all T steps at once."""
    layers = list(normed_layers(net))
    for m in layers:
        m.sequence_pass = True
    try:
        yield
    finally:
        for m in layers:
            m.sequence_pass = False


def apply_norm(net: nn.Module, kind: str) -> int:
    """Put a normaliser of ``kind`` after every convolution of a
    :class:`~opzo.network.SpikingNet` (hidden conv layers, and the conv terms of composite
    layers); return how many. α (tdBN) is 1/√2 for the convolutions whose current is added to
    a second branch before the neurons (a layer with a residual shortcut, every term of a
    composite layer with more than one term; tdBN section 4.3), 1 elsewhere. Dense layers and
    the readout stay unnormalised. ``kind`` ``none`` does nothing."""
    from .layers import ConvLayer  # the model layer; imported here to keep this module light
    from .layers_extra import CompositeLayer

    if kind == "none":
        return 0
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")
    v_th = float(getattr(net.neuron, "v_th", 1.0))
    count = 0

    def wrap(conv: nn.Module, alpha: float) -> Normed:
        nonlocal count
        count += 1
        return Normed(conv, kind, alpha=alpha, v_th=v_th)

    skips = getattr(net, "skips", [None] * len(net.hidden))
    if any(isinstance(layer, CompositeLayer) and any(t.gain is not None for t in layer.terms)
           for layer in [*net.hidden, net.readout]):
        raise ValueError(f"{net.spec} is normaliser-free by design (scaled-WS convolutions "
                         "with skip-init gains): use norm 'none'")
    for l, layer in enumerate(net.hidden):
        if isinstance(layer, ConvLayer):
            alpha = 1.0 / math.sqrt(2.0) if skips[l] is not None else 1.0
            net.hidden[l] = wrap(layer, alpha)
        elif isinstance(layer, CompositeLayer):
            alpha = 1.0 / math.sqrt(2.0) if len(layer.terms) > 1 else 1.0
            for k, t in enumerate(layer.terms):
                if isinstance(t.op, ConvLayer):
                    t.op = wrap(t.op, alpha)
                    layer.ops[str(k)] = t.op
    if count == 0:
        raise ValueError(f"{getattr(net, 'spec', 'this network')} has no convolution to "
                         f"normalise: norm {kind!r} applies to convolutional nets")
    return count
