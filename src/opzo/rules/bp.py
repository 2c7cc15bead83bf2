"""Spatial backpropagation within each time step: the OTTT rule (OPZO paper section 3.1).

    g_{N−1}[t] = W_Nᵀ e[t],   δ_l[t] = g_l[t] ⊙ m_l ⊙ ψ(u_l[t]),   g_{l−1}[t] = W_lᵀ δ_l[t]

i.e. the instantaneous gradient of OTTT (Xiao et al. 2022), layer by layer with surrogate
derivatives. Needs weight transport (the forward weights are read for the backward pass).
"W_lᵀ δ" is each layer's ``input_grad``: the transposed matrix for a fully connected layer,
the transposed convolution with the standardized weight Ŵ for a conv layer, followed by the
transpose of the layer's input pooling (:mod:`opzo.layers`). Implemented explicitly (no
autograd graph); tests check it against autograd, FC and conv. A residual shortcut from layer
j into layer l's current adds δ_l to the error at x_j; an ADD of x_j to layer l's output
(SEW ResNet, x_l = s_l ⊙ m_l + P x_j) adds Pᵀ g_l, the error at x_l itself, to it.

**Transport variants.** The matrix that carries the error back through a layer is
:meth:`SpatialBP.feedback_weight` (default: the layer's own, ``layer.op_weight()``); a
subclass that returns another matrix of the same shape changes the transport and nothing
else, e.g. sign-symmetric feedback (Liao, Leibo & Poggio 2016, "How important is
weight symmetry in backpropagation?"), g_{l−1} = sign(W_l)ᵀ δ_l::

    class SignSymmetric(SpatialBP):
        name = "sign"

        def feedback_weight(self, layer):
            return layer.op_weight().sign()
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import SpatialRule, StepContext, local_delta
from .profile import CostProfile


class SpatialBP(SpatialRule):
    """Spatial BP = OTTT (see the module docstring)."""

    name = "bp"
    cost_profile = CostProfile("transposed")

    def feedback_weight(self, layer: Any) -> Tensor | None:
        """The weight that carries the error back through ``layer`` (readout or hidden):
        g = Pᵀ (feedback weight)ᵀ δ. Default: the layer's own, the W (or conv Ŵ) of its
        forward op (exact BP); None for a layer without a weight (its ``input_grad`` then
        uses what it has)."""
        op_weight = getattr(layer, "op_weight", None)
        return op_weight() if op_weight is not None else None

    def deltas(self, ctx: StepContext) -> list[Tensor]:
        net, rec = ctx.net, ctx.record
        n = len(net.hidden)
        skips = net.skips
        adds = getattr(net, "adds", None)
        deltas: list[Tensor] = []  # δ_l from the top layer down
        #: the error at each layer's output x_l, complete once every layer above has run
        g: list[Tensor | None] = [None] * n
        #: parts of ∂L/∂I_l that come straight from a later layer's current (composite
        #: layers reading I_l, e.g. NF-ResNet's residual stream; opzo.layers_extra)
        extra: list[Tensor | None] = [None] * n
        g[n - 1] = net.readout.input_grad(ctx.error, self.feedback_weight(net.readout))
        _from_sources(net.readout, ctx.error, g, extra)
        for l in range(n - 1, -1, -1):
            gl = g[l]
            if gl is None:  # nothing reads this layer's output through its spikes
                gl = rec.u[l].new_zeros(rec.u[l].shape)
            elif adds is not None and adds[l] is not None:  # x_l = s_l + P x_j (SEW's ADD)
                j, gj = net.added_grad(l, gl)
                g[j] = gj if g[j] is None else g[j] + gj
            delta = local_delta(rec, l, gl)
            if extra[l] is not None:
                delta = delta + extra[l]
            deltas.append(delta)
            layer = net.hidden[l]
            if l > 0 and getattr(layer, "uses_input", True):
                below = layer.input_grad(delta, self.feedback_weight(layer))
                g[l - 1] = below if g[l - 1] is None else g[l - 1] + below
            _from_sources(layer, delta, g, extra)
            j = skips[l]
            if j is not None:  # a residual shortcut x_j → I_l passes δ_l back unchanged
                g[j] = delta if g[j] is None else g[j] + delta
        return deltas[::-1]


def _from_sources(layer, delta: Tensor, g: list[Tensor | None],
                  extra: list[Tensor | None]) -> None:
    """A composite layer's errors at the earlier outputs and currents it reads."""
    if not getattr(layer, "sources", None):
        return
    for (kind, j), grad in layer.source_grads(delta):
        into = g if kind == "out" else extra
        into[j] = grad if into[j] is None else into[j] + grad
