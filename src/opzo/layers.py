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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ScaledWSConv2d", "avg_pool", "avg_pool_input_grad"]


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
        """Ŵ = γ (W − μ) / √(N σ² + ε), the weight the convolution actually uses."""
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
        """(∂L/∂W, ∂L/∂γ) from G = ∂L/∂Ŵ, in closed form (see the module docstring)."""
        v, s = self._centred()
        gv = (grad_effective * v).sum(dim=(1, 2, 3), keepdim=True)
        grad_gain = gv / s
        grad_v = (self.gain / s) * (grad_effective - v * gv / s.square())
        grad_w = grad_v - grad_v.mean(dim=(1, 2, 3), keepdim=True)
        return grad_w, grad_gain

    def accumulate_grad(self, delta: Tensor, trace: Tensor, bias_trace: float = 1.0) -> None:
        """Add the gradient of ⟨δ, I⟩ (input ``trace``) to ``.grad`` of W, γ and b.

        ``bias_trace`` is b̂[t] (the bias is a synapse from a constant 1, OTTT trace).
        """
        grad_w, grad_gain = self.backward_weight(self.weight_grad(delta, trace))
        for p, g in ((self.weight, grad_w), (self.gain, grad_gain)):
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.add_(g)
        if self.bias is not None:
            gb = delta.sum(dim=(0, 2, 3)).mul_(bias_trace)
            if self.bias.grad is None:
                self.bias.grad = gb
            else:
                self.bias.grad.add_(gb)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, eps={self.eps}")


def avg_pool(x: Tensor, k: int = 2) -> Tensor:
    """Non-overlapping k x k average pooling ("AP2" in the paper's network strings)."""
    if x.shape[-1] % k or x.shape[-2] % k:
        raise ValueError(f"average pooling {k}x{k} needs H and W divisible by {k}, got "
                         f"{tuple(x.shape[-2:])}")
    return F.avg_pool2d(x, k)


def avg_pool_input_grad(delta: Tensor, k: int = 2) -> Tensor:
    """Transpose of :func:`avg_pool`: each input pixel gets δ of its window divided by k²."""
    return delta.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1).div_(k * k)

