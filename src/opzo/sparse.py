"""The sparse backward of LocalZO and SparseGrad: credit only through the active neurons.

With the LocalZO derivative (LocalZO paper, eqs. 5-7, Algorithm 1) or SparseGrad's cut
surrogate (Perez-Nieves & Goodman 2021; LocalZO paper section 5.2) the local derivative
ψ(u_l[t]) is exactly zero for most neurons at a step (under 1% active in the paper's
Figure 2). Every gradient term that carries ψ as a factor then vanishes there, and the
backward pass needs only the active entries (LocalZO paper section 5.2 and appendix B.1,
eqs. 25-26: SparseGrad's layer-wise backward, "gradients of only active neurons are required").

**BPTT** (:func:`bptt_sparse`, LIF neurons of eq. 1 with the subtractive reset, fully
connected layers). The forward pass runs outside autograd, in place, and keeps per hidden
layer the active entries of ψ_l[t] (found at the step, as SparseGrad's forward does, with
:meth:`opzo.surrogate.Surrogate.nonzeros`; LocalZO's z is drawn once there, Algorithm 1),
the presynaptic traces â_l[t] = λ â_l[t−1] + x_l[t] of the layers that feed another hidden
layer (eq. 25's input trace) and the spikes of the last one. The loss's error at the readout
currents e[t] = ∂L/∂o[t] comes from autograd on the (T, B, C) outputs alone. Then, layer by
layer from the top, with g_l[t] = ∂L/∂s_l[t] from the layer above (through its weights and
the dropout mask)::

    ε_l[t] = ψ_l[t] ⊙ (g_l[t] − λ V_th δ_l[t+1])      (no second term with a detached reset)
    δ_l[t] = ε_l[t] + λ δ_l[t+1]                       (δ_l = ∂L/∂u_l, the leak's recursion)
    ∇W_l = Σ_t δ_l[t]ᵀ x_l[t] = Σ_t ε_l[t]ᵀ â_l[t]    (eq. 26 summed over t)
    ∇b_l = Σ_t Σ_batch δ_l[t] = Σ_t c[t] Σ_batch ε_l[t],   c[t] = Σ_{k≤t} λ^k
    g_{l−1}[t] = m_{l−1} ⊙ (δ_l[t] W_l)

ε_l is as sparse as ψ_l, so g_l is needed at the active entries only: a sampled product
(SDDMM) of δ_{l+1} and W_{l+1} there (the dense δ W costs B·n·n_in per step). The weight
gradient is one sparse-dense product: ε_l (as an n × T·B sparse matrix) times the traces; for
the first layer, whose input is not a hidden layer's, xᵀ (sparse, from the forward's
currents) times δ_0 when the input is mostly zeros (a latency code, events), else ε_0 times
the input's traces. Only the leak's recursion for δ_l is dense (elementwise, T·B·n): δ_l is
what the layer below samples.

**Online rules** (:func:`accumulate_sparse`): δ_l[t] = g ⊙ m ⊙ ψ (eq. 7) is sparse, and the
OTTT trace's weight-gradient product ∇W += δ[t]ᵀ â[t] runs over its non-zero entries (a
sparse δᵀ times â), with ``sparse_backward="on"`` only (:func:`online_sparse_enabled`).

Both give the dense computation's gradients up to float rounding (the order of the sums
differs). Whether they run is the surrogate's option ``sparse_backward`` (``auto``: when the
surrogate's ψ is sparse, :attr:`opzo.surrogate.Surrogate.sparse_psi`; ``on``; ``off``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .layers import DenseLayer
from .losses import InstantLoss, MaxOverTime
from .network import SpikingNet
from .neurons.base import same_dynamics
from .neurons.lif import LIF
from .norm import has_sequence_norm
from .surrogate import Surrogate
from .surrogate.localzo import SparsityStats

__all__ = ["SPARSE_MODES", "accumulate_sparse", "bptt_sparse", "bptt_unsupported",
           "online_sparse_enabled", "sparse_enabled"]

#: per-step inputs with fewer non-zeros than this fraction go through a sparse product
#: (the first layer's currents and weight gradient; as :data:`opzo.bptt.SPARSE_INPUT_DENSITY`)
SPARSE_INPUT_DENSITY = 0.05
#: values of the ``sparse_backward`` option
SPARSE_MODES: tuple[str, ...] = ("auto", "on", "off")
#: the online product stays dense when δ has more non-zeros than this fraction
ONLINE_MAX_DENSITY = 0.02


def sparse_enabled(surrogate: Surrogate | None) -> bool:
    """Whether the sparse backward applies: the surrogate's ``sparse_backward`` is ``on``, or
    ``auto`` and its ψ is exactly zero for most neurons (LocalZO, SparseGrad)."""
    if surrogate is None:
        return False
    mode = getattr(surrogate, "sparse_backward", "auto")
    if mode not in SPARSE_MODES:
        raise ValueError(f"sparse_backward must be one of {SPARSE_MODES}, got {mode!r}")
    return mode == "on" or (mode == "auto" and bool(getattr(surrogate, "sparse_psi", False)))


def online_sparse_enabled(surrogate: Surrogate | None) -> bool:
    """Whether the online traces' weight-gradient product runs over δ's non-zero entries: only
    with ``sparse_backward="on"``. ``auto`` keeps it dense: at one step's sizes (B·n entries)
    the sparse product beats the dense one only below about 1% non-zeros with wide inputs
    (``benchmarks/bench_sparse.py --online``), and the dense sums keep the online figures'
    numbers."""
    return surrogate is not None and getattr(surrogate, "sparse_backward", "auto") == "on"


def bptt_unsupported(net: SpikingNet) -> str | None:
    """Why :func:`bptt_sparse` cannot compute this network's BPTT gradient (None: it can):
    it covers fully connected LIF nets with the subtractive reset and a dense readout, no
    residual terms, chip noise or batch norm."""
    neuron = net.neuron
    if not isinstance(neuron, LIF) or not same_dynamics(neuron, LIF):
        return f"neuron {neuron.name!r} (the sparse backward is written for LIF, eq. 1)"
    if neuron.reset != "subtract":
        return "reset 'zero' (the sparse backward is written for the subtractive reset)"
    if net.hardware is not None:
        return "chip noise"
    if any(s is not None for s in net.skips) or any(
            a is not None for a in getattr(net, "adds", [])):
        return "residual connections"
    if has_sequence_norm(net):
        return "batch norm"
    for layer in [*net.hidden, net.readout]:
        if type(layer) is not DenseLayer or layer.pool is not None:
            return f"layer {type(layer).__name__} (fully connected layers without pooling only)"
    return None


def _leaky_cumsum_(x: Tensor, lam: float) -> Tensor:
    """x[t] += λ x[t−1] along dim 0, in place: the presynaptic trace â (eq. 26's input trace)."""
    for t in range(1, x.shape[0]):
        x[t].add_(x[t - 1], alpha=lam)
    return x


def _csr(rows: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix from entries sorted by row (no scan of a dense tensor)."""
    crow = rows.new_zeros(shape[0] + 1)
    crow[1:] = torch.bincount(rows, minlength=shape[0]).cumsum(0)
    with warnings.catch_warnings():  # "CSR support is in beta state" (torch 2.x)
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


def _weight_grad(rows: Tensor, cols: Tensor, eps: Tensor, delta: Tensor, inputs: Tensor,
                 sparse_inputs: Tensor | None, lam: float) -> Tensor:
    """Σ_t δ[t]ᵀ x[t] (n × n_in) given ε's entries (rows t·B + b, neurons, values), the dense
    δ (T·B, n) and the inputs x (T, B, n_in): xᵀ δ when the inputs come as a sparse matrix
    (a latency code), else ε (sparse) times the presynaptic traces â (eq. 26)."""
    T, B, n_in = inputs.shape
    n = delta.shape[1]
    if sparse_inputs is not None:
        return torch.sparse.mm(sparse_inputs.t(), delta).t()
    return _eps_times(rows, cols, eps, _leaky_cumsum_(inputs.clone(), lam).reshape(T * B, n_in),
                      n)


def _eps_times(rows: Tensor, cols: Tensor, eps: Tensor, traces: Tensor, n: int) -> Tensor:
    """Σ_t ε[t]ᵀ â[t] (n × n_in): ε's entries (rows t·B + b, neurons, values) as a sparse
    n × T·B matrix times the traces (T·B, n_in)."""
    eps_t = torch.sparse_coo_tensor(torch.stack((cols, rows)), eps, (n, traces.shape[0]),
                                    check_invariants=False)
    return torch.sparse.mm(eps_t, traces)


def _add_grad(p: Tensor, g: Tensor) -> None:
    if p.grad is None:
        p.grad = g.detach().clone()
    else:
        p.grad.add_(g)


def bptt_sparse(net: SpikingNet, x: Tensor, y: Tensor, T: int, masks: list[Tensor] | None,
                norm: int, loss: InstantLoss, first: Callable[[], Tensor | tuple[Tensor, ...]],
                output_leak: float = 0.0, readout: MaxOverTime | None = None,
                detach_reset: bool = False, dense: bool = False,
                should_stop: Callable[[], object] | None = None,
                timings: dict[str, float] | None = None) -> tuple[float, Tensor]:
    """BPTT's gradient of one batch over the active neurons only (the module docstring),
    added to every parameter's ``.grad``; the loss is :class:`~opzo.bptt.BPTTLearner`'s.

    ``x``: (B, F) static or (T, B, F) per step; ``first()``: the first layer's currents
    (:meth:`~opzo.bptt.BPTTLearner._first_currents`); ``norm``: the B of the batch mean;
    ``dense``: the same recursion with dense products (the reference for the sparse one);
    ``should_stop``: asked each step (raises :class:`~opzo.learner.BatchAbandoned` through
    the caller's check); ``timings``: gets ``forward`` and ``backward`` seconds.
    Returns (loss summed over the batch, per step for the summed readout; class scores).
    """
    import time

    neuron = net.neuron
    surrogate = net.surrogate
    lam, v_th = float(neuron.lam), float(neuron.v_th)
    static = x.dim() == 2
    batch = x.shape[0] if static else x.shape[1]
    sizes = list(net.hidden_sizes)
    start = time.perf_counter()
    sparse_x: Tensor | None = None
    with torch.no_grad():
        if dense or static:
            firsts = first()
        else:  # the first layer's currents through the sparse input, kept for ∇W_0
            flat_x = x.reshape(T * batch, -1)
            w0, b0 = net.hidden[0].weight, net.hidden[0].bias
            sparse_x = flat_x.to_sparse()  # one pass (a count first would be a second)
            if sparse_x._nnz() < SPARSE_INPUT_DENSITY * flat_x.numel():
                cur = torch.sparse.mm(sparse_x, w0.t())
                if b0 is not None:
                    cur = cur + b0
            else:
                sparse_x = None
                cur = net.hidden[0](flat_x)
            firsts = cur.reshape(T, batch, -1)
        L = len(sizes)
        psi_steps: list[list[Tensor]] = [[] for _ in sizes]  # ψ_l[t] (dense mode)
        active: list[list[tuple[Tensor, Tensor]]] = [[] for _ in sizes]  # (index, ψ) per t
        # what layer l delivers, (T, B, n): its (masked) spikes for the readout's layer (and
        # every layer in dense mode), else their presynaptic trace â (eq. 26's input trace)
        keep_spikes = [dense or l == L - 1 for l in range(L)]
        outs = [x.new_empty(T, batch, n) for n in sizes]
        u_all = [x.new_zeros(batch, n) for n in sizes]  # u_l[t], updated in place
        s_prev = [x.new_zeros(batch, n) for n in sizes]  # s_l[t−1] (before the mask)
        scratch = [x.new_empty(batch, n) for n in sizes]
        reset = [x.new_empty(batch, n) for n in sizes]  # V_th s_l[t−1]
        spike_buf = [x.new_empty(batch, n) for n in sizes]
        inp_buf = [x.new_empty(batch, n) for n in sizes]
        # ψ's non-zeros are counted by the backward's index pass instead of once per call
        counting = (not dense and isinstance(surrogate, SparsityStats)
                    and surrogate.track_stats)
        if counting:
            surrogate.track_stats = False
        try:
            for t in range(T):
                if should_stop is not None:
                    should_stop()
                inp = x if static else x[t]
                for l, layer in enumerate(net.hidden):
                    if l == 0:
                        current = firsts if static else firsts[t]
                    elif layer.bias is not None:  # F.linear's own product
                        current = torch.addmm(layer.bias, inp, layer.weight.t(),
                                              out=scratch[l])
                    else:
                        current = torch.mm(inp, layer.weight.t(), out=scratch[l])
                    # eq. 1 in PureOps.membrane's order of operations (the same values as
                    # autograd's BPTT), in place; spikes as _SpikeFn's forward
                    u = u_all[l]
                    u.sub_(torch.mul(s_prev[l], v_th, out=reset[l])).mul_(lam).add_(current)
                    if dense:
                        psi_steps[l].append(surrogate(u, v_th))
                    else:  # the active entries (found here, as SparseGrad's forward does)
                        active[l].append(surrogate.nonzeros(u, v_th))
                    direct = keep_spikes[l]  # the spikes go straight to outs
                    spikes = torch.gt(u, v_th, out=outs[l][t] if direct and masks is None
                                      else spike_buf[l])
                    s_prev[l] = spikes
                    inp = spikes if masks is None else torch.mul(
                        spikes, masks[l], out=outs[l][t] if direct else inp_buf[l])
                    if not direct:  # â_l[t] = λ â_l[t−1] + x_l[t]
                        if t == 0:
                            outs[l][0].copy_(inp)
                        else:
                            torch.add(inp, outs[l][t - 1], alpha=lam, out=outs[l][t])
        finally:
            if counting:
                surrogate.track_stats = True
        n_out = net.num_outputs
        top = outs[-1].reshape(T * batch, sizes[-1])
        o_all = net.readout(top).reshape(T, batch, n_out)
    o_leaf = o_all.requires_grad_()
    with torch.enable_grad():
        steps = o_leaf.unbind(0)
        if readout is not None:
            scores = readout.scores(list(steps))
            total = loss.per_sample(scores, y).sum()
            (total / norm).backward()
            loss_value = float(total.detach())
            out_sum = scores.detach()
        else:
            total = x.new_zeros(())
            leaky: Tensor | None = None
            for o in steps:
                if output_leak:
                    leaky = o if leaky is None else output_leak * leaky + o
                    o = leaky
                total = total + loss.per_sample(o, y).sum()
            (total / (norm * T)).backward()
            loss_value = float(total.detach()) / T
            out_sum = o_all.detach().sum(0)
    if timings is not None:
        timings["forward"] = time.perf_counter() - start
        start = time.perf_counter()
    if not math.isfinite(loss_value):
        return loss_value, out_sum
    err = o_leaf.grad.reshape(T * batch, n_out)
    with torch.no_grad():
        _add_grad(net.readout.weight, err.t() @ top)
        if net.readout.bias is not None:
            _add_grad(net.readout.bias, err.sum(0))
        up_delta, up_weight = err, net.readout.weight.detach()
        for l in reversed(range(len(sizes))):
            layer, n = net.hidden[l], sizes[l]
            if dense:
                psis_l = torch.stack(psi_steps[l])
                g = (up_delta @ up_weight).reshape(T, batch, n)
                if masks is not None:
                    g = g * masks[l]
                delta = torch.empty(T, batch, n, dtype=x.dtype, device=x.device)
                nxt: Tensor | None = None
                for t in reversed(range(T)):
                    gt = g[t] if nxt is None or detach_reset else g[t] - (lam * v_th) * nxt
                    d = psis_l[t] * gt
                    if nxt is not None:
                        d = d + lam * nxt
                    delta[t] = d
                    nxt = d
                delta2 = delta.reshape(T * batch, n)
                inputs = outs[l - 1] if l else (x.expand(T, *x.shape) if static else x)
                grad_w = delta2.t() @ inputs.reshape(T * batch, -1)
            else:
                local = [f for f, _ in active[l]]  # per step: positions in (B·n)
                counts = [f.numel() for f in local]
                vals = torch.cat([v for _, v in active[l]])
                active[l] = []
                if counting:
                    surrogate.add_counts(vals.numel(), T * batch * n, T)
                step = torch.repeat_interleave(torch.arange(T, device=x.device),
                                               torch.tensor(counts, device=x.device))
                flat = torch.cat(local) if local else step
                rows = flat // n + step * batch  # t·B + b
                cols = flat % n
                # g_l at the active entries: (δ_up W_up) sampled there (SDDMM)
                pattern = _csr(rows, cols, vals, (T * batch, n))
                g = torch.sparse.sampled_addmm(pattern, up_delta, up_weight, beta=0.0).values()
                if masks is not None:
                    g = g * masks[l][rows % batch, cols]
                delta = x.new_empty(T, batch * n)
                eps = vals * g if detach_reset else torch.empty_like(vals)
                end = len(vals)
                for t in range(T - 1, -1, -1):  # δ[t] = λ δ[t+1] + ε[t]
                    if t == T - 1:
                        delta[t].zero_()
                    else:
                        torch.mul(delta[t + 1], lam, out=delta[t])
                    begin = end - counts[t]
                    if begin == end:
                        continue
                    pos = local[t]
                    if detach_reset:
                        e = eps[begin:end]
                    else:  # ε[t] = ψ[t] (g[t] − λ V_th δ[t+1])
                        e = g[begin:end]
                        if t < T - 1:
                            e = e - (lam * v_th) * delta[t + 1][pos]
                        e = vals[begin:end] * e
                        eps[begin:end] = e
                    delta[t].index_add_(0, pos, e)
                    end = begin
                delta2 = delta.view(T * batch, n)
                if static and l == 0:
                    grad_w = delta2.reshape(T, batch, n).sum(0).t() @ x
                elif l == 0:
                    grad_w = _weight_grad(rows, cols, eps, delta2, x, sparse_x, lam)
                else:  # ε (sparse) times the traces â_{l−1} the forward kept
                    grad_w = _eps_times(rows, cols, eps, outs[l - 1].view(T * batch, -1), n)
                if layer.bias is not None:  # Σ_t δ[t] = Σ_t c[t] ε[t], c[t] = Σ_k≤t λ^k
                    c = x.new_empty(T)
                    c[0] = 1.0
                    for t in range(1, T):
                        c[t] = lam * c[t - 1] + 1.0
                    _add_grad(layer.bias, x.new_zeros(n).index_add_(0, cols, eps * c[step]))
                _add_grad(layer.weight, grad_w)
                up_delta, up_weight = delta2, layer.weight.detach()
                continue
            _add_grad(layer.weight, grad_w)
            if layer.bias is not None:
                _add_grad(layer.bias, delta2.sum(0))
            up_delta, up_weight = delta2, layer.weight.detach()
    if timings is not None:
        timings["backward"] = time.perf_counter() - start
    return loss_value, out_sum


def accumulate_sparse(layer: object, delta: Tensor, trace: Tensor, bias_trace: float) -> bool:
    """∇W += δᵀ â and ∇b += b̂ Σ_batch δ over δ's non-zero entries (online rules, OTTT trace
    with per-step input: :meth:`opzo.layers.DenseLayer.accumulate_grad`'s sums without the
    zero terms). False (nothing done) for other layers or a δ that is not sparse enough."""
    if type(layer) is not DenseLayer or delta.dim() != 2 or trace.dim() != 2:
        return False
    nnz = int(torch.count_nonzero(delta))
    if nnz > ONLINE_MAX_DENSITY * delta.numel():
        return False
    weight = layer.weight
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    if nnz:
        weight.grad.add_(torch.sparse.mm(delta.t().to_sparse(), trace))
    if layer.bias is not None:
        if layer.bias.grad is None:
            layer.bias.grad = torch.zeros_like(layer.bias)
        layer.bias.grad.add_(delta.sum(0), alpha=bias_trace)
    return True
