"""Truly online learning on a stream: state, traces and feedback persist across calls.

The OPZO paper's target is a device that adapts after deployment and never stops (section
1, appendix D.5: "post-deployment adaptation and continual learning are key scenarios").
:class:`~opzo.learner.OnlineLearner` starts every batch from rest. :class:`StreamLearner`
instead sees one unbroken stream of time steps: samples presented back to back with no
reset, the labels as a target stream y[t], and it applies the optimizer every ``update_every``
= k steps. What persists from one :meth:`StreamLearner.feed` call to the next:

* the network state (membrane potentials u_l, last spikes s_l of every hidden layer);
* the temporal traces (OTTT's â_l[t] = λ â_l[t−1] + x_{l−1}[t] and b̂, or any other trace of
  :mod:`opzo.traces`) and the readout's output trace;
* the rule's own state (OPZO's M, eq. 6, updated at every step; DKP's feedback; the noise
  sampler's last z for antithetic pairs, whose parity follows the global step);
* the gradient accumulated since the last update, the step counter, and the dropout masks
  (drawn once at :meth:`StreamLearner.reset`: a stream has no sample boundary to redraw at).

Each step t (global index) is the step of :class:`~opzo.learner.OnlineLearner`: noise,
network step (eq. 1), e[t] = ∂L(o[t], y[t])/∂o in closed form, δ_l[t] from the rule, trace
accumulation. The loss of one update window is the mean over the batch of parallel streams
B and its k steps, (1/(B·k)) Σ_b Σ_{t in window} L_b[t], so e[t] is scaled by 1/(B·k); a
label −1 means "no target at this step" (e[t] = 0 for that stream). When (t + 1) is a
multiple of k the traces are flushed, the optimizer and the rule step, and ``.grad`` is
cleared. One window of k steps from rest is exactly one batch of ``OnlineLearner`` with
T = k (tested).

**Chunking.** Cutting a stream into chunks of any sizes gives the same weights, M and
outputs as feeding it at once, bit for bit (tested with ``torch.equal``): every step runs the
same operations on tensors of the same shapes in the same order, whatever the chunk; each
step's input is copied into a fresh (allocator-aligned) tensor so that no BLAS kernel sees a
different memory alignment; random numbers (noise) are drawn per step in stream order. This
holds on one machine, device and thread count; across those, results agree to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import check_optimizer
from .losses import InstantLoss
from .network import NetState, SpikingNet
from .rules.base import SpatialRule, StepContext
from .traces import OutputTrace, Trace, make_output_trace, make_trace, record_for_rule

__all__ = ["StreamLearner", "StreamStats"]


@dataclass
class StreamStats:
    """What one :meth:`StreamLearner.feed` call produced.

    ``outputs``: o[t] of every step, (n, B, m) (with the noise the rule injected);
    ``losses``: Σ_b L_b[t] of every step over the streams with a target, (n,);
    ``updates``: how many optimizer steps were applied during the call.
    """

    outputs: Tensor
    losses: Tensor
    updates: int


class StreamLearner:
    """Online learning on a continuous stream (see the module docstring).

    Example::

        net = SpikingMLP([50, 128, 128, 10])
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        stream = StreamLearner(net, OPZO(), opt, update_every=10)
        for x_chunk, y_chunk in chunks:          # (n, B, F) inputs, (n, B) labels
            stats = stream.feed(x_chunk, y_chunk)

    ``rule``: any spatial rule (OPZO, spatial BP = OTTT, DFA, DKP, ZO); ``trace``: any name of
    :data:`opzo.traces.TRACES`. The optimizer must hold the net's parameters (and the rule's
    own, for local learning).
    """

    def __init__(self, net: SpikingNet, rule: SpatialRule, optimizer: torch.optim.Optimizer,
                 loss: InstantLoss | None = None, trace: str = "ottt",
                 update_every: int = 1, gbar: str = "paper") -> None:
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1 step, got {update_every}")
        check_optimizer(optimizer, net)
        self.net = net
        self.rule = rule
        self.optimizer = optimizer
        self.loss = loss or InstantLoss()
        self.trace_name = trace
        self.gbar = gbar
        self.update_every = int(update_every)
        for l, layer in enumerate(net.hidden):  # validate the trace name now
            make_trace(trace, net.neuron, feeds_readout=(l == len(net.hidden) - 1), layer=layer,
                       gbar=gbar)
        if not rule.is_bound_to(net):
            rule.bind(net)
        self.state: NetState | None = None
        self.traces: list[Trace] = []
        self.head: OutputTrace | None = None
        self.masks: list[Tensor] | None = None
        self.gains: list[Tensor] | None = None
        #: global time step of the next input (steps seen since :meth:`reset`)
        self.step_count = 0
        self.batch = 0

    def _parameters(self) -> list[torch.nn.Parameter]:
        return [*self.net.parameters(), *self.rule.parameters()]

    @torch.no_grad()
    def reset(self, batch: int, like: Tensor) -> None:
        """Start a new stream of ``batch`` parallel streams: the network at rest, empty traces,
        fresh dropout masks, no pending gradient (the rule's learned state, M, is kept)."""
        net = self.net
        net.train()
        self.batch = int(batch)
        self.state = net.initial_state(batch, like)
        self.traces = [
            make_trace(self.trace_name, net.neuron, static_input=False,
                       feeds_readout=(l == len(net.hidden) - 1), layer=layer, gbar=self.gbar)
            for l, layer in enumerate(net.hidden)
        ]
        self.head = make_output_trace(self.trace_name, net.neuron.lam)
        self.masks = net.dropout_masks(batch, like)
        self.gains = None
        if self.masks is not None and not net.fuses_local_derivative(like):
            gain = net.surrogate.gain()
            self.gains = [m * gain for m in self.masks]
        self.rule.start_batch()
        self.step_count = 0
        for p in self._parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            else:
                p.grad.zero_()

    def _update(self) -> None:
        """Flush the traces, step the optimizer and the rule, clear ``.grad``."""
        for layer, tr in zip(self.net.hidden, self.traces):
            tr.flush(layer)
        with torch.enable_grad():
            self.optimizer.step()
        self.rule.optimizer_step()
        for p in self._parameters():
            assert p.grad is not None
            p.grad.zero_()

    @torch.no_grad()
    def feed(self, x: Tensor, y: Tensor) -> StreamStats:
        """Run the next n steps of the stream: ``x`` (n, B, F) (or (n, B, *input_shape)),
        ``y`` (n, B) labels (−1: no target at that step). Starts the stream (:meth:`reset`)
        on the first call."""
        net, rule = self.net, self.rule
        if x.dim() < 3:
            raise ValueError("a stream chunk has shape (n, B, F): one input per time step")
        x, n = net.prepare_input(x, None)
        batch = x.shape[1]
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64:
            raise ValueError(f"y (the labels) must be an int64 (torch.long) tensor of class "
                             f"indices, got {getattr(y, 'dtype', type(y).__name__)}: pass "
                             "y.long()")
        if y.shape != (n, batch):
            raise ValueError(f"labels must have shape ({n}, {batch}), got {tuple(y.shape)}")
        if y.numel() and (y.min() < -1 or y.max() >= net.num_outputs):
            raise ValueError(f"labels must lie in 0..{net.num_outputs - 1} (or -1: no target)")
        if self.state is None:
            self.reset(batch, x)
        elif batch != self.batch:
            raise ValueError(f"this stream has {self.batch} parallel streams, the chunk {batch}")
        state, head = self.state, self.head
        assert state is not None and head is not None
        m = net.num_outputs
        scale = 1.0 / (batch * self.update_every)
        outputs = x.new_empty(n, batch, m)
        losses = x.new_zeros(n)
        updates = 0
        for i in range(n):
            t = self.step_count
            x_t = x[i].clone(memory_format=torch.contiguous_format)  # fresh, aligned storage
            labels = y[i]
            has = labels >= 0
            lab = labels.clamp(min=0)
            target = F.one_hot(lab, m).to(x.dtype)
            noise = rule.perturbation(t, batch, x_t)
            if rule.noise is not None:
                alpha, pos = rule.noise.alpha, rule.noise.position
            else:
                alpha, pos = 0.0, "after"
            o, rec = net.step(state, x_t, noise=noise, noise_scale=alpha, noise_position=pos,
                              masks=self.masks, gains=self.gains, local_derivative=True)
            assert rec.inputs is not None and rec.readout_in is not None
            outputs[i] = o
            lb, e = self.loss.value_and_error(head.push(o, rec.readout_in), target, lab)
            if not bool(has.all()):
                keep = has.to(x.dtype)
                lb.mul_(keep)
                e.mul_(keep[:, None])
            losses[i] = lb.sum()
            e.mul_(scale)
            for l, tr in enumerate(self.traces):
                tr.push(rec.inputs[l], rec, l)
            rec = record_for_rule(rec, self.traces)
            ctx = StepContext(t=t, T=self.update_every, output=o, error=e, loss=lb.mul_(scale),
                              record=rec, net=net, target=target, labels=lab,
                              loss_fn=self.loss, scale=scale)
            deltas = rule.deltas(ctx)
            for layer, tr, delta in zip(net.hidden, self.traces, deltas):
                tr.accumulate(delta, layer)
            head.accumulate(e, net.readout)
            self.step_count += 1
            if self.step_count % self.update_every == 0:
                self._update()
                updates += 1
        return StreamStats(outputs=outputs, losses=losses, updates=updates)
