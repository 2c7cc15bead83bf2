"""Local learning (LL) and intermediate global learning (IGL), added to any spatial rule.

OPZO paper, section 4.4 ("Combination with Local Learning") and appendix C.1.

**LL.** Every hidden layer l gets a linear readout r_l[t] = R_l x_l[t] + c_l of what it
delivered (its spikes, with noise and dropout, flattened: for a conv layer R_l is dense over
all C·H·W neurons) and its own supervised loss L(r_l[t], y), the same instantaneous loss as
the network's output, scaled by ``scale`` (0.01 in the paper). Its error reaches the layer
through the readout itself (P_l = R_l, the symmetry one linear layer can learn locally) and
is added to the global signal of the inner rule before the local derivative:

    e_l[t] = scale · ∂L(r_l[t], y)/∂r_l,     g_l[t] = g_l^rule[t] + R_lᵀ e_l[t],
    δ_l[t] = g_l[t] ⊙ m_l ⊙ ψ(u_l[t])

It only updates the synapses into layer l (the local error is not passed further down, also
under spatial BP). The readouts learn from the same error: ∇R_l += e_l[t]ᵀ x_l[t],
∇c_l += Σ_b e_l[t].

**IGL.** A chosen hidden layer k acts as an output for the layers below it: its readout's
loss is weighted ``igl_scale`` (1: "just as the last layer") instead of ``scale``, and its
error e_k[t] reaches the layers l < k through a second copy of the inner rule, run on the
network cut after layer k with R_k as its readout (OPZO: momentum feedback M_l^(k) learned
from the same noise z_l and the intermediate output r_k; DFA: a second fixed random matrix;
BP: backpropagation from r_k). The paper uses the 4th conv of the 9-layer net.

The readouts are this rule's parameters, not the model's (:meth:`LocalLearning.parameters`):
the optimizer must hold them too, e.g. ``AdamW([*net.parameters(), *rule.parameters()])``
(``opzo train`` does this; :class:`~opzo.learner.OnlineLearner` checks it). Inference does not
use them.
"""

from __future__ import annotations

import copy
from dataclasses import fields, replace

from torch import Tensor, nn

from ..layers import DenseLayer
from ..network import SpikingNet, StepRecord
from .base import SpatialRule, StepContext, WrappingRule, local_delta


class _SharedNoise:
    """The IGL copy's view of the inner rule's noise: the columns of z[t] of layers 0..k."""

    def __init__(self) -> None:
        self.z: Tensor | None = None
        self.alpha = 1.0

    def reset(self) -> None:
        self.z = None

    def set_progress(self, fraction: float) -> None:
        """The inner rule's sampler keeps the schedule; this view copies its α each step."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _CutNetwork:
    """Layers 0..k of a network with a local readout as its output (what IGL's rule sees)."""

    def __init__(self, net: SpikingNet, k: int, readout: DenseLayer) -> None:
        self.hidden = nn.ModuleList(list(net.hidden)[: k + 1])
        self.readout = readout
        self.neuron = net.neuron
        self.surrogate = net.surrogate
        self.hidden_sizes = net.hidden_sizes[: k + 1]
        self.skips = net.skips[: k + 1]
        self.num_outputs = int(readout.out_features)


def _cut_record(rec: StepRecord, k: int) -> StepRecord:
    """The step record of layers 0..k only (every per-layer list cut after k)."""
    return replace(rec, **{f.name: getattr(rec, f.name)[: k + 1] for f in fields(rec)
                           if isinstance(getattr(rec, f.name), list)})


class LocalLearning(WrappingRule):
    """LL and/or IGL around a spatial rule (see the module docstring).

    ``inner``: the global rule (bp, dfa, dkp, zo, opzo); ``scale``: the weight of each local
    loss (paper: 0.01); ``local``: give every hidden layer a readout (LL); ``igl_layer``: the
    hidden layer (0-based) whose readout acts as an output for the layers below (IGL), or
    None; ``igl_scale``: that readout's loss weight.

    Every hook is forwarded to the inner rule and the IGL copy by :class:`WrappingRule`.
    """

    def __init__(self, inner: SpatialRule, scale: float = 0.01, *, local: bool = True,
                 igl_layer: int | None = None, igl_scale: float = 1.0) -> None:
        if isinstance(inner, LocalLearning):
            raise ValueError("LocalLearning wraps a global rule, not another LocalLearning")
        if not scale >= 0:
            raise ValueError(f"local loss scale must be >= 0, got {scale}")
        if not igl_scale >= 0:
            raise ValueError(f"IGL loss scale must be >= 0, got {igl_scale}")
        if not local and igl_layer is None:
            raise ValueError("LocalLearning needs local=True, an igl_layer, or both")
        if igl_layer is not None and igl_layer < 1:
            raise ValueError(f"igl_layer must be a hidden layer with layers below it (>= 1, "
                             f"0-based), got {igl_layer}")
        super().__init__(inner)
        self.scale = float(scale)
        self.local = bool(local)
        self.igl_layer = igl_layer
        self.igl_scale = float(igl_scale)
        # the IGL copy of the inner rule, made before anything is bound
        self.igl_rule: SpatialRule | None = None
        if igl_layer is not None:
            self.igl_rule = copy.deepcopy(inner)
            if self.igl_rule.noise is not None:
                self.igl_rule.noise = _SharedNoise()  # type: ignore[assignment]
        parts = [inner.name] + (["ll"] if local else []) + (["igl"] if igl_layer is not None
                                                            else [])
        self.name = "+".join(parts)

    def companions(self) -> list[SpatialRule]:
        """IGL's copy of the inner rule, when there is one."""
        return [self.igl_rule] if self.igl_rule is not None else []

    def bind(self, net: SpikingNet) -> None:
        SpatialRule.bind(self, net)
        n = len(self.sizes)
        k = self.igl_layer
        if k is not None and k >= n:
            raise ValueError(f"igl_layer {k} (0-based) does not exist: the network has {n} "
                             f"hidden layers (IGL layer as given on the command line: 1..{n})")
        if not self.inner.is_bound_to(net):
            self.inner.bind(net)
        w = net.readout.weight
        layers = range(n) if self.local else [k]
        #: the local readouts, by hidden layer index
        self.readouts: dict[int, DenseLayer] = {
            l: DenseLayer((self.sizes[l],), self.num_outputs).to(dtype=w.dtype, device=w.device)
            for l in layers}
        self.loss_scales = {l: (self.igl_scale if l == k else self.scale) for l in layers}
        if k is not None:
            assert self.igl_rule is not None
            self.cut = _CutNetwork(net, k, self.readouts[k])
            self.igl_rule.bind(self.cut)  # type: ignore[arg-type]
            self.igl_columns = sum(self.sizes[: k + 1])

    def is_bound_to(self, net: SpikingNet) -> bool:
        return super().is_bound_to(net) and hasattr(self, "readouts")

    def parameters(self) -> list[nn.Parameter]:
        """The local readouts' weights and biases (train them with the model's), after the
        inner rules' own (none for the global rules)."""
        return [*super().parameters(),
                *(p for r in self.readouts.values() for p in r.parameters())]

    def deltas(self, ctx: StepContext) -> list[Tensor]:
        if ctx.loss_fn is None or ctx.target is None or ctx.labels is None:
            raise ValueError("local learning needs the labels, target and loss in the step "
                             "context (OnlineLearner passes them)")
        out = list(self.inner.deltas(ctx))
        rec = ctx.record
        k = self.igl_layer
        igl_out = igl_err = igl_loss = None
        for l, readout in self.readouts.items():
            x = rec.out[l]
            r = readout.op(x)
            lb, e = ctx.loss_fn.value_and_error(r, ctx.target, ctx.labels)
            w = self.loss_scales[l] * ctx.scale
            e.mul_(w)
            readout.accumulate_grad(e, x)
            out[l] = out[l] + local_delta(rec, l, readout.input_grad(e))
            if l == k:
                igl_out, igl_err, igl_loss = r, e, lb.mul_(w)
        if k is not None:
            assert self.igl_rule is not None and igl_out is not None
            view = self.igl_rule.noise
            if view is not None:
                assert self.noise is not None and self.noise.z is not None
                view.z = self.noise.z[:, : self.igl_columns]
                view.alpha = self.noise.alpha
            sub = replace(ctx, output=igl_out, error=igl_err, loss=igl_loss,
                          record=_cut_record(rec, k), net=self.cut)  # type: ignore[arg-type]
            below = self.igl_rule.deltas(sub)
            for l in range(k):
                out[l] = out[l] + below[l]
        return out

    def own_state(self) -> dict:
        return {
            "readouts": {l: {n: t.clone() for n, t in r.state_dict().items()}
                         for l, r in self.readouts.items()},
            "igl": self.igl_rule.state_dict() if self.igl_rule is not None else None,
        }

    def load_own_state(self, state: dict) -> None:
        for l, r in self.readouts.items():
            r.load_state_dict(state["readouts"][l])  # copies in place: the optimizer keeps them
        if self.igl_rule is not None and state.get("igl") is not None:
            self.igl_rule.load_state_dict(state["igl"])

    def __repr__(self) -> str:
        igl = f", igl_layer={self.igl_layer}, igl_scale={self.igl_scale}" \
            if self.igl_layer is not None else ""
        return (f"LocalLearning({self.inner.__class__.__name__}, scale={self.scale}, "
                f"local={self.local}{igl})")

