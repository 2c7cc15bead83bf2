"""The online learning loop: forward in time, one noisy forward pass per step, no autograd.

For one batch, at every time step t = 1..T (OPZO paper section 4.3, OTTT section 3.1):

1. the rule may draw noise α z_l[t]; the network advances one step (eq. 1) → o[t];
2. the output error e[t] = ∂L[t]/∂o[t] in closed form (:mod:`opzo.losses`; with an F-trace
   the loss is on the leaky sum of the outputs);
3. each layer's temporal trace records the step (:mod:`opzo.traces`) and may replace the local
   derivative ψ(u_l[t]) the rule uses (OTPE's ḡ);
4. the rule gives δ_l[t] = ∂L[t]/∂u_l[t] for each hidden layer (spatial credit);
5. the traces turn them into weight gradients (OTTT: ∇W_l += δ_l[t]ᵀ â_l[t], for a conv layer
   the conv weight-gradient of δ_l[t] against â_l[t]; OSTL, OTPE, approximate OTPE: their
   eligibilities); the readout gets ∇W_N += e[t]ᵀ x_{N−1}[t], ∇b_N += Σ_b e[t].

Nothing here depends on the layer type: per-layer tensors are flattened (B, n_l) and each
layer object applies its own op, transpose and weight gradient (:mod:`opzo.layers`).

The loss is the mean over the batch and the T steps, so gradients are summed over t and divided
by B·T. ``update="batch"`` (OTTT_A) applies one optimizer step per batch; ``update="step"``
(OTTT_O, truly online) applies one after every time step with that step's gradient.
Memory does not depend on T: only the current state and traces are kept (O(n) per neuron for
OTTT and approximate OTPE, O(n²) for OSTL and OTPE, OTPE paper Table 1).

Data parallel (:mod:`opzo.distributed`): with a ``shard`` the batch is this process's rows of
a global batch of ``shard.total`` samples; B above is the global batch, the noise and dropout
masks are drawn for the global batch (each process keeps its rows), and with a ``comm`` the
gradients (and DKP's feedback gradient) are summed over the processes before every optimizer
step, so every process steps with the global batch's gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import BatchAbandoned as BatchAbandoned  # its home before opzo.batch
from .batch import BatchStats, check_labels, check_optimizer, check_stop, score_steps
from .chip import ChipBackend, check_fc, chip_record, run_step
from .distributed import Communicator, Shard
from .energy import SynOpsCounter
from .hardware import sharded
from .losses import InstantLoss, MaxOverTime
from .network import NetState, SpikingNet, StepRecord
from .rules.base import SpatialRule, StepContext
from .traces import OTTTTrace, OutputTrace, Trace, make_output_trace, make_trace, record_for_rule

UPDATE_MODES = ("batch", "step")


class Learner(Protocol):
    """What a run (:mod:`opzo.train`) asks of a learner, whatever it is (online with a rule,
    :class:`~opzo.bptt.BPTTLearner`, :class:`~opzo.pzo.UntruncatedLearner`): the run never
    asks which kind it holds.

    * :meth:`parameters`: every tensor the optimizer must hold, the model's first, then what
      the learner owns besides (local readouts);
    * :meth:`state_dict` / :meth:`load_state_dict`: the learner's own state for the checkpoint
      (a rule's feedback and noise; None when it has none);
    * :meth:`start_epoch`: the epoch hook (schedules over training, freezing learned
      feedback);
    * :meth:`epoch_metrics`: the learner's entries of the epoch's metrics row (the noise
      scale α);
    * ``train_batch(x, y, optimizer, T=..., shard=..., on_grad=...)``: one batch.
    """

    net: SpikingNet
    #: the spatial rule (None: the learner has none, e.g. BPTT); for the diagnostics
    rule: SpatialRule | None

    def parameters(self) -> list[torch.nn.Parameter]: ...

    def state_dict(self) -> dict | None: ...

    def load_state_dict(self, state: dict | None) -> None: ...

    def start_epoch(self, progress: float, freeze_feedback: bool) -> None: ...

    def epoch_metrics(self) -> dict[str, Any]: ...

    def train_batch(self, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
                    T: int | None = None, on_grad: Callable[[], None] | None = None,
                    shard: Shard | None = None) -> BatchStats: ...


@dataclass
class _Batch:
    """What every time step of one batch shares (see :meth:`OnlineLearner.accumulate`)."""

    x: Tensor
    y: Tensor
    T: int
    batch: int
    shard: Shard | None
    traces: list[Trace]
    head: OutputTrace
    state: NetState
    masks: list[Tensor] | None
    gains: list[Tensor] | None
    first: Tensor | None
    first_in: Tensor | None
    total: int
    scale: float
    reduce: Callable[[Tensor], None] | None
    target: Tensor


class OnlineLearner:
    """Trains a :class:`~opzo.network.SpikingNet` (FC or conv) with a spatial rule and a
    temporal trace (default OTTT's), writing ``.grad``.

    Example::

        net = SpikingMLP([784, 800, 800, 10], dropout=0.2)
        learner = OnlineLearner(net, OPZO())
        opt = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=2e-4)
        stats = learner.train_batch(x, y, opt, T=6)   # x: (B, 784) static or (T, B, 784)

    A conv net takes (B, C, H, W) or (T, B, C, H, W) inputs (or the same flattened).
    """

    def __init__(
        self,
        net: SpikingNet,
        rule: SpatialRule,
        loss: InstantLoss | None = None,
        trace: str = "ottt",
        update: str = "batch",
        gbar: str = "paper",
        comm: Communicator | None = None,
        chip: ChipBackend | None = None,
        grad_steps: int = 1,
    ) -> None:
        if update not in UPDATE_MODES:
            raise ValueError(f"unknown update mode {update!r}; choose one of {UPDATE_MODES}")
        self.net = net
        self.rule = rule
        self.loss = loss or InstantLoss()
        self.trace_name = trace
        self.gbar = gbar  # OTPE's ḡ normalisation (opzo.traces.leaky_mean)
        for l, layer in enumerate(net.hidden):  # validate the name and the layers now
            make_trace(trace, net.neuron, feeds_readout=(l == len(net.hidden) - 1), layer=layer,
                       gbar=gbar)
        self.update = update
        if grad_steps < 0:
            raise ValueError(f"grad_steps must be >= 0 (0: all T steps), got {grad_steps}")
        #: OTTT trace: the weight gradients of this many steps in one product (0: all T; 1:
        #: one product per step, the default; :class:`~opzo.traces.OTTTTrace`): faster, equal
        #: up to float rounding, 2·k·B·n floats more per layer
        self.grad_steps = int(grad_steps)
        #: the process group of data-parallel training (None: one process)
        self.comm = comm
        #: asked at every time step; True gives the batch up (:class:`BatchAbandoned`)
        self.should_stop: Callable[[], bool] | None = None
        self._checked_optimizer: torch.optim.Optimizer | None = None
        if not rule.is_bound_to(net):
            rule.bind(net)
        #: the chip every step's forward comes from (:mod:`opzo.chip`; None: the network)
        self.chip = chip
        if chip is not None:
            check_fc(net)
            if net.dropout:
                raise ValueError("a chip takes no dropout (it has no dropout masks): build "
                                 "the network with dropout 0")
            if rule.noise is not None and rule.noise.position != "before":
                raise ValueError("a chip takes the rule's perturbation on the synaptic "
                                 "current: set noise_position 'before' (--noise-position "
                                 "before)")
            if comm is not None:
                raise ValueError("a chip runs in one process: drop --nproc")
        if rule.noise is not None:  # z[t] is used within step t only: one buffer for all
            rule.noise.reuse_buffer = True

    def _parameters(self) -> list[torch.nn.Parameter]:
        """The model's parameters and the rule's own (local readouts)."""
        return [*self.net.parameters(), *self.rule.parameters()]

    # -- the Learner protocol ---------------------------------------------------------------
    def parameters(self) -> list[torch.nn.Parameter]:
        """The model's parameters, then the rule's own (local readouts)."""
        return self._parameters()

    def state_dict(self) -> dict | None:
        """The rule's state (feedback, noise stream)."""
        return self.rule.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        self.rule.load_state_dict(state)  # type: ignore[arg-type]

    def start_epoch(self, progress: float, freeze_feedback: bool) -> None:
        """The rule's schedules at ``progress`` in [0, 1]; its learned feedback frozen or
        not (OPZO paper Table 9's ablation)."""
        self.rule.set_progress(progress)
        self.rule.freeze_feedback(freeze_feedback)

    def epoch_metrics(self) -> dict[str, Any]:
        """The noise scale α of a perturbed rule."""
        noise = self.rule.noise
        return {"alpha": noise.alpha} if noise is not None else {}

    def _ensure_grads(self) -> None:
        for p in self._parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    def _check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer must hold the network's parameters (some of them) and the rule's
        own, or they would never learn (checked once per optimizer)."""
        if optimizer is self._checked_optimizer:
            return
        held = check_optimizer(optimizer, self.net)
        extra = self.rule.parameters()
        if any(id(p) not in held for p in extra):
            raise ValueError(
                f"rule {self.rule.name!r} trains parameters of its own (local readouts) that "
                "the optimizer does not hold: build it from "
                "[*net.parameters(), *rule.parameters()]")
        self._checked_optimizer = optimizer

    def _sum_gradients(self) -> None:
        """Data parallel: sum ``.grad`` of every parameter (and the rule's feedback
        gradients) over all processes."""
        if self.comm is not None:
            grads = [p.grad for p in self._parameters()] + self.rule.feedback_grads()
            self.comm.all_reduce_([g for g in grads if g is not None])

    @torch.no_grad()
    def accumulate(
        self,
        x: Tensor,
        y: Tensor,
        T: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        masks: list[Tensor] | None = None,
        shard: Shard | None = None,
    ) -> BatchStats:
        """Run one batch forward in time and add its gradient to every parameter's ``.grad``.

        With ``update="step"`` an ``optimizer`` is required and is stepped after every time
        step (and ``.grad`` is cleared after each step). ``masks`` fixes the dropout masks
        (default: drawn afresh when the network is in training mode). ``shard``: ``x`` and
        ``y`` are these rows of a global batch (see the module docstring); with the
        learner's ``comm`` the gradients are then summed over the processes.
        """
        x, T = self._checked_input(x, y, T, optimizer, shard)
        b = self._start_batch(x, y, T, masks, shard)
        out_sum = torch.zeros(b.batch, self.net.num_outputs, dtype=x.dtype, device=x.device)
        loss_sum = x.new_zeros(())
        with sharded(self.net, shard):  # the chip's noise, too, for the global batch
            for t in range(T):
                check_stop(self.should_stop)
                o, loss = self._step(b, t)
                out_sum += o
                loss_sum += loss
                if self.update == "step":
                    assert optimizer is not None
                    self._step_optimizer(b, optimizer)
        for layer, tr in zip(self.net.hidden, b.traces):
            tr.flush(layer)
        if self.update != "step":
            self._sum_gradients()
        loss_value = float(loss_sum) / T
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                "training loss became NaN/inf: lower the learning rate or the noise scale "
                "alpha, or check the input data"
            )
        return BatchStats(loss_sum=loss_value, correct=int((out_sum.argmax(1) == y).sum()),
                          count=b.batch)

    def _checked_input(self, x: Tensor, y: Tensor, T: int | None,
                       optimizer: torch.optim.Optimizer | None, shard: Shard | None
                       ) -> tuple[Tensor, int]:
        """The input flattened, and T; ValueError for labels, values, an optimizer or a shard
        that do not fit."""
        net = self.net
        x, T = net.prepare_input(x, T)
        batch = x.shape[0] if x.dim() == 2 else x.shape[1]
        check_labels(y, batch, net.num_outputs, x)
        if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():  # sum: one pass
            raise ValueError("input contains NaN or infinite values")
        if self.update == "step" and optimizer is None:
            raise ValueError('update="step" needs the optimizer to step after every time step')
        if optimizer is not None:
            self._check_optimizer(optimizer)
        if shard is not None and shard.size != batch:
            raise ValueError(f"shard {shard} does not hold this batch's {batch} rows")
        return x, T

    def _start_batch(self, x: Tensor, y: Tensor, T: int, masks: list[Tensor] | None,
                     shard: Shard | None) -> _Batch:
        """Fresh traces, membrane state, dropout masks and the rule's batch state; what every
        step of the batch shares."""
        net, rule = self.net, self.rule
        static = x.dim() == 2
        batch = x.shape[0] if static else x.shape[1]
        self._ensure_grads()
        hidden = list(net.hidden)
        traces = [
            make_trace(self.trace_name, net.neuron, static_input=(static and l == 0),
                       feeds_readout=(l == len(hidden) - 1), layer=hidden[l], gbar=self.gbar)
            for l in range(len(hidden))
        ]
        if self.grad_steps != 1:
            spaces = self.__dict__.setdefault("_trace_workspaces", {})
            for l, tr in enumerate(traces):
                if isinstance(tr, OTTTTrace):
                    tr.steps_per_product = T if self.grad_steps == 0 else self.grad_steps
                    tr.workspace = spaces.setdefault(l, {})  # its stacks, batch to batch
        head = make_output_trace(self.trace_name, net.neuron.lam)  # F-variants: leaky-sum output
        state = net.initial_state(batch, x)
        if masks is None:
            masks = (net.dropout_masks(batch, x) if shard is None
                     else net.dropout_masks(batch, x, shard))
        gains = None  # m_l · gain for the local derivative, unless the fused step gives it
        if masks is not None and not net.fuses_local_derivative(x):
            gain = net.surrogate.gain()
            gains = [m * gain for m in masks]
        rule.start_batch()
        first = first_in = None
        if self.chip is not None:
            if shard is not None:
                raise ValueError("a chip runs in one process: no shard")
            self.chip.reset(batch)
        elif static and self.update != "step":  # the first layer's current is the same always
            first_in = hidden[0].op_input(x)
            first = hidden[0].op(first_in)
        total = batch if shard is None else shard.total
        reduce = None
        if self.comm is not None:
            comm = self.comm

            def reduce(t: Tensor) -> None:
                comm.all_reduce_([t])
        return _Batch(x=x, y=y, T=T, batch=batch, shard=shard, traces=traces, head=head,
                      state=state, masks=masks, gains=gains, first=first, first_in=first_in,
                      total=total, scale=1.0 / (total * T), reduce=reduce,
                      target=F.one_hot(y, net.num_outputs).to(x.dtype))

    def _step(self, b: _Batch, t: int) -> tuple[Tensor, Tensor]:
        """Time step t: the noisy forward step, the loss and its error, the traces, the rule's
        δ's and their gradients (OPZO paper Algorithm 1's inner loop). Returns o[t] and the
        step's summed loss."""
        net, rule = self.net, self.rule
        x_t = b.x if b.x.dim() == 2 else b.x[t]
        noise = (rule.perturbation(t, b.batch, b.x) if b.shard is None
                 else rule.perturbation(t, b.batch, b.x, b.shard))
        alpha, pos = ((rule.noise.alpha, rule.noise.position) if rule.noise is not None
                      else (0.0, "after"))
        if self.chip is None:
            o, rec = net.step(b.state, x_t, first_current=b.first, first_input=b.first_in,
                              noise=noise, noise_scale=alpha, noise_position=pos,
                              masks=b.masks, gains=b.gains, local_derivative=True)
        else:
            o, rec = self._chip_forward(x_t, noise, alpha)
        assert rec.inputs is not None and rec.readout_in is not None
        lb, e = self.loss.value_and_error(b.head.push(o, rec.readout_in), b.target, b.y)
        loss = lb.sum()
        e.mul_(b.scale)
        for l, tr in enumerate(b.traces):  # what each op saw (after its pooling)
            tr.push(rec.inputs[l], rec, l)
        rec = record_for_rule(rec, b.traces)  # the traces' local derivatives, if any
        ctx = StepContext(t=t, T=b.T, output=o, error=e, loss=lb.mul_(b.scale), record=rec,
                          net=net, target=b.target, labels=b.y, loss_fn=self.loss,
                          scale=b.scale, batch_total=b.total, reduce=b.reduce)
        for layer, tr, delta in zip(net.hidden, b.traces, rule.deltas(ctx)):
            tr.accumulate(delta, layer)
        b.head.accumulate(e, net.readout)
        return o, loss

    def _chip_forward(self, x_t: Tensor, noise: list[Tensor] | None, alpha: float
                      ) -> tuple[Tensor, StepRecord]:
        """Step t's forward on the chip (:mod:`opzo.chip`): the chip runs it with the rule's
        perturbation on its currents and reports u, s and o[t]; the rules and the traces read
        the record rebuilt from them."""
        assert self.chip is not None
        step = run_step(self.chip, self.net, x_t, noise, alpha)
        return step.output, chip_record(self.net, x_t, step)

    def _step_optimizer(self, b: _Batch, optimizer: torch.optim.Optimizer) -> None:
        """``update="step"`` (OTTT_O): the step's gradient into the weights now."""
        for layer, tr in zip(self.net.hidden, b.traces):
            tr.flush(layer)
        self._sum_gradients()
        with torch.enable_grad():
            optimizer.step()
        self.rule.optimizer_step()
        for p in self._parameters():
            p.grad.zero_()

    def train_batch(
        self,
        x: Tensor,
        y: Tensor,
        optimizer: torch.optim.Optimizer,
        T: int | None = None,
        on_grad: Callable[[], None] | None = None,
        shard: Shard | None = None,
    ) -> BatchStats:
        """Clear ``.grad``, accumulate one batch, and step ``optimizer`` (and the rule).

        ``on_grad`` is called once the batch gradient is in ``.grad``, before the step
        (diagnostics use it; not called with ``update="step"``). ``shard``: see
        :meth:`accumulate`.
        """
        net = self.net
        net.train()
        self._check_optimizer(optimizer)
        if self.update == "step":
            self._ensure_grads()
            for p in self._parameters():
                p.grad.zero_()
            return self.accumulate(x, y, T, optimizer, shard=shard)
        optimizer.zero_grad(set_to_none=False)
        stats = self.accumulate(x, y, T, shard=shard)
        if on_grad is not None:
            on_grad()
        optimizer.step()
        self.rule.optimizer_step()
        return stats


@torch.no_grad()
def evaluate_batch(net: SpikingNet, x: Tensor, y: Tensor, loss: InstantLoss,
                   T: int | None = None, readout: MaxOverTime | None = None,
                   synops: SynOpsCounter | None = None) -> BatchStats:
    """Inference (no noise, no dropout) on one batch: loss of Σ_t o[t]/T terms and accuracy
    of Σ_t o[t]; with ``readout`` the loss and the class of its max-over-time scores; with
    ``synops`` every step's spikes are also counted there (:mod:`opzo.energy`). Sums stay on
    the device until the end of the batch (float64; float32 on mps)."""
    was_training = net.training
    net.eval()
    try:
        x, T = net.prepare_input(x, T)
        batch = x.shape[0] if x.dim() == 2 else x.shape[1]
        check_labels(y, batch, net.num_outputs, x)
        return score_steps(((o, rec.spikes) for o, rec in net.run(x, T)), y, loss, T,
                           net.hidden_sizes, readout, synops)
    finally:
        net.train(was_training)
