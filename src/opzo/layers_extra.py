"""Pooling with stride and padding, max and adaptive pooling, and composite synaptic layers
(projection / current shortcuts, scaled inputs) for the larger networks of issue 26
(tdBN's ResNet-19, TET's VGGSNN, SEW-ResNet-34, the OTTT paper's NF-ResNet-34).

Like :mod:`opzo.layers`, every map is written out explicitly (no autograd graph), so the
online rules run on them:

:class:`Pool2d` is a pooling P of a feature map with

* ``avg``: k×k average pooling with stride s and zero padding p, the zeros counted in the
  mean (``nn.AvgPool2d``'s default ``count_include_pad=True``, as in the OTTT paper's
  NF-ResNet stem, ``AvgPool2d(3, 2, 1)``); P is linear and its transpose Pᵀ is the transposed
  convolution of δ with the constant k×k kernel 1/k² (same stride and padding);
* ``max``: k×k max pooling with stride s and padding p (−∞ padding, as ``nn.MaxPool2d``);
  P x picks the maximum of each window, Pᵀ δ sends each δ back to the position that won its
  window **in the last forward call** (the arg-max indices are kept; overlapping windows that
  pick the same input add up). An online rule computes the transpose at the same time step as
  the forward, so the indices are that step's. The OTTT trace of a max-pooled input is kept on
  the pooled values (what the op saw), as for every pooling (:class:`~opzo.network.StepRecord`
  ``inputs``);
* ``adaptive``: adaptive average pooling to an n×n map (``nn.AdaptiveAvgPool2d``'s windows:
  rows ⌊iH/n⌋ … ⌈(i+1)H/n⌉ − 1), n = 1 being global average pooling.

:class:`CompositeLayer` is a synaptic layer whose current is a sum of terms,

    I_l = Σ_k c_k · g_k · op_k(P_k x_{src_k})        (c_k a constant, g_k an optional scalar
                                                      parameter, op_k a conv / dense / identity)

with each source ``src_k`` the layer's ordinary input x_{l−1} (``"in"``), the output x_j of an
earlier hidden layer j (``("out", j)``: a projection shortcut, e.g. ResNet-19's 1×1 stride-2
downsampling of the block input) or the synaptic current I_j of an earlier hidden layer
(``("cur", j)``: NF-ResNet's residual stream, which is the running sum of the currents, see
:mod:`opzo.nets`). The op input it hands the traces is the concatenation of every term's
(pooled, scaled) input, so the OTTT trace of each term is the matching slice of the trace of
the concatenation (the traces are elementwise); ``accumulate_grad`` splits it again. Spatial BP
asks ``input_grad`` for the error at x_{l−1} and ``source_grads`` for the others (an error at an
output x_j, or a δ to add to ∂L/∂I_j for a current source).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CompositeLayer", "Pool2d", "Term"]

POOL_KINDS = ("avg", "max", "adaptive")


class Pool2d:
    """A 2-D pooling with explicit transpose (see the module docstring).

    ``kind`` ``avg`` / ``max``: ``kernel`` k, ``stride`` s (default k), ``padding`` p;
    ``adaptive``: ``kernel`` is the output size n (n×n).
    """

    def __init__(self, kind: str, kernel: int, stride: int | None = None, padding: int = 0
                 ) -> None:
        if kind not in POOL_KINDS:
            raise ValueError(f"unknown pooling {kind!r}; choose one of {POOL_KINDS}")
        self.kind = kind
        self.kernel = int(kernel)
        self.stride = self.kernel if stride is None else int(stride)
        self.padding = int(padding)
        if self.kernel < 1 or self.stride < 1 or self.padding < 0:
            raise ValueError(f"pooling {self.token}: kernel and stride must be >= 1, padding "
                             ">= 0")
        if kind != "adaptive" and 2 * self.padding > self.kernel:
            raise ValueError(f"pooling {self.token}: the padding must be at most half the "
                             "kernel")
        #: max pooling: the arg-max indices of the last forward call, (B, C, H_out·W_out)
        self._indices: Tensor | None = None

    @property
    def token(self) -> str:
        """The network-string token, e.g. ``AP3s2p1``, ``MP2``, ``AAP1``."""
        if self.kind == "adaptive":
            return f"AAP{self.kernel}"
        text = ("AP" if self.kind == "avg" else "MP") + str(self.kernel)
        if self.stride != self.kernel:
            text += f"s{self.stride}"
        if self.padding:
            text += f"p{self.padding}"
        return text

    def output_shape(self, in_shape: Sequence[int]) -> tuple[int, int, int]:
        c, h, w = (int(d) for d in in_shape)
        if self.kind == "adaptive":
            n = self.kernel
            if n > h or n > w:
                raise ValueError(f"adaptive pooling to {n}x{n} does not fit a {h}x{w} map")
            return (c, n, n)
        k, s, p = self.kernel, self.stride, self.padding
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"pooling {self.token} does not fit a {h}x{w} feature map")
        return (c, ho, wo)

    def _windows(self, size: int) -> list[tuple[int, int]]:
        n = self.kernel
        return [(i * size // n, -(-(i + 1) * size // n)) for i in range(n)]

    def __call__(self, x: Tensor) -> Tensor:
        """P x for x of shape (B, C, H, W) (autograd-differentiable)."""
        if self.kind == "avg":
            return F.avg_pool2d(x, self.kernel, self.stride, self.padding)
        if self.kind == "max":
            out, idx = F.max_pool2d(x, self.kernel, self.stride, self.padding,
                                    return_indices=True)
            self._indices = idx.flatten(2)
            return out
        return F.adaptive_avg_pool2d(x, self.kernel)

    def transpose(self, g: Tensor, in_hw: Sequence[int]) -> Tensor:
        """Pᵀ g for g of shape (B, C, H_out, W_out); ``in_hw`` = (H, W) of the pooled input."""
        h, w = int(in_hw[0]), int(in_hw[1])
        b, c, ho, wo = g.shape
        if self.kind == "avg":
            k, s, p = self.kernel, self.stride, self.padding
            kernel = g.new_full((1, 1, k, k), 1.0 / (k * k))
            extra = (h - ((ho - 1) * s - 2 * p + k), w - ((wo - 1) * s - 2 * p + k))
            out = F.conv_transpose2d(g.reshape(b * c, 1, ho, wo), kernel, stride=s, padding=p,
                                     output_padding=extra)
            return out.reshape(b, c, h, w)
        if self.kind == "max":
            idx = self._indices
            if idx is None or idx.shape != (b, c, ho * wo):
                raise RuntimeError("max pooling's transpose needs the forward of the same "
                                   "input first (its arg-max indices)")
            out = g.new_zeros(b, c, h * w)
            out.scatter_add_(2, idx, g.reshape(b, c, ho * wo))
            return out.reshape(b, c, h, w)
        out = g.new_zeros(b, c, h, w)
        for i, (r0, r1) in enumerate(self._windows(h)):
            for j, (c0, c1) in enumerate(self._windows(w)):
                share = g[:, :, i:i + 1, j:j + 1] / ((r1 - r0) * (c1 - c0))
                out[:, :, r0:r1, c0:c1] += share
        return out

    def __repr__(self) -> str:
        return f"Pool2d({self.token})"


Source = str | tuple[str, int]


@dataclass
class Term:
    """One term c · g · op(P x_src) of a :class:`CompositeLayer` (see the module docstring).

    ``op``: a :class:`~opzo.layers.ConvLayer` / :class:`~opzo.layers.DenseLayer` (its own
    input pooling applies) or None (identity, for a current or an output added as it is);
    ``in_shape``: the per-sample shape of the source; ``scale``: c; ``in_scale``: a constant
    factor on the source before the op (NF-ResNet's 2.74); ``gain``: the name of a scalar
    parameter g of the composite layer (NF-ResNet's skipinit gain), or None.
    """

    source: Source
    op: nn.Module | None
    in_shape: tuple[int, ...]
    scale: float = 1.0
    in_scale: float = 1.0
    gain: str | None = None
    #: an average pooling after the op (linear; NF-ResNet's stem: conv, then AvgPool(3, 2, 1))
    post: Pool2d | None = None

    def out_shape(self) -> tuple[int, ...]:
        shape = tuple(self.in_shape) if self.op is None else tuple(self.op.out_shape)
        return shape if self.post is None else self.post.output_shape(shape)


class CompositeLayer(nn.Module):
    """A synaptic layer whose current is a sum of terms (see the module docstring).

    ``terms``: the :class:`Term` s (the ops are registered as submodules ``ops.<k>``, a term
    ``gain`` as a scalar parameter of that name, initialised to ``gain_init``); ``out_shape``:
    the per-sample shape of the current (every term's op must give it); ``token``: how the
    layer prints.
    """

    is_dense = False
    pool = None

    def __init__(self, terms: Sequence[Term], out_shape: Sequence[int], token: str,
                 gain_init: float = 0.0, head: nn.Module | None = None) -> None:
        super().__init__()
        self.terms = list(terms)
        #: the per-sample shape of Σ terms (the current, unless a ``head`` maps it further)
        self.sum_shape = tuple(int(d) for d in out_shape)
        #: an optional synaptic layer applied to the sum (NF-ResNet's readout: the linear
        #: layer after global average pooling of the residual stream)
        self.head = head
        self.out_shape = self.sum_shape if head is None else tuple(head.out_shape)
        self._token = token
        self.ops = nn.ModuleDict({str(k): t.op for k, t in enumerate(self.terms)
                                  if t.op is not None})
        for t in self.terms:
            if t.gain is not None and not hasattr(self, t.gain):
                self.register_parameter(t.gain, nn.Parameter(torch.full((), float(gain_init))))
        self._sizes: list[int] = []
        for k, t in enumerate(self.terms):
            if t.out_shape() != self.sum_shape and math.prod(t.out_shape()) != math.prod(
                    self.sum_shape):
                raise ValueError(f"{token}: term {k} gives shape {t.out_shape()}, the "
                                 f"layer's sum has {self.sum_shape}")
            self._sizes.append(math.prod(t.in_shape) if t.op is None
                               else math.prod(t.op.op_in_shape))
        src0 = [t.source for t in self.terms]
        #: the earlier hidden layers' outputs / currents this layer reads, in term order
        #: (the network hands them to :meth:`op_input`)
        self.sources: list[tuple[str, int]] = [s for s in src0 if s != "in"]  # type: ignore
        self.uses_input = "in" in src0
        primary = [t.in_shape for t in self.terms if t.source == "in"]
        self.in_shape = primary[0] if primary else self.terms[0].in_shape

    @property
    def token(self) -> str:
        return self._token

    @property
    def out_features(self) -> int:
        return math.prod(self.out_shape)

    @property
    def weight(self) -> Tensor:
        """A weight of this layer (the head's, else the first op's), for its dtype and device."""
        if self.head is not None:
            return self.head.weight
        return next(iter(self.ops.values())).weight

    def _gain(self, t: Term) -> Tensor | float:
        return 1.0 if t.gain is None else getattr(self, t.gain)

    def _op(self, k: int) -> nn.Module:
        return self.ops[str(k)]

    def op_input(self, x: Tensor | None, *sources: Tensor) -> Tensor:
        """The concatenation of every term's op input (its pooling and ``in_scale`` applied):
        x_{l−1} for the ``"in"`` terms, ``sources`` (in :attr:`sources` order) for the rest."""
        parts = []
        it = iter(sources)
        for k, t in enumerate(self.terms):
            v = x if t.source == "in" else next(it)
            assert v is not None
            if t.op is not None:
                v = self._op(k).op_input(v)
            if t.in_scale != 1.0:
                v = v * t.in_scale
            parts.append(v)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _split(self, x: Tensor) -> list[Tensor]:
        return list(torch.split(x, self._sizes, dim=1))

    def _post(self, t: Term, v: Tensor) -> Tensor:
        if t.post is None:
            return v
        shape = t.op.out_shape if t.op is not None else t.in_shape
        return t.post(v.reshape(v.shape[0], *shape)).flatten(1)

    def _post_t(self, t: Term, g: Tensor) -> Tensor:
        if t.post is None:
            return g
        shape = t.op.out_shape if t.op is not None else t.in_shape
        return t.post.transpose(g.reshape(g.shape[0], *self.sum_shape), shape[1:]).flatten(1)

    def _term_value(self, k: int, t: Term, part: Tensor) -> Tensor:
        """op_k(part) after its post pooling (no scale, no gain)."""
        return self._post(t, part if t.op is None else self._op(k).op(part))

    def _sum(self, x: Tensor) -> Tensor:
        total = None
        for k, (t, part) in enumerate(zip(self.terms, self._split(x))):
            v = self._term_value(k, t, part) * (t.scale * self._gain(t))
            total = v if total is None else total + v
        assert total is not None
        return total

    def op(self, x: Tensor) -> Tensor:
        """I = head(Σ_k c_k g_k post_k(op_k(part_k))) for the concatenated op input (no head:
        the sum itself)."""
        total = self._sum(x)
        return total if self.head is None else self.head(total)

    def forward(self, x: Tensor | None, *sources: Tensor) -> Tensor:
        """I for x_{l−1} and the sources (autograd-differentiable; BPTT uses it)."""
        return self.op(self.op_input(x, *sources))

    def _term_grads(self, delta: Tensor) -> list[Tensor]:
        """The error at each term's source (before the op's own pooling: x, not P x)."""
        if self.head is not None:
            delta = self.head.input_grad(delta)
        out = []
        for k, t in enumerate(self.terms):
            d = self._post_t(t, delta * (t.scale * self._gain(t)))
            if t.op is not None:
                d = self._op(k).input_grad(d)
            if t.in_scale != 1.0:
                d = d * t.in_scale
            out.append(d)
        return out

    def input_grad(self, delta: Tensor, weight: Tensor | None = None) -> Tensor:
        """The error at x_{l−1}: Σ over the ``"in"`` terms (zeros if there is none)."""
        total = None
        for t, g in zip(self.terms, self._term_grads(delta)):
            if t.source == "in":
                total = g if total is None else total + g
        if total is None:
            return delta.new_zeros(delta.shape[0], math.prod(self.in_shape))
        return total

    def source_grads(self, delta: Tensor) -> list[tuple[tuple[str, int], Tensor]]:
        """(source, error) for every term that reads an earlier layer: for ``("out", j)``
        the error at x_j, for ``("cur", j)`` the part of ∂L/∂I_j that comes through here."""
        return [(t.source, g) for t, g in zip(self.terms, self._term_grads(delta))  # type: ignore
                if t.source != "in"]

    def accumulate_grad(self, delta: Tensor, trace: Tensor, bias_trace: float = 1.0) -> None:
        """Add the gradient of ⟨δ, Σ_k c_k g_k op_k(â_k; W_k, b̂ b_k)⟩ to every weight, bias
        and term gain (``trace``: the trace of the concatenated op input; with a ``head`` it
        must be the instantaneous input, as for a readout: the head sees the sum at b̂ = 1)."""
        if self.head is not None:
            with torch.no_grad():
                summed = self._sum(trace)
            self.head.accumulate_grad(delta, self.head.op_input(summed), bias_trace)
            delta = self.head.input_grad(delta)
        for k, (t, part) in enumerate(zip(self.terms, self._split(trace))):
            if t.op is None and t.gain is None:
                continue
            g = self._gain(t)
            op = None if t.op is None else self._op(k)
            if op is not None:
                op.accumulate_grad(self._post_t(t, delta * (t.scale * g)), part, bias_trace)
            if t.gain is not None:
                param = getattr(self, t.gain)
                with torch.no_grad():
                    if op is None:
                        value = part
                    else:
                        value = op.op(part)
                        if getattr(op, "bias", None) is not None and bias_trace != 1.0:
                            b = op.bias
                            shape = (1, -1, 1, 1) if len(op.out_shape) == 3 else (1, -1)
                            view = value.reshape(value.shape[0], *op.out_shape)
                            view = view + (bias_trace - 1.0) * b.reshape(shape)
                            value = view.flatten(1)
                    gg = (delta * self._post(t, value)).sum() * t.scale
                if param.grad is None:
                    param.grad = gg.reshape(()).clone()
                else:
                    param.grad.add_(gg)
