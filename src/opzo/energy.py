"""Energy proxies of a spiking network: firing rates and synaptic operations (SynOps).

OPZO paper, appendix D.2 and Table 7 (section 5.5): "for event-driven SNNs, the energy costs
on neuromorphic hardware are proportional to the spike count, or more precisely, synaptic
operations induced by spikes". Per hidden layer l (n_l neurons, flattened like its spikes,
n_l = C·H·W for a feature map), over a set of S samples of T steps each:

    firing rate      fr_l   = Σ_b Σ_t Σ_i s_{l,i}^b[t] / (S · T · n_l)
    synaptic ops     SOP_l  = Σ_b Σ_t Σ_i s_{l,i}^b[t] · f_{l,i} / S      (per sample, Σ over T)
    totals           fr     = Σ_l Σ spikes / (S · T · Σ_l n_l)          (neuron-weighted, as
                                                                         the paper's "Total fr")
                     SOP    = Σ_l SOP_l

with f_{l,i} the **fan-out** of neuron i of layer l: the number of synapses its spike drives
(:func:`synaptic_fanout`). Only hidden-layer spikes are counted: the network input (a static
image is an input current, not spikes) and the readout (non-spiking) are not.

**Fan-out, exactly.** Neuron i of hidden layer l drives the op of the next layer (hidden layer
l+1, or the readout after the last hidden layer), through that layer's optional input pooling
P, and every residual shortcut that starts at layer l:

    f_l = Pᵀ opᵀ 1 + (number of layers whose shortcut comes from layer l) · 1

where opᵀ 1 are the column sums of the op's connectivity with every weight 1 (the number of
output neurons each op input reaches) and Pᵀ copies the count of each pooled value to every
input pixel of its window **with weight 1, not 1/k²**. So:

* fully connected next op: f = out_features for every input;
* convolution (stride s, padding p, k×k): f = C_out × the number of output positions whose
  receptive field holds the pixel (inside the zero-padded input). With "same" padding an
  interior pixel reaches k² positions and border neurons fewer (k = 3: 6 on an edge, 4 in
  a corner, on maps of at least 2×2). Counted exactly, not with the interior formula.
* average pooling in front of the next op ("AP<k>", also "GAP"): each spike is one of the
  k×k terms of one pooled input and counts the synapses of that pooled input (the pooling
  folded into the next op's synapses: each of the k² pixels of a window connects where the
  pooled value does, with weight w/k²; a spike still triggers one event per synapse).
  Pooling is non-overlapping, so every input pixel is in at most one window; floor-mode
  pooling drops the last rows or columns when H or W is not divisible by k, and the spikes
  there reach nothing: fan-out 0.
* a residual shortcut from layer j into layer l (I_l = op_l(x_{l−1}) + b_l + x_j) is an
  identity edge: one synapse per neuron of j (1 to 1, to the neuron at the same position).
* the layers of issue 26 (:mod:`opzo.layers_extra`, :mod:`opzo.norm`, :mod:`opzo.nets`):
  strided / padded / max / adaptive pooling count every member of each window (a max
  pooling's winner is data-dependent: an upper bound); a composite layer's terms count the
  synapses of their ops on the outputs they read (a term reading a current, NF-ResNet's
  stream, drives no spike events: its synapses are counted where the current was made); a
  batch norm adds none; SEW's ADD x_l = s_l + P x_j gives x_j's spikes the fan-out of x_l
  (through Pᵀ), as they reach every synapse x_l drives.

**Fan-out, the paper's convention** (``convention="paper"``). The OPZO paper's Table 7
counts SynOps as firing rate times a *dense* fan-out, the same for every neuron of a layer:
an interior neuron's, as if the map had no border. Only the convolutions' counts change: a
k×k convolution of stride s gives every input pixel C_out·k²/s² synapses (stride 1: C_out·k²,
9·C_out for k = 3, where the exact count gives border pixels 6·C_out or 4·C_out); fully
connected ops, pooling, shortcuts and composite terms count as above. So for a layer of n_l
neurons firing at rate fr_l over T steps, SOP_l = fr_l · T · n_l · C_out·k²/s²: with four
spiking convolutions (128C3 at 32², 256C3 at 16², 512C3 at 8², 512C3 at 4², the named net
``conv-table7``) and Table 7's firing rates this gives Table 7's SynOps
(``benchmarks/table7_synops.py``). The exact count is never above the paper's for "same"
padding; both are equal for fully connected nets.

The fan-outs are computed from the network's shapes with torch primitives (the transposed
convolution of ones with a ones kernel, a repeat for the pooling), never from its weights.

Usage (one batch)::

    stats = count_synops(net, x, T=6)     # inference: no noise, no dropout
    stats["firing_rate"], stats["synops"], stats["synops_total"]

pooled over an evaluation set::

    counter = SynOpsCounter(net)
    for x, y in batches:
        for t, (o, rec) in enumerate(net.run(x, T)):
            ...                            # whatever else the evaluation does with o
            counter.add_step(rec.spikes, t)
    counter.result()
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .layers import ConvLayer, DenseLayer
from .layers_extra import CompositeLayer, Pool2d
from .network import SpikingNet, StepRecord
from .norm import Normed

__all__ = ["CONVENTIONS", "SynOpsCounter", "count_synops", "op_fanout", "synaptic_fanout",
           "synops_from_rates"]

#: how fan-outs are counted: every synapse inside the padded map ("exact"), or the interior
#: value for every neuron (the OPZO paper's Table 7, "paper"); module docstring
CONVENTIONS = ("exact", "paper")


def _check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"SynOps convention {convention!r}: choose one of "
                         f"{', '.join(CONVENTIONS)}")
    return convention


def count_dtype(device: torch.device) -> torch.dtype:
    """The dtype counts are kept in: float64 (exact integers up to 2⁵³), float32 on ``mps``
    (which has no float64; exact up to 2²⁴ per sum)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _device_of(net: SpikingNet) -> torch.device:
    return net.readout.weight.device


def pool_count_transpose(pool: Pool2d, fan: Tensor, in_shape: Sequence[int]) -> Tensor:
    """For every element of a pooling's input (C, H, W), the sum of ``fan`` over the pooled
    values whose window holds it (Pᵀ with weight 1 per window member; zero padding and
    dropped rows reach nothing), flattened. Max pooling counts every member of a window."""
    c, h, w = (int(d) for d in in_shape)
    g = fan.reshape(1, *fan.shape[-3:])
    if pool.kind == "adaptive":  # Pᵀ divides by each window's area: multiply it back
        rows = [r1 - r0 for r0, r1 in pool._windows(h)]
        cols = [c1 - c0 for c0, c1 in pool._windows(w)]
        area = torch.tensor(rows, dtype=g.dtype, device=g.device)[:, None] * torch.tensor(
            cols, dtype=g.dtype, device=g.device)[None, :]
        return pool.transpose(g * area, (h, w)).reshape(-1)
    avg = Pool2d("avg", pool.kernel, pool.stride, pool.padding)  # the same windows
    return (avg.transpose(g, (h, w)) * float(pool.kernel ** 2)).reshape(-1)


def _term_fanout(term, *, device, dtype, convention: str = "exact") -> Tensor:
    """Synapses per element of a composite layer's term source (1 for an identity term)."""
    if term.op is None:
        return torch.ones(math.prod(term.in_shape), device=device, dtype=dtype)
    return op_fanout(term.op, device=device, dtype=dtype, convention=convention)


def op_fanout(layer: DenseLayer | ConvLayer, *, device: torch.device | None = None,
              dtype: torch.dtype | None = None, convention: str = "exact") -> Tensor:
    """For every element of what ``layer`` receives (its ``in_shape``, flattened), the number
    of synapses of the layer's op it reaches, through the layer's input pooling (see the
    module docstring): Pᵀ opᵀ 1 with 1 per pooled element, shape (prod(in_shape),).

    ``device``: where to make it (default: the layer's weight's); ``dtype``: default
    :func:`count_dtype` of the device; ``convention``: ``"exact"`` (every synapse inside the
    padded map) or ``"paper"`` (a convolution's interior count C_out·k²/s² for every pixel,
    the OPZO paper's Table 7).
    """
    _check_convention(convention)
    device = layer.weight.device if device is None else torch.device(device)
    dtype = count_dtype(device) if dtype is None else dtype
    if isinstance(layer, Normed):  # batch norm is elementwise: the op's synapses
        return op_fanout(layer.inner, device=device, dtype=dtype, convention=convention)
    if isinstance(layer, CompositeLayer):  # the terms that read the layer's input
        fan = torch.zeros(math.prod(layer.in_shape), device=device, dtype=dtype)
        for t in layer.terms:
            if t.source == "in":
                fan = fan + _term_fanout(t, device=device, dtype=dtype,
                                         convention=convention)
        return fan
    op_in = tuple(int(d) for d in layer.op_in_shape)
    if isinstance(layer, ConvLayer):
        c_in, h, w = op_in
        c_out, ho, wo = (int(d) for d in layer.out_shape)
        k, st, p = layer.kernel_size, layer.stride, layer.padding
        if convention == "paper":  # dense: an interior pixel's count for every pixel
            fan = torch.full((c_in, h, w), c_out * k * k / (st * st), device=device,
                             dtype=dtype)
        else:
            # one channel: the number of output positions each input pixel is read by, then
            # times C_out (every output channel reads every input channel)
            positions = torch.nn.grad.conv2d_input(
                (1, 1, h, w), torch.ones(1, 1, k, k, device=device, dtype=dtype),
                torch.ones(1, 1, ho, wo, device=device, dtype=dtype), stride=st, padding=p)
            fan = (positions[0, 0] * c_out).expand(c_in, h, w)
    else:
        fan = torch.full(op_in, float(layer.out_features), device=device, dtype=dtype)
    if layer.pool is None:
        return fan.reshape(-1).clone()
    if isinstance(layer.pool, Pool2d):
        return pool_count_transpose(layer.pool, fan.reshape(op_in), layer.in_shape)
    kh, kw = layer.pool
    c, h_in, w_in = (int(d) for d in layer.in_shape)
    fan = fan.reshape(c, op_in[1], op_in[2])
    spread = fan.repeat_interleave(kh, dim=1).repeat_interleave(kw, dim=2)
    full = torch.zeros(c, h_in, w_in, device=device, dtype=dtype)  # floor mode: dropped → 0
    full[:, : spread.shape[1], : spread.shape[2]] = spread
    return full.reshape(-1)


def synaptic_fanout(net: SpikingNet, *, device: torch.device | None = None,
                    dtype: torch.dtype | None = None,
                    convention: str = "exact") -> list[Tensor]:
    """f_l for every hidden layer l: shape (n_l,), flattened like the layer's spikes, the
    number of synapses each neuron's spike drives (next op through its pooling, plus one
    identity synapse per residual shortcut leaving the layer; module docstring).

    ``device`` default: the network's (its readout weight's); ``dtype`` default
    :func:`count_dtype`; ``convention``: ``"exact"`` or ``"paper"`` (:func:`op_fanout`).
    """
    _check_convention(convention)
    device = _device_of(net) if device is None else torch.device(device)
    hidden = list(net.hidden)
    out: list[Tensor] = []
    for l in range(len(hidden)):
        nxt = hidden[l + 1] if l + 1 < len(hidden) else net.readout
        if getattr(nxt, "uses_input", True):
            f = op_fanout(nxt, device=device, dtype=dtype, convention=convention)
        else:  # the next layer reads earlier layers only (SEW's conv1 after a downsampling)
            f = torch.zeros(hidden[l].out_features, device=device,
                            dtype=count_dtype(device) if dtype is None else dtype)
        if f.numel() != hidden[l].out_features:
            raise ValueError(f"layer {l + 1} has {hidden[l].out_features} neurons but the op "
                             f"after it takes {f.numel()} inputs")
        shortcuts = sum(1 for j in net.skips if j == l)
        if shortcuts:
            f = f + shortcuts
        for reader in [*hidden[l + 1:], net.readout]:  # composite terms reading x_l
            for t in getattr(reader, "terms", ()):
                if t.source == ("out", l):
                    f = f + _term_fanout(t, device=device, dtype=dtype,
                                         convention=convention)
        out.append(f)
    adds = getattr(net, "adds", None) or []
    for l in range(len(adds) - 1, -1, -1):  # SEW's ADD x_l = s_l + P x_j: x_j's spikes
        if adds[l] is None:                  # drive whatever x_l drives
            continue
        j, pool = adds[l]
        f = out[l]
        if pool is not None:
            f = pool_count_transpose(pool, f.reshape(hidden[l].out_shape), hidden[j].out_shape)
        out[j] = out[j] + f
    return out


class SynOpsCounter:
    """Accumulates spike counts and synaptic operations of hidden layers over steps and
    batches (see the module docstring for the equations); autograd-free.

    Feed it every step's spikes, ``rec.spikes`` of :meth:`SpikingNet.run`:

    * :meth:`add_step` ``(spikes, t)``: one step (``t`` = the step's index in its batch; at
      ``t == 0`` the batch's B samples are counted, so every batch must start at t = 0);
    * :meth:`add` ``(records)``: all steps of one batch (an iterable of :class:`StepRecord`
      or of per-layer spike lists; consumed lazily, so ``(rec for _, rec in net.run(x, T))``
      keeps one step in memory).

    :meth:`result` gives the dict described there. Counts stay on the spikes' device until
    :meth:`result` (no synchronisation per step). For several processes, :meth:`sums` /
    :meth:`load_sums` give and take the raw sums as a list of floats (e.g. through
    ``Communicator.sum``), or :meth:`merge` adds another counter.

    ``convention``: how a spike's synapses are counted, ``"exact"`` (default) or ``"paper"``
    (the OPZO paper's dense fan-out; module docstring).
    """

    def __init__(self, net: SpikingNet, *, device: torch.device | None = None,
                 convention: str = "exact") -> None:
        self.device = _device_of(net) if device is None else torch.device(device)
        self.dtype = count_dtype(self.device)
        self.convention = _check_convention(convention)
        self.fanout = synaptic_fanout(net, device=self.device, dtype=self.dtype,
                                      convention=convention)
        self.neurons = [int(f.numel()) for f in self.fanout]
        self.reset()

    def reset(self) -> None:
        """Forget everything counted."""
        layers = len(self.neurons)
        self._spikes = torch.zeros(layers, device=self.device, dtype=self.dtype)
        self._synops = torch.zeros(layers, device=self.device, dtype=self.dtype)
        self._host: list[float] | None = None  # sums loaded from elsewhere, added on result
        self.samples = 0
        self.sample_steps = 0

    @torch.no_grad()
    def add_step(self, spikes: Sequence[Tensor], t: int) -> list[Tensor]:
        """Count one time step: ``spikes`` per hidden layer, each (B, n_l) (or (B, C, H, W));
        ``t``: the step's index within its batch (0 starts a batch of B new samples).
        Returns the step's spike count per layer (0-dim tensors on the spikes' device), so a
        caller that also reports spikes need not sum them again."""
        if len(spikes) != len(self.neurons):
            raise ValueError(f"expected spikes of {len(self.neurons)} hidden layers, got "
                             f"{len(spikes)}")
        batch = int(spikes[0].shape[0])
        counts: list[Tensor] = []
        for l, (s, f) in enumerate(zip(spikes, self.fanout)):
            s = s.reshape(s.shape[0], -1)
            if s.shape != (batch, f.numel()):
                raise ValueError(f"layer {l + 1}: spikes of shape {tuple(s.shape)}, expected "
                                 f"({batch}, {f.numel()})")
            per_neuron = s.sum(0, dtype=self.dtype)  # exact: float64 sums of 0/1
            count = per_neuron.sum()
            self._spikes[l] += count
            self._synops[l] += per_neuron @ f
            counts.append(count)
        if t == 0:
            self.samples += batch
        self.sample_steps += batch
        return counts

    def add(self, records: Iterable[StepRecord | Sequence[Tensor]]) -> None:
        """Count all steps of one batch (StepRecords, or per-layer spike lists)."""
        for t, rec in enumerate(records):
            self.add_step(rec.spikes if isinstance(rec, StepRecord) else rec, t)

    def merge(self, other: SynOpsCounter) -> None:
        """Add the counts of ``other`` (a counter of the same network)."""
        if other.neurons != self.neurons:
            raise ValueError("counters of different networks")
        if other.convention != self.convention:
            raise ValueError(f"counters of different conventions ({self.convention}, "
                             f"{other.convention})")
        self.load_sums([a + b for a, b in zip(self.sums(), other.sums())])

    def sums(self) -> list[float]:
        """The raw sums: [samples, sample_steps, spikes per layer..., synops per layer...]
        (Σ over samples; add these over processes, then :meth:`load_sums`)."""
        spikes, synops = self._spikes.tolist(), self._synops.tolist()
        if self._host is not None:
            n = len(self.neurons)
            spikes = [a + b for a, b in zip(spikes, self._host[:n])]
            synops = [a + b for a, b in zip(synops, self._host[n:])]
        return [float(self.samples), float(self.sample_steps), *spikes, *synops]

    def load_sums(self, sums: Sequence[float]) -> None:
        """Replace the counts by ``sums`` (as :meth:`sums` lays them out)."""
        n = len(self.neurons)
        if len(sums) != 2 + 2 * n:
            raise ValueError(f"expected {2 + 2 * n} sums, got {len(sums)}")
        self._spikes.zero_()
        self._synops.zero_()
        self.samples, self.sample_steps = int(round(sums[0])), int(round(sums[1]))
        self._host = [float(v) for v in sums[2:]]

    def all_reduce(self, comm: Any) -> None:
        """Sum the counts over processes with ``comm.sum(list[float]) -> list[float]``
        (:class:`opzo.distributed.Communicator`)."""
        self.load_sums(comm.sum(self.sums()))

    def result(self) -> dict[str, Any]:
        """The energy proxies of everything counted (lists are per hidden layer):

        * ``firing_rate``: spikes per neuron per step, fr_l;
        * ``spikes``: spikes per sample (Σ over T and the layer's neurons);
        * ``synops``: synaptic operations per sample (Σ over T), SOP_l;
        * ``firing_rate_total`` (neuron-weighted), ``synops_total`` (Σ_l SOP_l);
        * ``neurons`` n_l, ``fanout_mean`` (mean f_l over the layer's neurons), ``samples``
          S and ``steps`` (T: sample-steps / samples).

        All zeros (and ``steps`` 0) when nothing was counted.
        """
        sums = self.sums()
        n = len(self.neurons)
        samples, sample_steps = sums[0], sums[1]
        spikes, synops = sums[2:2 + n], sums[2 + n:]
        per_sample = 1.0 / samples if samples else 0.0
        rates = [s / (k * sample_steps) if sample_steps else 0.0
                 for s, k in zip(spikes, self.neurons)]
        total_rate = (sum(spikes) / (sum(self.neurons) * sample_steps) if sample_steps
                      else 0.0)
        return {
            "firing_rate": rates,
            "spikes": [s * per_sample for s in spikes],
            "synops": [s * per_sample for s in synops],
            "firing_rate_total": total_rate,
            "synops_total": sum(synops) * per_sample,
            "neurons": list(self.neurons),
            "fanout_mean": [float(f.mean()) for f in self.fanout],
            "samples": int(samples),
            "steps": sample_steps / samples if samples else 0.0,
        }


@torch.no_grad()
def count_synops(net: SpikingNet, x: Tensor, T: int | None = None,
                 counter: SynOpsCounter | None = None,
                 convention: str = "exact") -> dict[str, Any]:
    """Run inference on one batch (evaluation mode: no noise, no dropout; the network's
    training mode is restored) and return :meth:`SynOpsCounter.result` for it.

    ``x``: as :meth:`SpikingNet.run` takes it (static (B, ...) with ``T``, or (T, B, ...)).
    ``counter``: add to this counter instead of a fresh one (its result, pooled, is
    returned); ``convention``: that of a fresh counter (``"exact"`` or ``"paper"``).
    """
    counter = SynOpsCounter(net, convention=convention) if counter is None else counter
    was_training = net.training
    net.eval()
    try:
        counter.add(rec for _, rec in net.run(x, T))
    finally:
        net.train(was_training)
    return counter.result()


def synops_from_rates(net: SpikingNet, rates: Sequence[float], T: int,
                      convention: str = "paper") -> list[float]:
    """SynOps per sample of every hidden layer from its firing rate alone, every neuron of a
    layer firing at the layer's rate: SOP_l = fr_l · T · Σ_i f_{l,i} (module docstring; with
    ``convention="paper"``, fr_l · T · n_l · the dense fan-out, the OPZO paper's Table 7).
    For reading a paper's table: a trained network's own count is :class:`SynOpsCounter`'s.
    """
    fans = synaptic_fanout(net, convention=convention)
    if len(rates) != len(fans):
        raise ValueError(f"{len(rates)} firing rates for {len(fans)} hidden layers")
    return [float(r) * T * float(f.sum()) for r, f in zip(rates, fans)]
