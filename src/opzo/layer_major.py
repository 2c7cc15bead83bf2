"""Layer-major forward passes for networks normalised over all time steps (``tdbn``,
``bn-all-t``; :mod:`opzo.norm`).

With statistics over (batch, time, space), layer l's current at step t needs layer l's
pre-normalisation currents of every step, hence the spikes of layer l−1 at every step. The
networks are feed-forward in space (a layer at step t reads earlier layers at the same step
only; time enters through each layer's own neurons), so the unrolled computation can be
ordered layer by layer instead of step by step: layer l's op runs once on the T·B rows of
its input over all steps (one normalisation over them), then its neurons run through the T
steps. The values are those of the step-by-step order for every per-step operation; only the
normalisation differs, as asked. Used by :class:`~opzo.bptt.BPTTLearner` (autograd) and
:class:`~opzo.pzo.UntruncatedLearner` (explicit), the methods that see the whole sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .network import SpikingNet
from .norm import whole_sequence

__all__ = ["bptt_outputs", "untruncated_forward"]


def _cat(seq: list[Tensor]) -> Tensor:
    return torch.cat(seq, dim=0)


def _sources_all(layer, outs: list[list[Tensor]], currents: list[list[Tensor]]
                 ) -> list[Tensor]:
    return [_cat(outs[j] if kind == "out" else currents[j])
            for kind, j in getattr(layer, "sources", ())]


def bptt_outputs(net: SpikingNet, x: Tensor, T: int, masks: list[Tensor] | None,
                 detach_reset: bool = False) -> list[Tensor]:
    """o[t] for t = 0..T−1, layer-major, differentiable (BPTT through layers and time).
    ``x``: (B, F) static or (T, B, F) flattened."""
    neuron = net.neuron
    adds = getattr(net, "adds", None)
    static = x.dim() == 2
    batch = x.shape[0] if static else x.shape[1]
    outs: list[list[Tensor]] = []
    currents: list[list[Tensor]] = []
    prev: list[Tensor] | None = None
    with whole_sequence(net):
        for l, layer in enumerate(net.hidden):
            if l == 0:
                cur = ([layer(x)] * T if static
                       else list(layer(x.reshape(T * batch, -1)).split(batch)))
            else:
                assert prev is not None
                cur = list(layer(_cat(prev), *_sources_all(layer, outs, currents)).split(batch))
            j = net.skips[l]
            if j is not None:
                cur = [c + o for c, o in zip(cur, outs[j])]
            currents.append(cur)
            state = neuron.initial_state(batch, net.hidden_sizes[l], x)
            layer_out = []
            for t in range(T):
                c = cur[t]
                if net.hardware is not None:
                    c = net.hardware.perturb_(c, l, scratch=False)
                state = neuron.step(state, c, net.surrogate, detach_reset)
                s = state["s"]
                out = s if masks is None else s * masks[l]
                if adds is not None and adds[l] is not None:  # SEW's ADD
                    out = out + net.added(l, {adds[l][0]: outs[adds[l][0]][t]})
                layer_out.append(out)
            outs.append(layer_out)
            prev = layer_out
        assert prev is not None
        o = net.readout(_cat(prev), *_sources_all(net.readout, outs, currents))
    return list(o.split(batch))


@torch.no_grad()
def untruncated_forward(net: SpikingNet, x: Tensor, T: int, masks: list[Tensor] | None,
                        noise: list[list[Tensor]] | None, alpha: float) -> dict:
    """The forward pass of untruncated PZO / DFA through time, layer-major (no autograd),
    with noise α z_l[t] after the neurons (``noise[t][l]``). Returns the fields of
    :class:`~opzo.pzo.UnrolledBatch` that depend on the pass: ``u``, ``s`` (T, B, n_l),
    ``inputs`` (T, B, n_in; (B, n_in) for a static input's first layer), ``outputs``
    (T, B, m), ``readout_in`` (T, B, n_r). Each normaliser keeps the statistics of its
    whole-sequence call for the transposes of the weight gradients."""
    neuron = net.neuron
    adds = getattr(net, "adds", None)
    static = x.dim() == 2
    batch = x.shape[0] if static else x.shape[1]
    outs: list[list[Tensor]] = []
    currents: list[list[Tensor]] = []
    us, ss, ins = [], [], []
    prev: list[Tensor] | None = None
    with whole_sequence(net):
        for l, layer in enumerate(net.hidden):
            if l == 0 and static:
                op_in = layer.op_input(x)
                cur = [layer.op(op_in)] * T
                ins.append(op_in)
            else:
                src = x.reshape(T * batch, -1) if l == 0 else _cat(prev)  # type: ignore[arg-type]
                extra = [] if l == 0 else _sources_all(layer, outs, currents)
                op_in = layer.op_input(src, *extra)
                cur = list(layer.op(op_in).split(batch))
                ins.append(op_in.reshape(T, batch, -1))
            j = net.skips[l]
            if j is not None:
                cur = [c + o for c, o in zip(cur, outs[j])]
            currents.append(cur)
            state = neuron.initial_state(batch, net.hidden_sizes[l], x)
            u_l, s_l, out_l = [], [], []
            for t in range(T):
                c = cur[t].clone()
                if net.hardware is not None:
                    c = net.hardware.perturb_(c, l, scratch=True)
                state = neuron.step_(state, c, True)
                u_l.append(state["u"].clone())
                s_l.append(state["s"].clone())
                out = state["s"]
                if noise is not None:
                    out = out + alpha * noise[t][l]
                if masks is not None:
                    out = out * masks[l]
                if adds is not None and adds[l] is not None:  # SEW's ADD
                    out = out + net.added(l, {adds[l][0]: outs[adds[l][0]][t]})
                out_l.append(out)
            us.append(torch.stack(u_l))
            ss.append(torch.stack(s_l))
            outs.append(out_l)
            prev = out_l
        assert prev is not None
        r_in = net.readout.op_input(_cat(prev), *_sources_all(net.readout, outs, currents))
        o = net.readout.op(r_in)
    return dict(u=us, s=ss, inputs=ins, outputs=o.reshape(T, batch, -1),
                readout_in=r_in.reshape(T, batch, -1))
