"""Exact backpropagation through time (BPTT) with surrogate gradients: the offline reference.

The same network, loss and surrogate as the online rules, but the whole unrolled computation is
kept and differentiated by autograd, through the layers *and* through time (membrane leak,
reset and the spikes of earlier steps). Memory grows linearly with T. Used as a training
baseline and as the exact reference gradient for alignment measurements (OTPE paper,
section 4). It runs the network's own layer objects (their ``forward`` is differentiable,
through the pooling and the weight standardization of conv layers) and its neuron model's pure
step (:meth:`opzo.neurons.Neuron.step`), so FC and conv networks and every neuron model are
handled alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from .batch import BatchStats, check_labels, check_optimizer, check_stop
from .distributed import Communicator, Shard
from .hardware import sharded
from .layer_major import bptt_outputs
from .losses import InstantLoss, MaxOverTime
from .network import SpikingNet, _sources
from .norm import has_sequence_norm
from .sparse import bptt_sparse, bptt_unsupported, sparse_enabled

#: per-step inputs with fewer non-zeros than this fraction go through a sparse product
SPARSE_INPUT_DENSITY = 0.05


class BPTTLearner:
    """Drop-in alternative to :class:`~opzo.learner.OnlineLearner` that trains by BPTT.

    The loss is the same mean over batch and time steps of the instantaneous losses, so its
    gradient is directly comparable with the online rules' estimates. With ``output_leak`` λ
    the loss at step t is on the leaky sum of the outputs O[t] = λ O[t−1] + o[t] (the
    F-variants' loss, OTPE paper section 3.2), the exact reference for the ``f_`` traces.

    With ``readout`` (:class:`~opzo.losses.MaxOverTime`) the loss is instead taken once per
    sample on the maxima over time of the leaky-integrated outputs, as in the SparseGrad
    framework of the LocalZO paper's comparison. ``detach_reset`` treats the reset term
    V_th·s[t−1] as a constant in the gradient, as SparseGrad does (its appendix B.1 /
    LocalZO paper eq. 26, "ignoring the reset mechanism in the gradient").
    """

    name = "bptt"

    def __init__(self, net: SpikingNet, loss: InstantLoss | None = None,
                 output_leak: float = 0.0, readout: MaxOverTime | None = None,
                 detach_reset: bool = False, comm: Communicator | None = None) -> None:
        if not 0.0 <= output_leak <= 1.0:
            raise ValueError(f"output_leak must lie in [0, 1], got {output_leak}")
        if output_leak and readout is not None:
            raise ValueError("output_leak (a loss at every step on the leaky sum) and a "
                             "max-over-time readout (one loss per sample) exclude each other")
        self.net = net
        self.loss = loss or InstantLoss()
        self.output_leak = float(output_leak)
        self.readout = readout
        self.detach_reset = bool(detach_reset)
        self.rule = None
        #: data parallel: the process group whose gradients are summed (None: one process)
        self.comm = comm
        #: asked at every time step of the forward pass; True gives the batch up
        #: (:class:`~opzo.learner.BatchAbandoned`; the backward pass is not cut short)
        self.should_stop: Callable[[], bool] | None = None
        #: when a dict: each batch's ``forward`` and ``backward`` seconds are put there
        #: (``benchmarks/bench_sparse.py``)
        self.timings: dict[str, float] | None = None

    def uses_sparse_backward(self) -> bool:
        """Whether the backward runs over the active neurons only (:mod:`opzo.sparse`): the
        surrogate's ``sparse_backward`` asks for it (``auto``: LocalZO, SparseGrad) and the
        network is one :func:`opzo.sparse.bptt_unsupported` accepts."""
        return sparse_enabled(self.net.surrogate) and bptt_unsupported(self.net) is None

    def accumulate(self, x: Tensor, y: Tensor, T: int | None = None,
                   masks: list[Tensor] | None = None, shard: Shard | None = None
                   ) -> BatchStats:
        """Add the exact BPTT gradient of one batch to every parameter's ``.grad``.

        ``shard``: ``x`` and ``y`` are these rows of a global batch (:mod:`opzo.distributed`):
        the loss is divided by the global batch, dropout masks are drawn for it, and with
        the learner's ``comm`` the gradients are summed over the processes."""
        net, neuron = self.net, self.net.neuron
        x, T = net.prepare_input(x, T)
        static = x.dim() == 2
        batch = x.shape[0] if static else x.shape[1]
        check_labels(y, batch, net.num_outputs, x)
        if masks is None:
            masks = (net.dropout_masks(batch, x) if shard is None
                     else net.dropout_masks(batch, x, shard))
        if shard is not None and shard.size != batch:
            raise ValueError(f"shard {shard} does not hold this batch's {batch} rows")
        norm = batch if shard is None else shard.total  # the B of the batch mean
        if self.uses_sparse_backward():
            with sharded(net, shard):
                loss_value, out_sum = bptt_sparse(
                    net, x, y, T, masks, norm, self.loss,
                    lambda: self._first_currents(x, T, batch), self.output_leak,
                    self.readout, self.detach_reset,
                    should_stop=lambda: check_stop(self.should_stop), timings=self.timings)
            return self._finish(loss_value, out_sum, y, batch)
        timings = self.timings
        start = time.perf_counter()
        state = [neuron.initial_state(batch, n, x) for n in net.hidden_sizes]
        total = x.new_zeros(())
        out_sum = x.new_zeros(batch, net.num_outputs)
        leaky: Tensor | None = None  # O[t] with an output leak
        outputs: list[Tensor] = []  # o[t] for a max-over-time readout
        with torch.enable_grad(), sharded(net, shard):  # chip noise: for the global batch
            # a normaliser over all time steps (tdBN, BN along T): layer by layer over the
            # whole sequence (opzo.layer_major); otherwise step by step
            seq = (bptt_outputs(net, x, T, masks, self.detach_reset)
                   if has_sequence_norm(net) else None)
            first = self._first_currents(x, T, batch) if seq is None else None
            for t in range(T):
                check_stop(self.should_stop)
                if seq is not None:  # the layer-major pass gave every step's output
                    o = seq[t]
                else:
                    o = self._step_graph(state, x if static else x[t],
                                         first if static else first[t], masks)
                if self.readout is not None:
                    outputs.append(o)
                    continue
                out_sum = out_sum + o.detach()
                if self.output_leak:
                    leaky = o if leaky is None else self.output_leak * leaky + o
                    o = leaky
                total = total + self.loss.per_sample(o, y).sum()
            if self.readout is not None:  # one loss per sample, on max_t Y[t]
                out_sum = self.readout.scores(outputs)
                total = self.loss.per_sample(out_sum, y).sum()
                if timings is not None:
                    timings["forward"] = time.perf_counter() - start
                    start = time.perf_counter()
                (total / norm).backward()
                loss_value = float(total.detach())
            else:
                if timings is not None:
                    timings["forward"] = time.perf_counter() - start
                    start = time.perf_counter()
                (total / (norm * T)).backward()
                loss_value = float(total.detach()) / T
        if timings is not None:
            timings["backward"] = time.perf_counter() - start
        return self._finish(loss_value, out_sum, y, batch)

    def _finish(self, loss_value: float, out_sum: Tensor, y: Tensor, batch: int) -> BatchStats:
        """The batch's statistics, after the loss's check and the sum over processes."""
        net = self.net
        if not math.isfinite(loss_value):
            raise FloatingPointError("training loss became NaN/inf: lower the learning rate")
        if self.comm is not None:
            self.comm.all_reduce_([p.grad for p in net.parameters() if p.grad is not None])
        return BatchStats(loss_sum=loss_value,
                          correct=int((out_sum.detach().argmax(1) == y).sum()), count=batch)

    def _step_graph(self, state: list, inp: Tensor, first: Tensor,
                    masks: list[Tensor] | None) -> Tensor:
        """One time step of the network on the pure neuron step, in autograd's graph: every
        hidden layer's current (the first precomputed, ``first``), residual shortcuts, the
        chip's noise, SEW's ADDs and the dropout masks; ``state`` advanced in place. Returns
        the readout o[t]."""
        net = self.net
        adds = getattr(net, "adds", None)
        outs: list[Tensor] = []
        currents: dict[int, Tensor] = {}
        for l, layer in enumerate(net.hidden):
            current = layer(inp, *_sources(layer, outs, currents)) if l > 0 else first
            if net.skips[l] is not None:  # residual shortcut
                current = current + outs[net.skips[l]]
            currents[l] = current
            if net.hardware is not None:  # the chip's noise (opzo.hardware)
                current = net.hardware.perturb_(current, l, scratch=False)
            state[l] = net.neuron.step(state[l], current, net.surrogate, self.detach_reset)
            spikes = state[l]["s"]
            inp = spikes if masks is None else spikes * masks[l]
            if adds is not None and adds[l] is not None:  # SEW's ADD
                inp = inp + net.added(l, outs)
            outs.append(inp)
        return net.readout(inp, *_sources(net.readout, outs, currents))

    def _first_currents(self, x: Tensor, T: int, batch: int) -> Tensor | tuple[Tensor, ...]:
        """The first layer's synaptic current, computed for all steps at once (it does not
        depend on the network's state): once for a static input (B, F); for per-step inputs
        (T, B, F) one product over all T·B rows, through a sparse matrix when the input is
        mostly zeros (spike inputs: latency codes are ~99% zeros), one (B, n_1) per step
        (``unbind``: its backward stacks the T gradients once, where indexing step by step
        would fill a (T, B, n_1) gradient per step)."""
        layer = self.net.hidden[0]
        if x.dim() == 2:
            return layer(x)
        if getattr(layer, "per_step", False):  # batch norm per step (opzo.norm): per step
            return tuple(layer(x[t]) for t in range(T))
        flat = x.reshape(T * batch, -1)
        if layer.is_dense and layer.pool is None:
            nonzero = int(torch.count_nonzero(flat))
            if nonzero < SPARSE_INPUT_DENSITY * flat.numel():
                current = torch.sparse.mm(flat.to_sparse(), layer.weight.t())
                if layer.bias is not None:
                    current = current + layer.bias
                return current.reshape(T, batch, -1).unbind(0)
        return layer(flat).reshape(T, batch, -1).unbind(0)

    # -- the Learner protocol (opzo.learner.Learner): nothing of its own besides the model --
    def parameters(self) -> list[torch.nn.Parameter]:
        """The model's parameters (BPTT owns no other)."""
        return list(self.net.parameters())

    def state_dict(self) -> dict | None:
        """None: BPTT keeps no state between batches."""
        return None

    def load_state_dict(self, state: dict | None) -> None:
        """Nothing to restore."""

    def start_epoch(self, progress: float, freeze_feedback: bool) -> None:
        """No schedule, no feedback."""

    def epoch_metrics(self) -> dict[str, float]:
        return {}

    def train_batch(self, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
                    T: int | None = None, on_grad: Callable[[], None] | None = None,
                    shard: Shard | None = None) -> BatchStats:
        """Clear ``.grad``, accumulate one batch by BPTT, step ``optimizer``."""
        check_optimizer(optimizer, self.net)
        self.net.train()
        optimizer.zero_grad(set_to_none=False)
        stats = self.accumulate(x, y, T, shard=shard)
        if on_grad is not None:
            on_grad()
        optimizer.step()
        return stats
