"""Local derivatives ψ(u) of the spike function (the "local derivative" axis).

The forward spike is always the Heaviside step ``s = H(u - V_th)`` (spike when ``u > V_th``).
Its derivative is zero almost everywhere, so learning uses a *local surrogate derivative*
ψ(u) in its place. Every learning rule multiplies its error signal for a layer's spikes by
ψ(u) of that layer (OPZO paper, eq. 7: ΔW_ij ∝ â_i[t] ψ(u_j[t]) (−g_j^t)).

Implemented:

* :class:`SigmoidSurrogate` — ψ(u) = (1/a) σ'((u − V_th)/a), the sigmoid-like derivative of
  OPZO paper, appendix C.3.2, with a = 0.25 by default:
  ψ(u) = (1/a) e^{(V_th−u)/a} / (1 + e^{(V_th−u)/a})².
* :class:`FastSigmoidSurrogate` — ψ(u) = 1 / (k |u − V_th| + 1)², the fast sigmoid with slope
  k = 25 used by the OTPE paper (section 4).
"""

from __future__ import annotations

import torch
from torch import Tensor


class Surrogate:
    """Base class: a callable ``ψ(u, v_th) -> Tensor`` of the same shape as ``u``."""

    name: str = "surrogate"

    def __call__(self, u: Tensor, v_th: float) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def grad(self, g: Tensor, u: Tensor, v_th: float) -> Tensor:
        """g ⊙ ψ(u): an error at the spikes turned into an error at the potential."""
        return g * self(u, v_th)

    def gain(self) -> float:
        """A constant factor of ψ that callers may fold into g (see :meth:`grad_scaled`)."""
        return 1.0

    def grad_scaled(self, g_scaled: Tensor, u: Tensor, v_th: float) -> Tensor:
        """g ⊙ ψ(u) given ``g_scaled`` = g · :meth:`gain` (lets callers fuse the constant)."""
        return self.grad(g_scaled, u, v_th)

    def config(self) -> dict:
        """The parameters that recreate this surrogate with :func:`make_surrogate`."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SigmoidSurrogate(Surrogate):
    """ψ(u) = (1/a)·σ(x)(1 − σ(x)), x = (u − V_th)/a (OPZO paper, appendix C.3.2; a = 0.25).

    Its integral over u is 1, and its peak (at u = V_th) is 1/(4a).
    """

    name = "sigmoid"

    def __init__(self, a: float = 0.25) -> None:
        if not a > 0:
            raise ValueError(f"sigmoid surrogate width a must be > 0, got {a}")
        self.a = float(a)

    def __call__(self, u: Tensor, v_th: float) -> Tensor:
        sig = torch.sigmoid((u - v_th) / self.a)
        return sig * (1.0 - sig) / self.a

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


class FastSigmoidSurrogate(Surrogate):
    """ψ(u) = 1 / (k·|u − V_th| + 1)² (fast sigmoid, OTPE paper section 4; slope k = 25)."""

    name = "fast-sigmoid"

    def __init__(self, k: float = 25.0) -> None:
        if not k > 0:
            raise ValueError(f"fast-sigmoid slope k must be > 0, got {k}")
        self.k = float(k)

    def __call__(self, u: Tensor, v_th: float) -> Tensor:
        return (self.k * (u - v_th).abs() + 1.0).reciprocal().square()

    def config(self) -> dict:
        return {"name": self.name, "k": self.k}


SURROGATES: dict[str, type[Surrogate]] = {
    SigmoidSurrogate.name: SigmoidSurrogate,
    FastSigmoidSurrogate.name: FastSigmoidSurrogate,
}


def make_surrogate(name: str, **params) -> Surrogate:
    """Build a surrogate by name: ``"sigmoid"``, ``"fast-sigmoid"``, ``"localzo"`` or
    ``"sparsegrad"`` (LocalZO's expected surrogate cut at its back-propagation threshold)."""
    if name == "localzo":
        from .localzo import LocalZOSurrogate

        return LocalZOSurrogate(**params)
    if name == "sparsegrad":
        from .localzo import SparseGradSurrogate

        return SparseGradSurrogate(**params)
    try:
        cls = SURROGATES[name]
    except KeyError:
        raise ValueError(
            f"unknown surrogate {name!r}; choose one of "
            f"{sorted(SURROGATES) + ['localzo', 'sparsegrad']}"
        ) from None
    return cls(**params)


class _SpikeFn(torch.autograd.Function):
    """Heaviside forward, surrogate backward: for autograd references (BPTT, tests)."""

    @staticmethod
    def forward(ctx, u: Tensor, v_th: float, surrogate: Surrogate) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.v_th = v_th
        ctx.surrogate = surrogate
        return (u > v_th).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        return grad_out * ctx.surrogate(u, ctx.v_th), None, None


def spike_with_surrogate(u: Tensor, v_th: float, surrogate: Surrogate) -> Tensor:
    """s = H(u − V_th) whose autograd derivative is ψ(u): the usual surrogate-gradient spike."""
    return _SpikeFn.apply(u, v_th, surrogate)
