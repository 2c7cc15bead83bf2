"""The two fixed surrogate derivatives ψ(u) of the papers.

* :class:`SigmoidSurrogate`: ψ(u) = (1/a) σ'((u − V_th)/a), the sigmoid-like derivative of
  OPZO paper, appendix C.3.2, with a = 0.25 by default:
  ψ(u) = (1/a) e^{(V_th−u)/a} / (1 + e^{(V_th−u)/a})².
* :class:`FastSigmoidSurrogate`: ψ(u) = 1 / (k |u − V_th| + 1)², the fast sigmoid with slope
  k = 25 used by the OTPE paper (section 4).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..registry import Option, Options
from .base import Surrogate


class SigmoidSurrogate(Surrogate):
    """ψ(u) = (1/a)·σ(x)(1 − σ(x)), x = (u − V_th)/a (OPZO paper, appendix C.3.2; a = 0.25).

    Its integral over u is 1, and its peak (at u = V_th) is 1/(4a).
    """

    name = "sigmoid"
    options = (Option("sigmoid_a", 0.25, "width a of the sigmoid surrogate", min=1e-9),)

    def __init__(self, a: float = 0.25) -> None:
        if not a > 0:
            raise ValueError(f"sigmoid surrogate width a must be > 0, got {a}")
        self.a = float(a)

    @classmethod
    def from_config(cls, cfg: Options) -> SigmoidSurrogate:
        return cls(a=cfg.sigmoid_a)

    def __call__(self, u: Tensor, v_th: float) -> Tensor:
        sig = torch.sigmoid((u - v_th) / self.a)
        return sig * (1.0 - sig) / self.a

    @classmethod
    def examples(cls) -> list[Surrogate]:
        return [cls(), cls(a=0.6)]

    def primitive(self, u: Tensor, v_th: float) -> Tensor:
        """σ((u − V_th)/a), whose derivative is ψ."""
        return torch.sigmoid((u - v_th) / self.a)

    def grad(self, g: Tensor, u: Tensor, v_th: float) -> Tensor:
        # (g/a) σ(x)(1 − σ(x)): x = u/a − V_th/a in one pass, σ in place, then one fused
        # sigmoid_backward kernel; 1/a is folded into g by the caller's gain where possible
        return self.grad_scaled(g.mul(1.0 / self.a), u, v_th)

    def gain(self) -> float:
        return 1.0 / self.a

    def grad_scaled(self, g_over_a: Tensor, u: Tensor, v_th: float) -> Tensor:
        """g ⊙ ψ(u) for ``g_over_a`` = g / a already scaled (see :meth:`Surrogate.gain`)."""
        offset = torch.tensor(-v_th / self.a, dtype=u.dtype, device=u.device)
        sig = torch.add(offset, u, alpha=1.0 / self.a).sigmoid_()
        return torch.ops.aten.sigmoid_backward(g_over_a, sig)

    def config(self) -> dict:
        return {"name": self.name, "a": self.a}

    def native_form(self) -> tuple[str, float, float] | None:
        # σ(1 − σ) of (u − V_th)/a with parameter 1/a, times the gain 1/a; a subclass that
        # changes ψ has no native form
        return ("sigmoid", 1.0 / self.a, 1.0 / self.a) if type(self) is SigmoidSurrogate else None


class FastSigmoidSurrogate(Surrogate):
    """ψ(u) = 1 / (k·|u − V_th| + 1)² (fast sigmoid, OTPE paper section 4; slope k = 25)."""

    name = "fast-sigmoid"
    options = (Option("fast_sigmoid_k", 25.0, "slope k of the fast-sigmoid surrogate",
                      min=1e-9),)

    def __init__(self, k: float = 25.0) -> None:
        if not k > 0:
            raise ValueError(f"fast-sigmoid slope k must be > 0, got {k}")
        self.k = float(k)

    @classmethod
    def from_config(cls, cfg: Options) -> FastSigmoidSurrogate:
        return cls(k=cfg.fast_sigmoid_k)

    def __call__(self, u: Tensor, v_th: float) -> Tensor:
        return (self.k * (u - v_th).abs() + 1.0).reciprocal().square()

    @classmethod
    def examples(cls) -> list[Surrogate]:
        return [cls(), cls(k=2.0)]

    def primitive(self, u: Tensor, v_th: float) -> Tensor:
        """x / (1 + k|x|), x = u − V_th (the fast sigmoid), whose derivative is ψ."""
        x = u - v_th
        return x / (self.k * x.abs() + 1.0)

    def config(self) -> dict:
        return {"name": self.name, "k": self.k}

    def native_form(self) -> tuple[str, float, float] | None:
        return ("fast-sigmoid", self.k, 1.0) if type(self) is FastSigmoidSurrogate else None
