"""Temporal credit assignment: eligibility traces that turn per-step errors into gradients.

The third axis of a learning method (spatial credit × local derivative × temporal trace;
see ARCHITECTURE.md). At every step t the spatial rule
gives, for hidden layer l, δ_l[t] = g_l[t] ⊙ m_l ⊙ D_l[t]: the error g_l at the layer's
output spikes, times the dropout mask m_l, times a local derivative D_l. A trace of layer l
keeps what it needs of the past and turns δ_l[t] into ∇W_l and ∇b_l. Notation, per sample:
x[t] the layer's input at step t (the previous layer's output, or the network input), u[t]
its membrane potential, s[t] its spikes, ψ[t] = ψ(u[t]) the surrogate derivative (without
the dropout mask), λ the membrane leak, V_th the threshold; n the layer width. The OTPE
paper ("Estimating post-synaptic effects for online training of feed-forward SNNs",
Summerfield et al.) describes all of them; its Table 1 gives their cost for a
dense n→n layer:

===================  ============================  ============  =================
trace                 weight gradient               D_l[t]        memory per sample
===================  ============================  ============  =================
``ottt``              δ[t]ᵀ â[t]                    ψ[t]          O(n)
``ostl``              Σ_b δ_bj[t] ε_bji[t]          ψ[t]          O(n²)
``otpe``              Σ_b (g ⊙ m)_bj R̂_bji[t]       ḡ[t]          O(n²)
``approx_otpe``       δ[t]ᵀ ẑ[t]                    ḡ[t]          O(n)
===================  ============================  ============  =================

**The interface** (:class:`Trace`). Per step the learner calls ``push(x[t], record, l)``
before the spatial rule runs (the trace sees u_l[t] and ψ there), then
:func:`record_for_rule` hands the rule a step record whose :func:`~opzo.rules.base.local_delta`
multiplies by the
trace's own local derivative D_l[t] where :meth:`Trace.local_derivative` gives one (OTPE's
ḡ; OSTL's ψ[t], the same draw it uses for its reset term), then ``accumulate(δ_l[t], ...)``
and, at the end of a batch (or of every step with per-step updates), ``flush``. Every spatial
rule goes through ``local_delta`` for its δ's, and spatial BP passes the error to the
layer below through δ_l, so a trace's D_l also replaces ψ in the backward pass through layer
l, as OTPE prescribes ("backpropagating error for OTPE or Approx OTPE is similar to OSTL and
OTTT, with the exception of using ḡ instead of the most recent time-step's surrogate
gradients", section 3.1). No rule knows which trace it works with.

**What each trace assumes about the layer the spikes go to.** OTPE's estimate R̂ is the
leaky sum of past spike sensitivities because the next layer integrates its input with leak
λ (section 3). A hidden layer feeding another LIF layer gets the OTPE trace as named. The
last hidden layer feeds the readout o[t] = W_N x[t] + b_N, which (unlike the paper's spiking
output layer) keeps no state: there is no post-synaptic temporal effect to estimate, and
OTPE's estimate with a memoryless consumer is exactly OSTL's ∂s[t]/∂W (and approximate
OTPE's is OTTT's ψ[t] â[t]), so :func:`make_trace` builds those there. With the F-variants
(section 3.2, names ``f_…``) the loss is on the leaky sum of the outputs,
O[t] = λ O[t−1] + o[t] (:class:`OutputTrace`), which integrates with leak λ like a LIF layer:
then the last hidden layer gets the OTPE trace too, and F-OTPE's gradient of a network with
one hidden layer is the exact (BPTT) gradient of that loss.

**Layers.** A trace works on flattened (B, n) tensors and writes the gradient through the
layer object it is given (:mod:`opzo.layers`): ``layer.accumulate_grad(δ, â, b̂)`` adds the
gradient of ⟨δ, op(â; W) + b̂ b⟩, which is δᵀ â for a fully connected layer and the conv
weight-gradient of δ against â (chained through the weight standardization) for a conv
layer. The input x[t] pushed to a trace is what the layer's op saw (after the layer's input
pooling; pooling is linear, so pooling the trace equals the trace of the pooled spikes).
OTTT and approximate OTPE keep presynaptic traces (one value per input neuron) and so work
on every layer type. OSTL and OTPE keep one eligibility per synapse W_ji (per sample); a
convolution shares each weight among all positions of a map, so theirs would be a different
object (a per-sample sum over positions of the position-wise eligibilities): they are
implemented for fully connected layers only, and :func:`make_trace` says so for a conv layer.

**Neuron models.** A trace asks the network's neuron (:mod:`opzo.neurons`) what it needs:
OTTT's and approximate OTPE's presynaptic trace â is the input through the neuron's filter
cascade (:attr:`~opzo.neurons.Neuron.presynaptic_leaks`; LIF: â = λ â + x; CubaLIF: the
synaptic filter first, ĉ = λ_s ĉ + x, â = λ â + ĉ); ψ is taken at the neuron's threshold of
the step (:meth:`StepRecord.psi`; ALIF's moves); OSTL and OTPE take κ from
:meth:`~opzo.neurons.Neuron.own_path_factor` and refuse a neuron whose own path has a second
state (CubaLIF, ALIF). Approximate OTPE's ẑ and ḡ, OTPE's R̂ and the F-variants' leaky output
use the membrane leak λ (the consumer's integration; for CubaLIF its synaptic filter is not
part of that estimate).

**Static input.** With the same x at every step (direct-current encoding) the first
layer's traces are per-neuron scalars times x: â[t] = b̂[t] x, ε_bji[t] = c_bj[t] x_bi,
R̂_bji[t] = r_bj[t] x_bi, ẑ[t] = ẑ^b[t] x. They then keep O(n) state and do one
weight-gradient product at :meth:`Trace.flush` instead of one per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .layers import ConvLayer, DenseLayer
from .network import StepRecord
from .neurons import LIF, Neuron
from .neurons.base import surrogate_at
from .registry import Option, Registry
from .sparse import accumulate_sparse, online_sparse_enabled

#: a hidden layer a trace writes gradients through (see :mod:`opzo.layers`)
SynapticLayer = DenseLayer | ConvLayer

#: how OTPE's leaky mean of surrogate derivatives ḡ is normalised (see :func:`leaky_mean`)
GBAR_MODES = ("paper", "normalised")
#: the option of OTPE and approximate OTPE: how ḡ is normalised (:func:`leaky_mean`)
GBAR_OPTION = Option("otpe_gbar", "paper", "OTPE / approx_otpe: the leaky mean ḡ of surrogate "
                     "derivatives as printed in the paper ((1/t) Σ λ^(t−t') ψ) or normalised "
                     "to a weighted mean", choices=GBAR_MODES)


def leaky_mean(S: Tensor, count: int, lam: float, mode: str = "paper") -> Tensor:
    """ḡ[t] from S[t] = Σ_{t'≤t} λ^{t−t'} ψ[t'] after ``count`` = t steps.

    ``"paper"``: ḡ = S / t, the OTPE paper's ḡ = (1/T) Σ_t λ^{T−t} ψ_t (section 3.1) as
    printed; the weights sum to (1 − λ^t)/((1 − λ) t), so ḡ shrinks like 1/t.
    ``"normalised"``: ḡ = S / Σ_{k<t} λ^k, a weighted mean (weights summing to 1). On Randman
    it aligns approximate OTPE far better with BPTT (benchmarks/RESULTS.md, section 6).
    """
    if mode == "paper":
        return S / count
    if mode == "normalised":
        norm = float(count) if lam == 1.0 else (1.0 - lam**count) / (1.0 - lam)
        return S / norm
    raise ValueError(f"unknown ḡ normalisation {mode!r}; choose one of {GBAR_MODES}")


class Trace:
    """Temporal credit of one hidden layer (the interface; see the module docstring)."""

    name = "trace"
    #: keeps one eligibility per synapse (OSTL, OTPE): fully connected layers only, and a
    #: neuron whose membrane potential is the only state on its own path
    per_synapse: bool = False
    #: what the trace reduces to at the layer that feeds a readout without state (the
    #: readout's own dynamics are then absent): a registered name, or None for itself
    at_readout: str | None = None
    #: the options it reads (CLI flags, config keys; merged by :mod:`opzo.config`)
    options: tuple[Option, ...] = ()

    @classmethod
    def create(cls, neuron: Neuron, static_input: bool, gbar: str) -> Trace:
        """The trace of one hidden layer of ``neuron`` (``gbar``: OTPE's ḡ normalisation)."""
        return cls(neuron.presynaptic_leaks, static_input)  # type: ignore[call-arg]

    def reset(self) -> None:
        """Forget the past (start of a new sample batch)."""

    def push(self, x: Tensor, rec: StepRecord | None = None, l: int = 0) -> None:
        """Record step t: the layer's input x[t] (B, n_in) and the step record (u_l[t])."""
        raise NotImplementedError

    def local_derivative(self) -> Tensor | None:
        """D_l[t] for the spatial rule in place of ψ(u_l[t]) (None: ψ(u_l[t]) itself)."""
        return None

    def accumulate(self, delta: Tensor, layer: SynapticLayer) -> None:
        """Add step t's gradient given δ_l[t] = g_l[t] ⊙ m_l ⊙ D_l[t], shape (B, n), to the
        ``.grad`` of ``layer``'s parameters."""
        raise NotImplementedError

    def flush(self, layer: SynapticLayer) -> None:
        """Write what is still pending (static input: one GEMM for all steps so far)."""

    def state_nbytes(self) -> int:
        """Bytes of the state the trace keeps between steps (not the network's input)."""
        return 0


def _nbytes(*tensors: Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _psi(rec: StepRecord, l: int) -> Tensor:
    """ψ(u_l[t] − V_th) at the layer's threshold of the step (records without
    ``thresholds`` use ``v_th``)."""
    thresholds = getattr(rec, "thresholds", None)
    return surrogate_at(rec.surrogate, rec.u[l], rec.v_th if thresholds is None
                        else thresholds[l])


class _Cascade:
    """The filter stages of a presynaptic trace before the last one (CubaLIF's synaptic
    filter, ĉ = λ_s ĉ + x): :meth:`push` returns what enters the last stage and the bias
    trace's input (x and 1.0 when there are no stages)."""

    def __init__(self, leaks: Sequence[float]) -> None:
        self.leaks = tuple(float(v) for v in leaks)
        self.reset()

    def reset(self) -> None:
        self.x: list[Tensor | None] = [None] * len(self.leaks)
        self.c = [0.0] * len(self.leaks)

    def push(self, x: Tensor, static_input: bool) -> tuple[Tensor, float]:
        unit = 1.0
        for k, lam in enumerate(self.leaks):
            self.c[k] = lam * self.c[k] + unit
            unit = self.c[k]
            if static_input:
                continue  # the trace is c[t] x: only the scalars move
            prev = self.x[k]
            if prev is None:
                self.x[k] = prev = x.clone()
            else:
                torch.add(x, prev, alpha=lam, out=prev)
            x = prev
        return x, unit

    def nbytes(self) -> int:
        return _nbytes(*self.x)


def _leaks(lam: float | Sequence[float]) -> tuple[float, ...]:
    return (float(lam),) if isinstance(lam, (int, float)) else tuple(float(v) for v in lam)


def _grads(layer: SynapticLayer) -> tuple[Tensor, Tensor | None]:
    """(∇W, ∇b) of a fully connected layer, created as zeros if missing."""
    w, b = layer.weight, layer.bias
    if w.grad is None:
        w.grad = torch.zeros_like(w)
    if b is not None and b.grad is None:
        b.grad = torch.zeros_like(b)
    return w.grad, None if b is None else b.grad


class OTTTTrace(Trace):
    """OTTT's presynaptic trace (Xiao et al. 2022; OPZO paper 3.1; OTPE paper 2.3.2).

        â[t] = λ â[t−1] + x[t],   ∇W += δ[t]ᵀ â[t]
        b̂[t] = λ b̂[t−1] + 1,      ∇b += b̂[t] Σ_batch δ[t]

    The gradient of L[t] with respect to W through the leaky membrane of the same neuron,
    with the reset and every earlier spike treated as constants (∂u[t]/∂u[t−1] = λ).
    Memory O(n) per sample (OTPE paper Table 1). Static input: Σ_t δ[t]ᵀ â[t] =
    (Σ_t b̂[t] δ[t])ᵀ x, one product at :meth:`flush`.

    ``lam`` may be the neuron's filter cascade (:attr:`opzo.neurons.Neuron.presynaptic_leaks`,
    input first): for CubaLIF, ĉ[t] = λ_s ĉ[t−1] + x[t] and â[t] = λ â[t−1] + ĉ[t] (bias:
    ĉ^b = λ_s ĉ^b + 1, b̂ = λ b̂ + ĉ^b), its ∂u[t]/∂W under the same approximation.

    ``steps_per_product`` k > 1 (opt-in, :class:`~opzo.learner.OnlineLearner`'s
    ``grad_steps``): the weight gradient of k steps in one product, Σ_t δ[t]ᵀ â[t] =
    [δ[t1]; …; δ[tk]]ᵀ [â[t1]; …; â[tk]] (one GEMM, or one conv weight-gradient and one
    standardization chain, over k·B rows instead of k over B rows), from copies of δ[t] and
    â[t] kept until k steps are in (memory 2·k·B·n floats more, so no longer independent of
    T); the bias gradient stays per step. The same sum in another order: equal up to float
    rounding. Layers other than :class:`~opzo.layers.DenseLayer` and
    :class:`~opzo.layers.ConvLayer` keep one product per step.
    """

    name = "ottt"
    #: steps whose weight gradients are written in one product (1: one per step)
    steps_per_product: int = 1
    #: where the stacks of δ and â may be kept from one batch to the next (a dict the
    #: learner keeps per layer; None: allocated per batch)
    workspace: dict | None = None

    def __init__(self, lam: float | Sequence[float], static_input: bool = False) -> None:
        leaks = _leaks(lam)
        self.lam = leaks[-1]
        self._pre = _Cascade(leaks[:-1])
        self.static_input = static_input
        self.reset()

    def reset(self) -> None:
        self.a: Tensor | None = None  # â[t], or the static input x
        self.c = 0.0  # b̂[t]
        self._delta_sum: Tensor | None = None  # Σ_t c_t δ[t] (static input only)
        self._sparse = False  # the weight-gradient product over δ's non-zeros (opzo.sparse)
        self._pre.reset()
        self._stack: tuple[Tensor, Tensor] | None = None  # rows of δ[t], â[t] (k > 1)
        self._stacked = 0  # steps in the stack

    def push(self, x: Tensor, rec: StepRecord | None = None, l: int = 0) -> None:
        """â[t] = λ â[t−1] + x[t] (the record tells whether the product may go sparse)."""
        self._sparse = rec is not None and online_sparse_enabled(rec.surrogate)
        if self._pre.leaks:
            x, unit = self._pre.push(x, self.static_input)
            self.c = self.lam * self.c + unit
        else:
            self.c = self.lam * self.c + 1.0
        if self.static_input:
            if self.a is None:
                self.a = x
        elif self.a is None:
            self.a = x.clone()
        else:
            torch.add(x, self.a, alpha=self.lam, out=self.a)

    @property
    def value(self) -> Tensor:
        """â[t] (materialised for a static input)."""
        assert self.a is not None, "push() an input first"
        return self.a * self.c if self.static_input else self.a

    def accumulate(self, delta: Tensor, layer: SynapticLayer) -> None:
        """∇W += δ[t]ᵀ â[t] (conv: the conv weight-gradient) and ∇b += b̂[t] Σ_batch δ[t]."""
        assert self.a is not None, "push() the step's input before accumulating"
        if self.static_input:
            if self._delta_sum is None:
                self._delta_sum = delta * self.c
            else:
                self._delta_sum.add_(delta, alpha=self.c)
            return
        k = self.steps_per_product
        if k <= 1 or not _stacks(layer):
            if self._sparse and accumulate_sparse(layer, delta, self.a, self.c):
                return  # over δ's non-zero entries only (opzo.sparse)
            layer.accumulate_grad(delta, self.a, self.c)
            return
        layer.accumulate_grad(delta, self.a, self.c, weight=False)  # b̂[t] differs per step
        b = delta.shape[0]
        if self._stack is None or self._stack[0].shape[0] != k * b:
            self._flush_stack(layer)
            self._stack = self._new_stack(k * b, delta, self.a)
        i = self._stacked * b
        self._stack[0][i:i + b].copy_(delta)
        self._stack[1][i:i + b].copy_(self.a)
        self._stacked += 1
        if self._stacked == k:
            self._flush_stack(layer)

    def _new_stack(self, rows: int, delta: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """Empty (rows, n) and (rows, n_in) tensors for δ and â: the workspace's when they
        fit (no fresh memory, and its page faults, every batch)."""
        ws = self.workspace
        old = None if ws is None else ws.get("stack")
        if (old is not None and old[0].shape == (rows, delta.shape[1])
                and old[1].shape == (rows, a.shape[1]) and old[0].dtype == delta.dtype
                and old[1].dtype == a.dtype and old[0].device == delta.device):
            return old
        stack = (delta.new_empty(rows, delta.shape[1]), a.new_empty(rows, a.shape[1]))
        if ws is not None:
            ws["stack"] = stack
        return stack

    def _flush_stack(self, layer: SynapticLayer) -> None:
        """One weight-gradient product over the kept steps."""
        if self._stacked and self._stack is not None:
            rows = self._stacked * (self._stack[0].shape[0] // self.steps_per_product)
            layer.accumulate_grad(self._stack[0][:rows], self._stack[1][:rows], bias=False)
        self._stacked = 0

    def flush(self, layer: SynapticLayer) -> None:
        self._flush_stack(layer)
        if self._delta_sum is not None:
            assert self.a is not None
            layer.accumulate_grad(self._delta_sum, self.a, 1.0)
            self._delta_sum = None

    def state_nbytes(self) -> int:
        own = _nbytes(self._delta_sum) if self.static_input else _nbytes(self.a)
        return own + self._pre.nbytes() + (_nbytes(*self._stack) if self._stack else 0)


def _stacks(layer: SynapticLayer) -> bool:
    """Whether the layer's weight gradient of several steps may be one product (its
    ``accumulate_grad`` is DenseLayer's or ConvLayer's, which take ``weight``/``bias``)."""
    return type(layer).accumulate_grad in (DenseLayer.accumulate_grad,
                                           ConvLayer.accumulate_grad)


class OSTLTrace(Trace):
    """OSTL's diagonal eligibility with the reset term (Bohnstingl et al. 2022; OTPE 2.3.1).

        ε_ji[t] = ∂u_j[t]/∂W_ji along neuron j's own temporal path (reset included):
        ε[t] = κ[t] ε[t−1] + x_i[t],    κ[t] = λ (1 − V_th ψ[t−1])            (subtractive)
                                        κ[t] = λ (1 − s[t−1] − u[t−1] ψ[t−1])  (reset to zero)
        ∇W_ji += Σ_b δ_bj[t] ε_bji[t],  ∇b_j += Σ_b δ_bj[t] ε^b_bj[t]   (ε^b: the same with x = 1)

    OTPE paper eq. 1 and section 2.3.1: the RTRL influence ∂u/∂W restricted to its diagonal
    (a neuron's potential depends on its own weights only), which is exact for a layer whose
    spikes reach the loss at the same step; the error δ[t] comes spatially from the same
    step. The spatial rule's local derivative is ψ[t] drawn here (:meth:`local_derivative`),
    so with LocalZO the same draw serves the spike and, at t+1, the reset term, as in BPTT.
    Memory O(n²) per sample (B·n·n_in values, stored neuron-major (n, B, n_in) so that the
    weight gradient is one batched product); O(n) for a static input (ε_bji = ε^b_bj x_bi).
    κ comes from the neuron (:meth:`opzo.neurons.Neuron.own_path_factor`); a neuron whose own
    path has a second state is refused.
    """

    name = "ostl"

    per_synapse = True

    @classmethod
    def create(cls, neuron: Neuron, static_input: bool, gbar: str) -> Trace:
        return cls(neuron, static_input)

    def __init__(self, lif: Neuron, static_input: bool = False) -> None:
        problem = lif.own_path_problem()
        if problem is not None:
            raise ValueError(f"trace {self.name!r}: {problem}")
        self.neuron = lif
        self.static_input = static_input
        self.reset()

    def reset(self) -> None:
        self.eps: Tensor | None = None  # ε[t], (n, B, n_in); None for a static input
        self.c: Tensor | None = None  # ε^b[t], (B, n); for a static input ε = c ⊗ x
        self.kappa: Tensor | None = None  # κ[t+1], (B, n)
        self.psi: Tensor | None = None  # ψ[t], (B, n)
        self.x: Tensor | None = None  # the static input
        self._pending: Tensor | None = None  # static input: Σ_t of the (B, n) factor

    def _advance(self, x: Tensor, rec: StepRecord, l: int) -> None:
        u = rec.u[l]
        if self.c is None:
            self.c = torch.ones_like(u)
            if self.static_input:
                self.x = x
            else:
                self.eps = x.unsqueeze(0).repeat(u.shape[1], 1, 1)
        else:
            assert self.kappa is not None
            self.c.mul_(self.kappa).add_(1.0)
            if not self.static_input:
                assert self.eps is not None
                torch.addcmul(x.unsqueeze(0), self.eps, self.kappa.t().unsqueeze(2),
                              out=self.eps)
        self.psi = _psi(rec, l)
        self.kappa = self.neuron.own_path_factor(u, rec.spikes[l], self.psi)

    def push(self, x: Tensor, rec: StepRecord | None = None, l: int = 0) -> None:
        """ε[t] = κ[t] ε[t−1] + x[t]; then ψ[t] and κ[t+1] from u[t], s[t]."""
        if rec is None:
            raise ValueError(f"the {self.name} trace needs the step record: push(x, rec, l)")
        self._advance(x, rec, l)

    def local_derivative(self) -> Tensor | None:
        return self.psi

    def _add(self, factor: Tensor, per_synapse: Tensor | None, weight_factor: Tensor,
             grad_w: Tensor, grad_b: Tensor | None) -> None:
        """∇W_ji += Σ_b factor_bj P_bji with P = per_synapse, or P = weight_factor ⊗ x."""
        if self.static_input:
            term = factor * weight_factor
            if self._pending is None:
                self._pending = term
            else:
                self._pending.add_(term)
            return
        assert per_synapse is not None
        grad_w.unsqueeze(1).baddbmm_(factor.t().unsqueeze(1), per_synapse)
        if grad_b is not None:
            grad_b.add_((factor * weight_factor).sum(0))

    def accumulate(self, delta: Tensor, layer: SynapticLayer) -> None:
        """∇W_ji += Σ_b δ_bj ε_bji,  ∇b_j += Σ_b δ_bj ε^b_bj."""
        assert self.c is not None, "push() the step's input before accumulating"
        self._add(delta, self.eps, self.c, *_grads(layer))

    def flush(self, layer: SynapticLayer) -> None:
        if self._pending is not None:
            assert self.x is not None
            layer.accumulate_grad(self._pending, self.x, 1.0)
            self._pending = None

    def state_nbytes(self) -> int:
        return _nbytes(self.eps, self.c, self.kappa, self.psi, self._pending)


class OTPETrace(OSTLTrace):
    """OTPE: the post-synaptic estimate R̂ of the spikes' sensitivity (OTPE paper section 3).

        R̂[t] = λ R̂[t−1] + ∂s[t]/∂W,   ∂s_j[t]/∂W_ji = ψ_j[t] ε_ji[t]   (ε: OSTL's eligibility)
        ḡ[t] = (1/t) Σ_{t'≤t} λ^{t−t'} ψ[t']                            (section 3.1)
        ∇W_ji += Σ_b (g ⊙ m)_bj[t] R̂_bji[t]                             (eqs. 3-4)

    (``gbar="normalised"``: ḡ as a weighted mean instead, see :func:`leaky_mean`.)

    The next layer integrates this layer's spikes with leak λ (the paper's global time
    constant), so ∂u_{l+1}[t]/∂W_l ≈ W_{l+1} R̂_l[t] (eq. 4) and the gradient is the error at
    the spikes, g_l = W_{l+1}ᵀ δ_{l+1} for spatial BP (any rule's g_l otherwise), times
    (mask ⊙) R̂. The spatial rule's local derivative at this layer is ḡ[t]
    (:meth:`local_derivative`): errors going on to the layers below pass this layer with ḡ
    in place of ψ[t] (end of section 3.1). The rule then gives δ = g ⊙ m ⊙ ḡ and the trace
    takes g ⊙ m = δ / ḡ; where ḡ = 0 every ψ so far was 0, so R̂ = 0 and that term is 0.
    Bias: the same with x = 1. Memory O(n²) per sample (ε and R̂, each B·n·n_in); O(n) for a
    static input (R̂_bji = r_bj x_bi with r = λ r + ψ ε^b).
    """

    name = "otpe"

    at_readout = "ostl"
    options = (GBAR_OPTION,)

    @classmethod
    def create(cls, neuron: Neuron, static_input: bool, gbar: str) -> Trace:
        return cls(neuron, static_input, gbar)

    def __init__(self, lif: Neuron, static_input: bool = False, gbar: str = "paper") -> None:
        leaky_mean(torch.zeros((), device="cpu"), 1, 0.5, gbar)  # validate the mode now
        self.gbar_mode = gbar
        super().__init__(lif, static_input)

    def reset(self) -> None:
        super().reset()
        self.R: Tensor | None = None  # R̂[t], (n, B, n_in); None for a static input
        self.rb: Tensor | None = None  # R̂^b[t] (B, n); for a static input R̂ = rb ⊗ x
        self.S: Tensor | None = None  # Σ_{t'≤t} λ^{t−t'} ψ[t'], (B, n)
        self.count = 0
        self.gbar: Tensor | None = None

    def push(self, x: Tensor, rec: StepRecord | None = None, l: int = 0) -> None:
        """ε[t] as OSTL; R̂[t] = λ R̂[t−1] + ψ[t] ε[t]; ḡ[t] = S[t]/t."""
        super().push(x, rec, l)
        psi, c, lam = self.psi, self.c, self.neuron.lam
        assert psi is not None and c is not None
        psi_t = psi.t().unsqueeze(2)
        if self.S is None:
            self.S = psi.clone()
            self.rb = psi * c
            if not self.static_input:
                assert self.eps is not None
                self.R = self.eps * psi_t
        else:
            assert self.rb is not None
            self.S.mul_(lam).add_(psi)
            self.rb.mul_(lam).addcmul_(psi, c)
            if self.R is not None:
                self.R.mul_(lam).addcmul_(self.eps, psi_t)
        self.count += 1
        self.gbar = leaky_mean(self.S, self.count, lam, self.gbar_mode)

    def local_derivative(self) -> Tensor | None:
        return self.gbar

    def accumulate(self, delta: Tensor, layer: SynapticLayer) -> None:
        """∇W_ji += Σ_b (δ/ḡ)_bj R̂_bji,  ∇b_j += Σ_b (δ/ḡ)_bj R̂^b_bj."""
        assert self.gbar is not None and self.rb is not None, "push() before accumulating"
        tiny = torch.finfo(self.gbar.dtype).tiny
        spike_error = delta / self.gbar.clamp_min(tiny)  # g ⊙ m; 0 where ḡ (and R̂) is 0
        self._add(spike_error, self.R, self.rb, *_grads(layer))

    def state_nbytes(self) -> int:
        return super().state_nbytes() + _nbytes(self.R, self.rb, self.S, self.gbar)


class ApproxOTPETrace(Trace):
    """Approximate OTPE (OTPE paper section 3.1, eq. 5): O(n) memory.

        â[t] = λ â[t−1] + x[t]          (OTTT's trace: ∂u[t]/∂W ≈ â[t])
        ẑ[t] = λ ẑ[t−1] + â[t]          (the leaky sum of â: R̂ with ψ taken out)
        ḡ[t] = (1/t) Σ_{t'≤t} λ^{t−t'} ψ[t']      (``gbar="normalised"``: see leaky_mean)
        ∇W += ((g ⊙ m) ⊙ ḡ)[t]ᵀ ẑ[t] = δ[t]ᵀ ẑ[t]                       (eq. 5)

    Two assumptions on top of OTPE: ψ and ∂u/∂W decoupled through time (ḡ factored out of
    R̂), and OTTT's ∂u/∂W ≈ â. The spatial rule's local derivative at this layer is ḡ[t]
    (:meth:`local_derivative`), both for this layer's δ and for errors going on to the
    layers below ("when the spatial gradient reaches a layer, ḡ is used in place of the
    immediate time-step's surrogate"). Bias: b̂ = λ b̂ + 1, ẑ^b = λ ẑ^b + b̂,
    ∇b += ẑ^b Σ_batch δ. Memory O(n) per sample (â, ẑ: B·n_in; ψ sums: B·n); for a static
    input ẑ[t] = ẑ^b[t] x and one product at :meth:`flush`.

    ``lam`` may be the neuron's filter cascade as for :class:`OTTTTrace` (â through it); ẑ
    and ḡ use its last entry, the membrane leak λ.
    """

    name = "approx_otpe"

    at_readout = "ottt"
    options = (GBAR_OPTION,)

    @classmethod
    def create(cls, neuron: Neuron, static_input: bool, gbar: str) -> Trace:
        return cls(neuron.presynaptic_leaks, static_input, gbar)

    def __init__(self, lam: float | Sequence[float], static_input: bool = False,
                 gbar: str = "paper") -> None:
        leaky_mean(torch.zeros((), device="cpu"), 1, 0.5, gbar)  # validate the mode now
        self.gbar_mode = gbar
        leaks = _leaks(lam)
        self.lam = leaks[-1]
        self._pre = _Cascade(leaks[:-1])
        self.static_input = static_input
        self.reset()

    def reset(self) -> None:
        self.a: Tensor | None = None  # â[t] (B, n_in), or the static input x
        self.z: Tensor | None = None  # ẑ[t] (B, n_in); None for a static input
        self.bh = 0.0  # b̂[t]
        self.zb = 0.0  # ẑ^b[t]
        self.S: Tensor | None = None
        self.count = 0
        self.gbar: Tensor | None = None
        self._pending: Tensor | None = None  # static input: Σ_t ẑ^b[t] δ[t]
        self._pre.reset()

    def push(self, x: Tensor, rec: StepRecord | None = None, l: int = 0) -> None:
        """â, ẑ, b̂, ẑ^b one step on; ḡ[t] = S[t]/t with S = λ S + ψ(u[t])."""
        if rec is None:
            raise ValueError(f"the {self.name} trace needs the step record: push(x, rec, l)")
        lam = self.lam
        if self._pre.leaks:
            x, unit = self._pre.push(x, self.static_input)
            self.bh = lam * self.bh + unit
        else:
            self.bh = lam * self.bh + 1.0
        self.zb = lam * self.zb + self.bh
        if self.static_input:
            if self.a is None:
                self.a = x
        elif self.a is None:
            self.a = x.clone()
            self.z = x.clone()
        else:
            assert self.z is not None
            torch.add(x, self.a, alpha=lam, out=self.a)
            torch.add(self.a, self.z, alpha=lam, out=self.z)
        psi = _psi(rec, l)
        if self.S is None:
            self.S = psi.clone()
        else:
            self.S.mul_(lam).add_(psi)
        self.count += 1
        self.gbar = leaky_mean(self.S, self.count, lam, self.gbar_mode)

    def local_derivative(self) -> Tensor | None:
        return self.gbar

    def accumulate(self, delta: Tensor, layer: SynapticLayer) -> None:
        """∇W += δ[t]ᵀ ẑ[t] (conv: the conv weight-gradient),  ∇b += ẑ^b[t] Σ_batch δ[t]."""
        assert self.a is not None, "push() the step's input before accumulating"
        if self.static_input:
            if self._pending is None:
                self._pending = delta * self.zb
            else:
                self._pending.add_(delta, alpha=self.zb)
            return
        assert self.z is not None
        layer.accumulate_grad(delta, self.z, self.zb)

    def flush(self, layer: SynapticLayer) -> None:
        if self._pending is not None:
            assert self.a is not None
            layer.accumulate_grad(self._pending, self.a, 1.0)
            self._pending = None

    def state_nbytes(self) -> int:
        own = _nbytes(self._pending) if self.static_input else _nbytes(self.a, self.z)
        return own + _nbytes(self.S, self.gbar) + self._pre.nbytes()


#: name -> the :class:`Trace` subclass (a new trace: its class here and one line). Every
#: name also exists as ``f_<name>``: the same trace with the loss on the leaky sum of the
#: outputs (F-OTPE, OTPE paper section 3.2; see :func:`make_output_trace`).
TRACES: Registry[type[Trace]] = Registry("temporal trace")
TRACES.register("ottt", OTTTTrace, "OTTT: the presynaptic trace (OTTT / OPZO papers)")
TRACES.register("ostl", OSTLTrace, "OSTL: one eligibility per synapse (OTPE paper)")
TRACES.register("otpe", OTPETrace, "OTPE: OSTL plus the readout's path (OTPE paper section 3.1)")
TRACES.register("approx_otpe", ApproxOTPETrace, "approximate OTPE: O(n) (OTPE paper "
                "section 3.1)")


def trace_names() -> tuple[str, ...]:
    """Every trace name ``make_trace`` accepts: the registered ones and their ``f_`` forms."""
    return (*TRACES, *(f"f_{name}" for name in TRACES))


def _check_name(name: str) -> tuple[str, bool]:
    """(base trace name, leaky output?) of a trace name; ValueError if unknown."""
    names = trace_names()
    if name not in names:
        raise ValueError(f"unknown temporal trace {name!r}; choose one of {names}")
    leaky = name.startswith("f_")
    return (name[2:] if leaky else name), leaky


def make_trace(name: str, lif: Neuron | float, static_input: bool = False,
               feeds_readout: bool = False, layer: SynapticLayer | None = None,
               gbar: str = "paper") -> Trace:
    """Build the temporal trace ``name`` (one of :func:`trace_names`) of one hidden layer.

    ``lif``: the network's neuron model (:mod:`opzo.neurons`; a bare float is taken as a
    LIF neuron's leak λ). OSTL and OTPE refuse a neuron whose own path has a second state.
    ``static_input``: the layer sees the same input at every step (enables the fast path).
    ``feeds_readout``: the layer's spikes go to the readout; unless the name is an F-variant
    (leaky-sum output) the readout keeps no state, and OTPE / approximate OTPE reduce there
    to OSTL / OTTT (see the module docstring). ``layer``: the layer it will serve (checked:
    OSTL and OTPE need a fully connected one). ``gbar``: OTPE's ḡ normalisation
    (:func:`leaky_mean`).
    """
    leaky_mean(torch.zeros((), device="cpu"), 1, 0.5, gbar)  # validate the mode (any name)
    base, leaky_output = _check_name(name)
    if not isinstance(lif, Neuron):
        lif = LIF(lam=float(lif))
    cls = TRACES[base].factory
    problem = lif.own_path_problem() if cls.per_synapse else None
    if problem is not None:
        raise ValueError(f"trace {name!r}: {problem}")
    if feeds_readout and not leaky_output and cls.at_readout is not None:
        cls = TRACES[cls.at_readout].factory
    if cls.per_synapse and layer is not None and not getattr(layer, "is_dense", True):
        what = getattr(layer, "token", type(layer).__name__)
        raise ValueError(
            f"the {name!r} trace keeps one eligibility per synapse and is implemented for fully "
            f"connected layers only; layer {what} is a convolution. Use trace 'ottt' or "
            "'approx_otpe' (or their f_ variants) on convolutional networks")
    return cls.create(lif, static_input, gbar)


class OutputTrace:
    """The readout's side of a trace: what the loss is taken on, and the readout's gradient.

    Plain (leak 0): the loss at step t is on o[t] = W_N x[t] + b_N, and
    ∇W_N += e[t]ᵀ x[t], ∇b_N += Σ_batch e[t].

    F-variants (OTPE paper section 3.2; leak λ): the loss at step t is on the leaky sum of
    the outputs O[t] = λ O[t−1] + o[t] = Σ_{t'≤t} λ^{t−t'} o[t'] (softmax cross-entropy of
    the leaky sum in the paper; here the configured instantaneous loss of O[t]), and e[t] =
    ∂L[t]/∂O[t]. O is linear in W_N, so ∇W_N += e[t]ᵀ â[t] with OTTT's â of the readout's
    input and ∇b_N += b̂[t] Σ_batch e[t] are exact. The spatial rule still sees the
    instantaneous o[t] (whose dependence on this step's noise is that of O[t]).
    """

    def __init__(self, leak: float = 0.0) -> None:
        self.leak = float(leak)
        self.trace = OTTTTrace(self.leak) if self.leak else None
        self.reset()

    def reset(self) -> None:
        self.x: Tensor | None = None
        self.out: Tensor | None = None
        if self.trace is not None:
            self.trace.reset()

    def push(self, o: Tensor, x: Tensor) -> Tensor:
        """Record the readout's input x[t] and output o[t]; return what the loss is on."""
        if self.trace is None:
            self.x = x
            return o
        self.trace.push(x)
        self.out = o if self.out is None else torch.add(o, self.out, alpha=self.leak)
        return self.out

    def accumulate(self, error: Tensor, readout: DenseLayer) -> None:
        """Add the readout's gradient for the error e[t] at what :meth:`push` returned."""
        if self.trace is not None:
            self.trace.accumulate(error, readout)
            return
        assert self.x is not None, "push() the step's output first"
        readout.accumulate_grad(error, self.x, 1.0)


def make_output_trace(name: str, lam: float) -> OutputTrace:
    """The readout side of trace ``name``: the leaky-sum output (leak λ) for ``f_`` names."""
    return OutputTrace(float(lam) if _check_name(name)[1] else 0.0)


def record_for_rule(rec: StepRecord, traces: Sequence[Trace]) -> StepRecord:
    """The step record the spatial rule should read: δ_l = g_l ⊙ m_l ⊙ D_l with each trace's
    :meth:`Trace.local_derivative` D_l (ψ(u_l[t]) where a trace gives none)."""
    derivatives = [tr.local_derivative() for tr in traces]
    if any(d is not None for d in derivatives):
        rec.derivatives = derivatives
    return rec
