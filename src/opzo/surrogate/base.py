"""The local derivative ψ(u) of the spike function: the interface every surrogate implements.

The forward spike is always the Heaviside step ``s = H(u - V_th)`` (spike when ``u > V_th``).
Its derivative is zero almost everywhere, so learning uses a *local surrogate derivative*
ψ(u) in its place. Every learning rule multiplies its error signal for a layer's spikes by
ψ(u) of that layer (OPZO paper, eq. 7: ΔW_ij ∝ â_i[t] ψ(u_j[t]) (−g_j^t)).

The implementations are registered in :data:`opzo.surrogate.SURROGATES`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..registry import Option, Options


class Surrogate:
    """Base class: a callable ``ψ(u, v_th) -> Tensor`` of the same shape as ``u``."""

    name: str = "surrogate"
    #: the options it reads (CLI flags, config keys; merged by :mod:`opzo.config`)
    options: tuple[Option, ...] = ()
    #: whether ψ is drawn at random (LocalZO): its documented form is then its expectation
    sampled: ClassVar[bool] = False
    #: whether ψ is exactly zero for most neurons (LocalZO, SparseGrad): the backward pass
    #: may then run over the active neurons only (:mod:`opzo.sparse`)
    sparse_psi: ClassVar[bool] = False
    #: the ``sparse_backward`` option: "auto" (sparse when :attr:`sparse_psi`), "on", "off"
    sparse_backward: str = "auto"

    @classmethod
    def examples(cls) -> list[Surrogate]:
        """A few small instances for the conformance tests (``tests/test_conformance.py``);
        default: the surrogate with its defaults."""
        return [cls()]

    def expected(self, u: Tensor, v_th: float) -> Tensor:
        """ψ(u) from its documented formula (E_z[ψ] for a :attr:`sampled` one); default: the
        surrogate itself."""
        return self(u, v_th)

    def primitive(self, u: Tensor, v_th: float) -> Tensor | None:
        """The documented smooth function G(u) whose derivative in u is :meth:`expected`
        (the smooth step ψ stands in for), differentiable by autograd; None where the
        documentation gives none."""
        return None

    @classmethod
    def from_config(cls, cfg: Options) -> Surrogate:
        """The surrogate with the values of its :attr:`options` (``cfg.<name>``)."""
        return cls()

    def __call__(self, u: Tensor, v_th: float) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def nonzeros(self, u: Tensor, v_th: float) -> tuple[Tensor, Tensor]:
        """ψ(u)'s non-zero entries: (flat indices, ascending; values), for the sparse
        backward (:mod:`opzo.sparse`). Default: from ψ itself (counted as a call); a sparse
        surrogate may find its active neurons without computing ψ everywhere (and then
        counts nothing: the caller does)."""
        psi = self(u, v_th).reshape(-1)
        index = psi.nonzero().squeeze(1)
        return index, psi[index]

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

    def native_form(self) -> tuple[str, float, float] | None:
        """(name, parameter, gain) of this ψ in the fused native LIF step
        (:data:`opzo.native.SURROGATE_CODES`), or None where it has none (then ψ is computed
        by torch when a rule asks for it)."""
        return None

    # statistics a surrogate may keep over an epoch (LocalZO's non-zero fraction); none here
    def reset_stats(self) -> None:
        """Start counting anew (at the start of an epoch)."""

    def stats_state(self) -> Any:
        """The counters, for a checkpoint taken within an epoch (None: nothing counted)."""
        return None

    def load_stats_state(self, state: Any) -> None:
        """Continue counting from :meth:`stats_state`'s value."""

    def epoch_metrics(self) -> dict[str, float]:
        """What the epoch's line of ``metrics.jsonl`` records about this surrogate."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


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
