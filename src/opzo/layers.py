"""Convolutional synaptic operations with explicit gradients (groundwork for conv SNNs).

The online rules never build an autograd graph over activations, so every synaptic operation
offers three explicit maps (OPZO paper section 3.1, OTTT section 3.1):

* ``forward(x)``: the synaptic current I = op(x; W) + b;
* ``input_grad(delta)``: the transpose of op applied to δ = ∂L/∂I (spatial BP needs it:
  g_{l−1} = opᵀ(δ_l));
* ``weight_grad(delta, trace)``: ∂L/∂W for ∂L/∂I = δ when the input was ``trace`` (the OTTT
  presynaptic trace â; for a conv this is the conv weight-gradient of δ against â).

:class:`ScaledWSConv2d` is the convolution with scaled weight standardization (Brock et al.
2021, "Characterizing signal propagation to close the performance gap in unnormalized
ResNets", section 4; used by OTTT and the OPZO paper, appendix C.3.2, for every conv net):

    Ŵ_c = γ_c · (W_c − μ_c) / √(N σ_c² + ε)

per output channel c, with μ_c and σ_c² the mean and (biased) variance of W_c over its
N = C_in·k_h·k_w fan-in entries and γ_c a learnable gain (initialised to 1). The forward pass
uses Ŵ; :meth:`ScaledWSConv2d.backward_weight` maps ∂L/∂Ŵ back to ∂L/∂W and ∂L/∂γ in closed
form, so no autograd graph is needed:

    v = W_c − μ_c,  s = √(Σ v² + ε)  (Σ v² = N σ²),  Ŵ = γ v / s
    ∂L/∂γ_c = Σ G ⊙ v / s
    ∂L/∂v   = (γ/s) (G − v · Σ(G ⊙ v) / s²)
    ∂L/∂W_c = ∂L/∂v − mean(∂L/∂v)          (the centring is a projection)

with G = ∂L/∂Ŵ_c.

:func:`avg_pool_input_grad` is the transpose of non-overlapping average pooling.

**Network layers.** :class:`DenseLayer` and :class:`ConvLayer` are the hidden layers (and
:class:`DenseLayer` the readout) of :class:`~opzo.network.SpikingNet`. Each one is

    [optional k×k average pooling of its input] → synaptic op (Linear, or sWS Conv2d)

and sees every per-layer tensor flattened, (B, n) with n = C·H·W for a feature map (a
contiguous view of (B, C, H, W)), so the learning rules, noise and traces handle FC and conv
layers alike. Each offers the explicit maps the online rules need (no autograd graph):

* ``op_input(x)``: the pooled input P x (identity without pooling), what the op sees and what
  OTTT's presynaptic trace is kept on: pooling is linear and the same at every step, so the
  trace of the pooled spikes is the pooled trace, â_P[t] = P â[t];
* ``op(x_p)`` and ``forward(x)`` = op(op_input(x)): the synaptic current I = op(P x; W) + b;
* ``input_grad(δ, weight=None)`` = Pᵀ opᵀ(δ): spatial BP's g_{l−1} = ∂⟨δ_l, I_l⟩/∂x_{l−1},
  with ``weight`` in place of the op's own weight (``op_weight()``: W, or Ŵ for a conv) when
  given, so a rule may carry the error back through another matrix of the same shape (a
  sign-symmetric rule passes sign(W));
* ``op_weight()``: the weight the op multiplies by (W for a dense layer, the standardized Ŵ
  for a conv layer), the default of spatial BP's ``feedback_weight``;
* ``accumulate_grad(δ, â, b̂)``: adds the gradient of ⟨δ, op(â; W) + b̂ b⟩ to ``.grad``
  (FC: ∇W += δᵀ â, ∇b += b̂ Σ_batch δ; conv: the conv weight-gradient of δ against â chained
  through the standardization, see above).

Pooling uses PyTorch's floor mode (``nn.AvgPool2d``'s default, also used by OTTT's code): a
7×7 map pooled 2×2 gives 3×3, the last row and column are dropped (they receive no gradient).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers_extra import Pool2d

__all__ = ["ConvLayer", "DenseLayer", "ScaledWSConv2d", "avg_pool", "avg_pool_input_grad"]


class ScaledWSConv2d(nn.Module):
    """A 2-D convolution whose weight is scale-standardized (see the module docstring).

    ``kernel_size`` k, ``stride`` 1, ``padding`` k // 2 by default ("C3" in the paper's
    network strings: 3x3, same size). Parameters: ``weight`` (C_out, C_in, k, k), ``bias``
    (C_out,) and ``gain`` γ (C_out, 1, 1, 1).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int | None = None, bias: bool = True,
                 eps: float = 1e-4) -> None:
        super().__init__()
        if min(in_channels, out_channels, kernel_size, stride) < 1:
            raise ValueError(
                "in_channels, out_channels, kernel_size and stride must be >= 1; got "
                f"{in_channels}, {out_channels}, {kernel_size}, {stride}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self.padding = self.kernel_size // 2 if padding is None else int(padding)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size,
                                               kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.gain = nn.Parameter(torch.ones(out_channels, 1, 1, 1))
        #: False: a plain convolution, Ŵ = W (the gain is unused and gets no gradient); set
        #: by :func:`opzo.nir.from_nir` for convolutions imported as they are
        self.standardize = True
        nn.init.kaiming_normal_(self.weight, nonlinearity="linear")

    @property
    def fan_in(self) -> int:
        return self.in_channels * self.kernel_size * self.kernel_size

    def _centred(self) -> tuple[Tensor, Tensor]:
        """v = W − μ per output channel and s = √(Σ v² + ε), shaped to broadcast."""
        w = self.weight
        v = w - w.mean(dim=(1, 2, 3), keepdim=True)
        s = (v.square().sum(dim=(1, 2, 3), keepdim=True) + self.eps).sqrt()
        return v, s

    def effective_weight(self) -> Tensor:
        """Ŵ = γ (W − μ) / √(N σ² + ε), the weight the convolution actually uses (W itself
        when ``standardize`` is off)."""
        if not self.standardize:
            return self.weight
        v, s = self._centred()
        return self.gain * v / s

    def output_shape(self, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """(C_out, H_out, W_out) for an input of shape (C_in, H, W)."""
        c, h, w = in_shape
        if c != self.in_channels:
            raise ValueError(f"input has {c} channels, the convolution expects "
                             f"{self.in_channels}")
        k, p, st = self.kernel_size, self.padding, self.stride
        return (self.out_channels, (h + 2 * p - k) // st + 1, (w + 2 * p - k) // st + 1)

    def forward(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        """I = conv(x, Ŵ) + b for x of shape (B, C_in, H, W). Pass ``weight`` = Ŵ to reuse it
        across time steps (it changes only when the optimizer steps)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got shape "
                             f"{tuple(x.shape)}")
        w = self.effective_weight() if weight is None else weight
        return F.conv2d(x, w, self.bias, stride=self.stride, padding=self.padding)

    def input_grad(self, delta: Tensor, input_shape: torch.Size | tuple[int, ...],
                   weight: Tensor | None = None) -> Tensor:
        """∂L/∂x = convᵀ(δ, Ŵ) for δ = ∂L/∂I (the transposed convolution)."""
        w = self.effective_weight() if weight is None else weight
        return torch.nn.grad.conv2d_input(tuple(input_shape), w, delta, stride=self.stride,
                                          padding=self.padding)

    def weight_grad(self, delta: Tensor, trace: Tensor) -> Tensor:
        """∂L/∂Ŵ = Σ_b δ_b ⋆ â_b: the conv weight-gradient of δ against the input (trace)."""
        return torch.nn.grad.conv2d_weight(trace, tuple(self.weight.shape), delta,
                                           stride=self.stride, padding=self.padding)

    def backward_weight(self, grad_effective: Tensor) -> tuple[Tensor, Tensor]:
        """(∂L/∂W, ∂L/∂γ) from G = ∂L/∂Ŵ, in closed form (see the module docstring); (G, 0)
        when ``standardize`` is off."""
        if not self.standardize:
            return grad_effective, torch.zeros_like(self.gain)
        v, s = self._centred()
        gv = (grad_effective * v).sum(dim=(1, 2, 3), keepdim=True)
        grad_gain = gv / s
        grad_v = (self.gain / s) * (grad_effective - v * gv / s.square())
        grad_w = grad_v - grad_v.mean(dim=(1, 2, 3), keepdim=True)
        return grad_w, grad_gain

    def accumulate_grad(self, delta: Tensor, trace: Tensor, bias_trace: float = 1.0, *,
                        weight: bool = True, bias: bool = True) -> None:
        """Add the gradient of ⟨δ, I⟩ (input ``trace``) to ``.grad`` of W, γ and b.

        ``bias_trace`` is b̂[t] (the bias is a synapse from a constant 1, OTTT trace).
        ``weight`` / ``bias`` False: leave W and γ / b alone (a trace that writes the weight
        gradient of several steps in one product, :class:`opzo.traces.OTTTTrace`).
        """
        if weight:
            grad_w, grad_gain = self.backward_weight(self.weight_grad(delta, trace))
            pairs = [(self.weight, grad_w)] + [(self.gain, grad_gain)] * self.standardize
            for p, g in pairs:
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.add_(g)
        if self.bias is not None and bias:
            gb = delta.sum(dim=(0, 2, 3)).mul_(bias_trace)
            if self.bias.grad is None:
                self.bias.grad = gb
            else:
                self.bias.grad.add_(gb)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, eps={self.eps}"
                + ("" if self.standardize else ", standardize=False"))


def _pair(k: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(k, int):
        return (k, k)
    kh, kw = (int(v) for v in k)
    return (kh, kw)


#: windows up to this many pixels are pooled as sums of strided sub-grids
_SLICED_POOL_MAX = 9


def avg_pool(x: Tensor, k: int | Sequence[int] = 2, *, floor: bool = False) -> Tensor:
    """Non-overlapping k x k average pooling ("AP2" in the paper's network strings).

    ``k`` may be a pair (k_h, k_w). By default H and W must be divisible by k; with
    ``floor=True`` the remainder rows and columns are dropped (PyTorch's floor mode).
    """
    kh, kw = _pair(k)
    h, w = x.shape[-2], x.shape[-1]
    if not floor and (h % kh or w % kw):
        raise ValueError(f"average pooling {kh}x{kw} needs H and W divisible by {kh} and "
                         f"{kw}, got {tuple(x.shape[-2:])}")
    if kh * kw > _SLICED_POOL_MAX:
        return F.avg_pool2d(x, (kh, kw))
    # small windows: the sum of the k² strided sub-grids (about 3x faster on CPU than
    # F.avg_pool2d for 2x2, same values up to rounding)
    hk, wk = (h // kh) * kh, (w // kw) * kw
    out = None
    for i in range(kh):
        for j in range(kw):
            part = x[..., i:hk:kh, j:wk:kw]
            out = part.clone() if out is None else out.add_(part)
    assert out is not None
    return out.mul_(1.0 / (kh * kw))


def avg_pool_input_grad(delta: Tensor, k: int | Sequence[int] = 2,
                        input_hw: Sequence[int] | None = None) -> Tensor:
    """Transpose of :func:`avg_pool`: each input pixel gets δ of its window divided by k².

    ``input_hw`` (H, W) of the pooled input, when floor mode dropped rows or columns: they
    get zero.
    """
    kh, kw = _pair(k)
    hk, wk = delta.shape[-2] * kh, delta.shape[-1] * kw
    h, w = (hk, wk) if input_hw is None else (int(input_hw[0]), int(input_hw[1]))
    if h < hk or w < wk:
        raise ValueError(f"input_hw {(h, w)} is smaller than the pooled map times the window, "
                         f"{(hk, wk)}")
    shape = (*delta.shape[:-2], h, w)
    g = delta.new_zeros(shape) if (h, w) != (hk, wk) else delta.new_empty(shape)
    share = delta * (1.0 / (kh * kw))
    for i in range(kh):  # write δ/k² into each of the k² strided sub-grids
        for j in range(kw):
            g[..., i:hk:kh, j:wk:kw] = share
    return g


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


class _InputPooling:
    """Optional average pooling P of what a layer receives, on flattened (B, n) tensors."""

    in_shape: tuple[int, ...]
    op_in_shape: tuple[int, ...]
    #: (k_h, k_w) for non-overlapping average pooling, a :class:`~opzo.layers_extra.Pool2d`
    #: for a strided / padded / max / adaptive one, or None
    pool: tuple[int, int] | Pool2d | None

    @staticmethod
    def _pooled_shape(in_shape: tuple[int, ...], pool: int | Sequence[int] | Pool2d | None
                      ) -> tuple[tuple[int, int] | Pool2d | None, tuple[int, ...]]:
        if pool is None:
            return None, in_shape
        if isinstance(pool, Pool2d):
            if len(in_shape) != 3:
                raise ValueError(f"pooling {pool.token} needs a feature map (C, H, W) as "
                                 f"input, got shape {in_shape}")
            return pool, pool.output_shape(in_shape)
        kh, kw = _pair(pool)
        if len(in_shape) != 3:
            raise ValueError(f"average pooling needs a feature map (C, H, W) as input, got "
                             f"shape {in_shape}")
        c, h, w = in_shape
        if min(kh, kw) < 1 or h // kh < 1 or w // kw < 1:
            raise ValueError(f"average pooling {kh}x{kw} does not fit a {h}x{w} feature map")
        return (kh, kw), (c, h // kh, w // kw)

    def op_input(self, x: Tensor) -> Tensor:
        """P x, flattened: the input the synaptic op sees (``x`` itself without pooling)."""
        if self.pool is None:
            return x
        if isinstance(self.pool, Pool2d):
            return self.pool(x.reshape(x.shape[0], *self.in_shape)).flatten(1)
        return avg_pool(x.reshape(x.shape[0], *self.in_shape), self.pool, floor=True).flatten(1)

    def op_input_grad(self, g: Tensor) -> Tensor:
        """Pᵀ g, flattened (``g`` itself without pooling)."""
        if self.pool is None:
            return g
        g = g.reshape(g.shape[0], *self.op_in_shape)
        if isinstance(self.pool, Pool2d):
            return self.pool.transpose(g, self.in_shape[1:]).flatten(1)
        return avg_pool_input_grad(g, self.pool, self.in_shape[1:]).flatten(1)

    def _pool_token(self) -> str:
        if self.pool is None:
            return ""
        if isinstance(self.pool, Pool2d):
            return self.pool.token + "-"
        kh, kw = self.pool
        return f"AP{kh}-" if kh == kw else f"AP{kh}x{kw}-"


class DenseLayer(_InputPooling, nn.Linear):
    """A fully connected synaptic layer on a flattened (optionally pooled) input.

    ``in_shape``: the per-sample shape of what it receives ((n,) for a vector, (C, H, W) for a
    feature map, flattened in C, H, W order); ``pool``: average pooling of a feature map
    before flattening. Parameters as :class:`torch.nn.Linear` (same initialisation, same
    names ``weight``, ``bias``).
    """

    is_dense = True

    def __init__(self, in_shape: int | Sequence[int], out_features: int,
                 pool: int | Sequence[int] | Pool2d | None = None, bias: bool = True) -> None:
        shape = (int(in_shape),) if isinstance(in_shape, int) else tuple(int(d) for d in in_shape)
        pool_k, op_in_shape = self._pooled_shape(shape, pool)
        super().__init__(_numel(op_in_shape), int(out_features), bias=bias)
        self.in_shape = shape
        self.pool = pool_k
        self.op_in_shape = op_in_shape
        self.out_shape: tuple[int, ...] = (int(out_features),)

    @property
    def token(self) -> str:
        """This layer in the network-string notation (pooling included), e.g. ``AP2-800``."""
        return f"{self._pool_token()}{self.out_features}"

    def op(self, x: Tensor) -> Tensor:
        """I = W x + b for the (pooled) input x."""
        return F.linear(x, self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """I = W P x + b (autograd-differentiable; the BPTT reference uses it)."""
        return F.linear(self.op_input(x), self.weight, self.bias)

    def op_weight(self) -> Tensor:
        """W, the matrix of I = W x + b."""
        return self.weight

    def input_grad(self, delta: Tensor, weight: Tensor | None = None) -> Tensor:
        """Pᵀ Wᵀ δ (as a row batch: (δ W) then the pooling transpose); ``weight``: another
        (out, in) matrix in place of W."""
        return self.op_input_grad(delta @ (self.weight if weight is None else weight))

    def accumulate_grad(self, delta: Tensor, trace: Tensor, bias_trace: float = 1.0, *,
                        weight: bool = True, bias: bool = True) -> None:
        """∇W += δᵀ â and ∇b += b̂ Σ_batch δ (``trace`` = â of the pooled input); ``weight``
        / ``bias`` False: leave ∇W / ∇b alone."""
        if weight:
            if self.weight.grad is None:
                self.weight.grad = torch.zeros_like(self.weight)
            self.weight.grad.addmm_(delta.t(), trace)
        if self.bias is not None and bias:
            if self.bias.grad is None:
                self.bias.grad = torch.zeros_like(self.bias)
            self.bias.grad.add_(delta.sum(0), alpha=bias_trace)


class ConvLayer(_InputPooling, ScaledWSConv2d):
    """A scale-standardized convolution ("<n>C<k>") on a flattened (optionally pooled) map.

    ``in_shape`` (C, H, W) of what it receives; ``pool``: average pooling before the
    convolution (an "AP2" token in front of it). Stride 1 and "same" padding k // 2 by
    default. Parameters as :class:`ScaledWSConv2d` (``weight``, ``bias``, ``gain``).
    """

    is_dense = False

    def __init__(self, in_shape: Sequence[int], out_channels: int, kernel_size: int = 3,
                 pool: int | Sequence[int] | Pool2d | None = None, stride: int = 1,
                 padding: int | None = None) -> None:
        shape = tuple(int(d) for d in in_shape)
        if len(shape) != 3:
            raise ValueError(f"a convolution needs a feature map (C, H, W) as input, got "
                             f"shape {shape}")
        pool_k, op_in_shape = self._pooled_shape(shape, pool)
        super().__init__(shape[0], out_channels, kernel_size, stride=stride, padding=padding)
        self.in_shape = shape
        self.pool = pool_k
        self.op_in_shape = op_in_shape
        out_shape = self.output_shape(op_in_shape)
        if min(out_shape[1:]) < 1:
            raise ValueError(f"a {kernel_size}x{kernel_size} convolution does not fit a "
                             f"{op_in_shape[1]}x{op_in_shape[2]} feature map")
        self.out_shape = out_shape

    @property
    def out_features(self) -> int:
        return _numel(self.out_shape)

    @property
    def token(self) -> str:
        """This layer in the network-string notation (pooling included), e.g. ``AP2-256C3``."""
        text = f"{self._pool_token()}{self.out_channels}C{self.kernel_size}"
        if self.stride != 1:
            text += f"s{self.stride}"
        if self.padding != self.kernel_size // 2:
            text += f"p{self.padding}"
        return text

    def op(self, x: Tensor) -> Tensor:
        """I = conv(x, Ŵ) + b for the (pooled) input x, (B, C·H·W) in and out."""
        x4 = x.reshape(x.shape[0], *self.op_in_shape)
        return ScaledWSConv2d.forward(self, x4).flatten(1)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """I = conv(P x, Ŵ) + b, flattened (autograd-differentiable, through Ŵ as well)."""
        return self.op(self.op_input(x))

    def op_weight(self) -> Tensor:
        """Ŵ, the kernel the convolution uses (:meth:`ScaledWSConv2d.effective_weight`)."""
        return self.effective_weight()

    def input_grad(self, delta: Tensor, weight: Tensor | None = None  # type: ignore[override]
                   ) -> Tensor:
        """Pᵀ convᵀ(δ, Ŵ), flattened; ``weight``: another (C_out, C_in, k, k) kernel in place
        of Ŵ."""
        b = delta.shape[0]
        g = ScaledWSConv2d.input_grad(self, delta.reshape(b, *self.out_shape),
                                      (b, *self.op_in_shape), weight)
        return self.op_input_grad(g.flatten(1))

    def accumulate_grad(self, delta: Tensor, trace: Tensor, bias_trace: float = 1.0, *,
                        weight: bool = True, bias: bool = True) -> None:
        """Gradient of ⟨δ, conv(â, Ŵ) + b̂ b⟩ to W, γ and b (``trace`` = â of the pooled
        input, flattened); ``weight`` / ``bias`` False: leave W and γ / b alone."""
        b = delta.shape[0]
        ScaledWSConv2d.accumulate_grad(self, delta.reshape(b, *self.out_shape),
                                       trace.reshape(b, *self.op_in_shape), bias_trace,
                                       weight=weight, bias=bias)
