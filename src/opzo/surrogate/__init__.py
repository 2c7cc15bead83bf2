"""Local derivatives ψ(u) of the spike function (the "local derivative" axis).

The forward spike is always the Heaviside step ``s = H(u - V_th)`` (spike when ``u > V_th``).
Its derivative is zero almost everywhere, so learning uses a *local surrogate derivative*
ψ(u) in its place. Every learning rule multiplies its error signal for a layer's spikes by
ψ(u) of that layer (OPZO paper, eq. 7: ΔW_ij ∝ â_i[t] ψ(u_j[t]) (−g_j^t)).

A new ψ is one file here with a :class:`Surrogate` subclass (``__call__``, ``config`` and,
if it has options, ``from_config``) and one ``SURROGATES.register`` line below.
"""

from __future__ import annotations

from ..registry import Registry
from .base import Surrogate, spike_with_surrogate
from .localzo import LocalZOSurrogate, SparseGradSurrogate, SparsityStats
from .sigmoid import FastSigmoidSurrogate, SigmoidSurrogate

#: name -> the :class:`Surrogate` subclass (``make_surrogate(name, **params)`` builds it with
#: parameters, its ``from_config`` with a training config's options)
SURROGATES: Registry[type[Surrogate]] = Registry("surrogate")
SURROGATES.register("sigmoid", SigmoidSurrogate, "(1/a) σ'((u − V_th)/a), width sigmoid_a "
                    "(OPZO paper appendix C.3.2)")
SURROGATES.register("fast-sigmoid", FastSigmoidSurrogate, "1/(k|u − V_th| + 1)², slope "
                    "fast_sigmoid_k (OTPE paper section 4)")
SURROGATES.register("localzo", LocalZOSurrogate, "LocalZO's sampled derivative (LocalZO "
                    "paper Algorithm 1)")
SURROGATES.register("sparsegrad", SparseGradSurrogate, "LocalZO's expected surrogate cut at "
                    "its expected back-propagation threshold (SparseGrad)")


def make_surrogate(name: str, **params) -> Surrogate:
    """The surrogate ``name`` (one of :data:`SURROGATES`) with keyword parameters."""
    return SURROGATES[name].factory(**params)


__all__ = ["SURROGATES", "FastSigmoidSurrogate", "LocalZOSurrogate", "SigmoidSurrogate",
           "SparseGradSurrogate", "SparsityStats", "Surrogate", "make_surrogate",
           "spike_with_surrogate"]
