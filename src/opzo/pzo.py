"""PZO without temporal truncation, and DFA through time: the OPZO paper's non-online variant.

OPZO paper, appendix E.2 ("Discussion of the method") and Table 13: "we leverage PZO to
estimate gradients from the network output at time step t_i to intermediate layers at time
steps t_j (t_j ≤ t_i). To reduce the momentum costs, we share the momentum for the same
interval between t_i and t_j, i.e., there will be T feedback momentum representing the
feedback matrix from t_i-output to (t_i − k)-features (k = 0, 1, …, T − 1). We perform noise
injection to all time steps and update the momentum feedback matrices based on noises and
network outputs."  The paper gives no formula; this module derives one from eq. 5-6.

**Notation** (per sample b; flattened (B, n_l) tensors as everywhere in opzo). Hidden layer l
delivers x_l[t] = (s_l[t] + α z_l[t]) ⊙ m_l (noise after the neuron, section 4.4); the readout
gives õ[t]. The z_l[t] are drawn independently at every step, E[z zᵀ] = I. The Jacobian from
layer l's features at t_j to the output at t_i ≥ t_j, through the unrolled network above l
(its membranes, resets and the spikes of later steps), is J_l[t_i, t_j] = ∂o[t_i]/∂x_l[t_j],
and it is zero for t_j > t_i (causality).

**Feedback matrices.** To first order in α, õ[t_i] = o[t_i] + α Σ_{t_j ≤ t_i} J[t_i, t_j]
z[t_j], and z[t_i − k] is independent of o and of every other z, so

    E[ z[t_i − k] õ[t_i]ᵀ ] / α = J[t_i, t_i − k]ᵀ                       (Stein / eq. 5)

for each t_i ≥ k. M_k (shape (Σ_l n_l, m), the layers stacked as in :class:`~opzo.rules.OPZO`)
estimates J_kᵀ, the Jacobian at lag k shared over t_i. The update is eq. 6 applied at every
output step t_i to every lag it can see: for t_i = 0, 1, …, T − 1 in order and each
k = 0..t_i,

    M_k ← λ_M M_k + (1 − λ_M) (1/B) Σ_b z_b[t_i − k] õ_b[t_i]ᵀ  (/α with ``alpha_factor``)

so M_0 is updated exactly as OPZO's M (it *is* the online rule's momentum), and M_k gets
T − k momentum steps per batch. The T − k steps of one batch are applied in one product,
M_k ← λ_M^{T−k} M_k + (1 − λ_M)/B Σ_{j=0}^{T−k−1} λ_M^{T−k−1−j} z[j] õ[j + k]ᵀ (equal up to
float rounding). Its fixed point is the (noise-smoothed) expected Jacobian at lag k,
averaged over samples and output steps. M_k starts at zero; λ_M = 0.99999 as in the paper.

**Error at the features.** The loss is L = (1/(B·T)) Σ_b Σ_{t_i} L_b[t_i] with
e[t_i] = ∂L/∂õ[t_i] in closed form (:mod:`opzo.losses`). The error at layer l's features at t
collects every later output through the lagged matrices:

    g_l[t] = Σ_{k=0}^{T−1−t} M_{k,l} e[t + k]

which needs every e of the batch before the first g: the method is offline (memory ∝ T,
like BPTT), which is why the paper does not use it for on-chip learning.

**Temporal credit inside a layer: exact.** "Without truncating temporal gradients" also holds
inside each layer: the error g_l[t] at the spikes is taken back through layer l's own neuron
(leak and reset, surrogate ψ), a layer-local BPTT with no weight transport:

    ε_l[t] = ψ(u_l[t]) ⊙ (m_l ⊙ g_l[t] − λ V_th ε_l[t+1]) + λ ε_l[t+1]        (subtractive)
    ε_l[t] = ψ(u_l[t]) ⊙ (m_l ⊙ g_l[t] − λ u_l[t] ⊙ ε_l[t+1]) + λ (1 − s_l[t]) ⊙ ε_l[t+1]
                                                                          (reset to zero)
    ∇W_l = Σ_t opᵀ-gradient of ε_l[t] against layer l's input at t,  ∇b_l = Σ_{t,b} ε_l[t]

(ε_l[t] = ∂L/∂u_l[t] = ∂L/∂I_l[t], ε_l[T] = 0). The readout gets ∇W_N = Σ_t e[t]ᵀ x_{N−1}[t].
With the exact per-sample Jacobians J[t_i, t_j] in place of the M_k this is BPTT's gradient
exactly (``tests/test_pzo.py`` checks it against autograd), because x_l[t] feeds nothing but the
layers above at step t: ∂L/∂x_l[t] = Σ_{t_i ≥ t} J[t_i, t]ᵀ e[t_i].

**DFA through time** (:class:`DFAThroughTime`, Table 13's "DFA" column, which the paper does
not define further): the same computation with fixed random matrices B_k in place of the
M_k, one per lag, drawn independently (Kaiming-uniform like :class:`~opzo.rules.DFA`);
``lags=1`` keeps the same-step B_0 only (plain DFA's spatial credit with the exact temporal
credit inside each layer).

Not offered: noise before the neuron (M_k would then estimate the Jacobian with respect to
the current, through layer l's own Heaviside, and ψ would be counted twice) and antithetic
noise (z[t] = −z[t−1] correlates neighbouring steps, so E[z[t−1] õ[t]ᵀ] would pick up −J_0
at lag 1).

Batch normalisation along all time steps (Table 13's "5-layer CNN (BN)" row; norm
``bn-all-t`` or ``tdbn``, :mod:`opzo.norm`): the forward pass runs layer by layer over the
whole sequence (:func:`opzo.layer_major.untruncated_forward`), each normaliser's statistics
taken over (batch, time, space); ε_l[t] above is then ∂L/∂I_l[t] at the normalised current,
and the weight gradient takes it back through the normaliser's transpose over all T·B rows
at once (exact for a normaliser whose statistics are those rows').
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import BatchStats, check_labels, check_optimizer, check_stop
from .distributed import Shard
from .layer_major import untruncated_forward
from .losses import InstantLoss
from .network import SpikingNet
from .norm import has_sequence_norm, normed_layers
from .registry import Options
from .rules.noise import NoiseSampler, Perturbed

__all__ = ["UNTRUNCATED_METHODS", "DFAThroughTime", "LaggedFeedback", "PZOFeedback",
           "TemporalFeedback", "UnrolledBatch", "UntruncatedLearner", "feedback_from_config",
           "untruncated_state_sizes"]

#: the methods of this module on the command line (``opzo train --method``), with their help
UNTRUNCATED_METHODS: dict[str, str] = {
    "pzo": "PZO without temporal truncation (OPZO paper appendix E.2, Table 13): one momentum "
           "feedback matrix per time lag, learned from the noise of every step, and exact "
           "temporal credit inside each layer; offline (memory ∝ T)",
    "dfa-time": "DFA through time (OPZO paper Table 13's DFA column): one fixed random "
                "feedback matrix per time lag, exact temporal credit inside each layer; "
                "offline (memory ∝ T)",
}


@dataclass
class UnrolledBatch:
    """Everything the forward pass of one batch kept (memory ∝ T).

    Per hidden layer l, time-major: ``u[l]`` and ``s[l]`` (T, B, n_l) potentials and spikes;
    ``inputs[l]`` (T, B, n_in) what the layer's op saw (after its pooling), or (B, n_in) for
    the first layer of a static input. ``noise``: the unscaled z (T, B, Σ n_l) or None;
    ``outputs``: õ (T, B, m); ``readout_in`` (T, B, n_r); ``x`` the flattened input
    ((B, F) static or (T, B, F)), ``masks`` the dropout masks (or None), ``alpha`` the noise
    scale used.
    """

    T: int
    x: Tensor
    static: bool
    masks: list[Tensor] | None
    noise: Tensor | None
    alpha: float
    outputs: Tensor
    u: list[Tensor]
    s: list[Tensor]
    inputs: list[Tensor]
    readout_in: Tensor


class TemporalFeedback(Perturbed):
    """How the output errors of all steps reach the hidden layers' features (the interface).

    :meth:`errors` returns g (T, B, Σ n_l), the error at every layer's features x_l[t];
    :meth:`update` learns from the batch's forward pass (before :meth:`errors` is asked).
    """

    name = "feedback"

    def bind(self, net: SpikingNet, steps: int) -> None:
        """Allocate state for ``net`` and up to ``steps`` time steps per batch."""
        self.sizes = list(net.hidden_sizes)
        self.num_outputs = net.num_outputs
        self.steps = int(steps)

    def update(self, batch: UnrolledBatch) -> None:
        """Learn from one batch's forward pass (PZO's momentum update)."""

    def errors(self, e: Tensor, batch: UnrolledBatch) -> Tensor:
        """g[t] for every step, (T, B, Σ n_l), from the output errors e (T, B, m)."""
        raise NotImplementedError



class LaggedFeedback(TemporalFeedback):
    """g[t] = Σ_{k=0}^{min(K, T−t)−1} F_k e[t + k] with one (Σ n_l, m) matrix per lag k.

    ``lags`` K: how many lags are fed back (default: all T). The matrices are stored
    transposed, ``feedback_t`` of shape (K, m, Σ n_l); lag k is one product over the
    (T − k)·B rows e[k:] for all steps at once.
    """

    def __init__(self, lags: int | None = None) -> None:
        if lags is not None and lags < 1:
            raise ValueError(f"lags must be >= 1 (1: the same step only), got {lags}")
        self.lags = lags

    def bind(self, net: SpikingNet, steps: int) -> None:
        super().bind(net, steps)
        w = net.readout.weight
        self.num_lags = self.steps if self.lags is None else min(self.lags, self.steps)
        #: F_kᵀ for k = 0..K−1, (K, m, Σ n_l)
        self.feedback_t = torch.zeros(self.num_lags, self.num_outputs, sum(self.sizes),
                                      dtype=w.dtype, device=w.device)

    def feedback(self, k: int) -> Tensor:
        """F_k of all layers stacked, (Σ n_l, m) (a view)."""
        return self.feedback_t[k].t()

    def errors(self, e: Tensor, batch: UnrolledBatch) -> Tensor:
        T, B, m = e.shape
        if T > self.steps:
            raise ValueError(f"this feedback was bound for T <= {self.steps} steps, got {T}")
        g = e.new_zeros(T, B, sum(self.sizes))
        for k in range(min(self.num_lags, T)):
            rows = (T - k) * B
            g[: T - k].view(rows, -1).addmm_(e[k:].reshape(rows, m), self.feedback_t[k])
        return g

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["feedback_t"] = self.feedback_t.clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.feedback_t.copy_(state["feedback_t"])


class DFAThroughTime(LaggedFeedback):
    """Fixed random B_k per lag (see the module docstring), each Kaiming-uniform
    (bound 1/√m, the law of :class:`~opzo.rules.DFA`'s B), drawn from torch's generator."""

    name = "dfa-time"

    def bind(self, net: SpikingNet, steps: int) -> None:
        super().bind(net, steps)
        for k in range(self.num_lags):
            for block in self.feedback_t[k].split(self.sizes, dim=1):
                torch.nn.init.kaiming_uniform_(block.t(), a=math.sqrt(5))


class PZOFeedback(LaggedFeedback):
    """PZO without temporal truncation: momentum feedback M_k per lag, learned from the noise
    injected at every step and the outputs (the update is in the module docstring).

    ``noise``: a :class:`~opzo.rules.NoiseSampler` with noise after the neuron and no
    antithetic pairs; ``lambda_m`` λ_M; ``alpha_factor``: divide by α (the paper drops it in
    practice, appendix C.3.2); ``lags``: see :class:`LaggedFeedback`.
    """

    name = "pzo"

    def __init__(self, noise: NoiseSampler | None = None, lambda_m: float = 0.99999,
                 alpha_factor: bool = False, lags: int | None = None) -> None:
        super().__init__(lags)
        noise = noise or NoiseSampler()
        if noise.position != "after":
            raise ValueError("PZO without truncation takes noise after the neuron only "
                             "(see opzo.pzo's docstring)")
        if noise.antithetic:
            raise ValueError("antithetic noise correlates neighbouring steps and biases the "
                             "lagged estimates; PZO without truncation draws z afresh each step")
        if not 0.0 <= lambda_m < 1.0:
            raise ValueError(f"momentum lambda_m must lie in [0, 1), got {lambda_m}")
        self.noise = noise
        self.lambda_m = float(lambda_m)
        self.alpha_factor = bool(alpha_factor)

    @property
    def M(self) -> Tensor:
        """M_k for every lag, (K, Σ n_l, m) (a view)."""
        return self.feedback_t.transpose(1, 2)

    def update(self, batch: UnrolledBatch) -> None:
        """M_k ← λ_M^{T−k} M_k + (1 − λ_M)/B Σ_j λ_M^{T−k−1−j} z[j] õ[j + k]ᵀ, every lag k."""
        z, out = batch.noise, batch.outputs
        assert z is not None, "PZO needs the noise of the forward pass"
        T, B, m = out.shape
        scale = (1.0 - self.lambda_m) / B
        if self.alpha_factor:
            scale /= batch.alpha
        lam = self.lambda_m
        for k in range(min(self.num_lags, T)):
            n = T - k
            # weight of output step k + j: λ^{n−1−j}, the later steps' decays after it
            w = torch.tensor([lam ** (n - 1 - j) for j in range(n)], dtype=out.dtype,
                             device=out.device)
            weighted = (out[k:] * w[:, None, None]).reshape(n * B, m)
            self.feedback_t[k].mul_(lam**n).addmm_(weighted.t(), z[:n].reshape(n * B, -1),
                                                   alpha=scale)


def feedback_from_config(method: str, cfg: Options) -> TemporalFeedback:
    """The feedback of ``method`` (a key of :data:`UNTRUNCATED_METHODS`) with the config's
    options: for ``pzo`` the perturbation (``alpha``, ``alpha_final``, ``noise``,
    ``noise_rng``; after the neuron, no antithetic pairs), ``lambda_m`` and ``alpha_factor``
    (off unless asked, as OPZO's M, appendix C.3.2); ``dfa-time`` reads none."""
    if method == "pzo":
        return PZOFeedback(NoiseSampler.from_config(cfg), lambda_m=cfg.lambda_m,
                           alpha_factor=bool(cfg.alpha_factor))
    if method == "dfa-time":
        return DFAThroughTime()
    raise ValueError(f"unknown untruncated method {method!r}; choose one of "
                     f"{sorted(UNTRUNCATED_METHODS)}")


def untruncated_state_sizes(method: str, net: SpikingNet, batch: int, steps: int
                            ) -> list[tuple[str, int, str]]:
    """What :class:`UntruncatedLearner` with ``method``'s feedback keeps for ``net`` at batch
    size ``batch`` and T = ``steps``, in bytes, from the shapes alone (the form of
    :func:`opzo.rules.mforms.state_sizes`): the T feedback matrices (Σ n_l × m each) and the
    forward record of one batch (potentials, spikes, each layer's input, the noise: ∝ T)."""
    item = net.readout.weight.element_size()
    m = net.num_outputs
    n = sum(net.hidden_sizes)
    name = "M_k" if method == "pzo" else "B_k"
    out = [(name, steps * n * m * item, f"{steps} lags x {n} neurons x {m} outputs")]
    # per step and sample: u and s of every neuron, each layer's input (at most the layer
    # below's spikes), and for pzo the noise z
    per_step = (4 if method == "pzo" else 3) * n
    out.append(("forward record", steps * batch * per_step * item,
                f"T {steps} x batch {batch} x (u, s, inputs{', z' if method == 'pzo' else ''})"))
    return out


class UntruncatedLearner:
    """Trains a :class:`~opzo.network.SpikingNet` with a :class:`TemporalFeedback` (PZO
    without truncation, DFA through time) and layer-local BPTT, writing ``.grad``.

    Example::

        net = SpikingMLP([50, 128, 128, 10])
        learner = UntruncatedLearner(net, PZOFeedback(NoiseSampler(alpha=0.2)), steps=50)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        stats = learner.train_batch(x, y, opt, T=50)    # x: (T, B, F) or (B, F) static

    Offline: the forward pass keeps every step (memory ∝ T). No autograd: the error reaches
    the features through the feedback, and each layer's own temporal credit is the explicit
    recursion of the module docstring. The loss is the mean over batch and steps of the
    instantaneous loss, as for :class:`~opzo.learner.OnlineLearner` and
    :class:`~opzo.bptt.BPTTLearner`.
    """

    name = "untruncated"

    def __init__(self, net: SpikingNet, feedback: TemporalFeedback, steps: int,
                 loss: InstantLoss | None = None) -> None:
        if not net.neuron.supports_untruncated_pzo():
            raise ValueError(f"PZO without truncation takes the error back through each layer's "
                             f"LIF neuron (leak and reset, the recursion derived for eq. 1); "
                             f"the network's neuron is {net.neuron.name!r}: use a LIF network")
        if any(m.per_step for m in normed_layers(net)):
            raise ValueError("untruncated PZO takes batch norm along all time steps (norm "
                             "'bn-all-t' or 'tdbn', OPZO paper Table 13), not per-step "
                             "statistics (norm 'bn')")
        self.net = net
        self.feedback = feedback
        self.loss = loss or InstantLoss()
        self.steps = int(steps)
        feedback.bind(net, self.steps)
        #: asked at every time step of the forward pass; True gives the batch up before the
        #: feedback learns from it (:class:`~opzo.learner.BatchAbandoned`)
        self.should_stop: Callable[[], bool] | None = None

    @torch.no_grad()
    def forward(self, x: Tensor, T: int | None = None, masks: list[Tensor] | None = None
                ) -> UnrolledBatch:
        """Run one batch forward with the feedback's noise, keeping every step."""
        net, fb = self.net, self.feedback
        x, T = net.prepare_input(x, T)
        if T > self.steps:
            raise ValueError(f"this learner was built for T <= {self.steps} steps, got {T}")
        static = x.dim() == 2
        batch = x.shape[0] if static else x.shape[1]
        if masks is None:
            masks = net.dropout_masks(batch, x)
        state = net.initial_state(batch, x)
        fb.start_batch()
        alpha = fb.noise.alpha if fb.noise is not None else 0.0
        if has_sequence_norm(net):  # BN along all time steps: layer-major (opzo.layer_major)
            noises = []
            for t in range(T):
                check_stop(self.should_stop)
                z = fb.perturbation(t, batch, x)  # may be a reused buffer: copied
                noises.append(None if z is None else [v.clone() for v in z])
            drawn = None if noises[0] is None else noises
            rec = untruncated_forward(net, x, T, masks, drawn, alpha)
            return UnrolledBatch(
                T=T, x=x, static=static, masks=masks,
                noise=None if drawn is None else torch.stack([torch.cat(z, 1) for z in drawn]),
                alpha=alpha, **rec)
        first = first_in = None
        if static:
            first_in = net.hidden[0].op_input(x)
            first = net.hidden[0].op(first_in)
        n_hidden = len(net.hidden)
        us: list[list[Tensor]] = [[] for _ in range(n_hidden)]
        ss: list[list[Tensor]] = [[] for _ in range(n_hidden)]
        ins: list[list[Tensor]] = [[] for _ in range(n_hidden)]
        zs: list[Tensor] = []
        outs: list[Tensor] = []
        r_ins: list[Tensor] = []
        for t in range(T):
            check_stop(self.should_stop)
            noise = fb.perturbation(t, batch, x)
            o, rec = net.step(state, x if static else x[t], first_current=first,
                              first_input=first_in, noise=noise, noise_scale=alpha,
                              noise_position="after", masks=masks)
            assert rec.inputs is not None and rec.readout_in is not None
            for l in range(n_hidden):
                us[l].append(rec.u[l])
                ss[l].append(rec.spikes[l])
                if not (static and l == 0):
                    ins[l].append(rec.inputs[l])
            if noise is not None:
                zs.append(torch.cat(noise, dim=1))
            outs.append(o)
            r_ins.append(rec.readout_in)
        inputs = [first_in if (static and l == 0) else torch.stack(ins[l])
                  for l in range(n_hidden)]
        assert all(i is not None for i in inputs)
        return UnrolledBatch(
            T=T, x=x, static=static, masks=masks,
            noise=torch.stack(zs) if zs else None, alpha=alpha,
            outputs=torch.stack(outs), u=[torch.stack(v) for v in us],
            s=[torch.stack(v) for v in ss], inputs=inputs,  # type: ignore[arg-type]
            readout_in=torch.stack(r_ins))

    def layer_errors(self, g: Tensor, batch: UnrolledBatch) -> list[Tensor]:
        """ε_l[t] = ∂L/∂I_l[t] of every hidden layer from the errors g (T, B, Σ n_l) at the
        features: the layer-local BPTT recursion of the module docstring, (T, B, n_l) each."""
        net, lif = self.net, self.net.neuron
        T = batch.T
        out: list[Tensor] = []
        for l, gl in enumerate(g.split(self.feedback.sizes, dim=2)):
            u, s = batch.u[l], batch.s[l]
            psi = net.surrogate(u, lif.v_th)
            gm = gl if batch.masks is None else gl * batch.masks[l]
            eps = torch.empty_like(gm)
            nxt: Tensor | None = None
            for t in range(T - 1, -1, -1):
                if nxt is None:
                    eps[t] = psi[t] * gm[t]
                    nxt = eps[t]
                    continue
                if lif.reset == "subtract":
                    ds = gm[t] - (lif.lam * lif.v_th) * nxt
                    carry = lif.lam * nxt
                else:
                    ds = gm[t] - lif.lam * u[t] * nxt
                    carry = lif.lam * (1.0 - s[t]) * nxt
                eps[t] = psi[t] * ds + carry
                nxt = eps[t]
            out.append(eps)
        return out

    @torch.no_grad()
    def accumulate(self, x: Tensor, y: Tensor, T: int | None = None,
                   masks: list[Tensor] | None = None,
                   on_forward: Callable[[UnrolledBatch], None] | None = None) -> BatchStats:
        """Run one batch and add its gradient to every parameter's ``.grad``.

        ``on_forward`` is called with the forward record before the feedback learns from it
        (tests and diagnostics use it)."""
        net = self.net
        flat, _ = net.prepare_input(x, T)  # the labels are checked before the forward pass
        check_labels(y, flat.shape[0] if flat.dim() == 2 else flat.shape[1], net.num_outputs,
                     flat)
        batch = self.forward(x, T, masks)
        if on_forward is not None:
            on_forward(batch)
        T, B = batch.T, batch.outputs.shape[1]
        m = net.num_outputs
        target = F.one_hot(y, m).to(batch.outputs.dtype)
        flat = batch.outputs.reshape(T * B, m)
        lb, e = self.loss.value_and_error(flat, target.repeat(T, 1), y.repeat(T))
        e = e.mul_(1.0 / (B * T)).view(T, B, m)
        self.feedback.update(batch)
        g = self.feedback.errors(e, batch)
        for p in net.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for l, (layer, eps) in enumerate(zip(net.hidden, self.layer_errors(g, batch))):
            if batch.static and l == 0:  # same input at every step: Σ_t ε[t] against x
                layer.accumulate_grad(eps.sum(0), batch.inputs[0], 1.0)
            else:
                layer.accumulate_grad(eps.reshape(T * B, -1),
                                      batch.inputs[l].reshape(T * B, -1), 1.0)
        net.readout.accumulate_grad(e.reshape(T * B, m), batch.readout_in.reshape(T * B, -1),
                                    1.0)
        loss_value = float(lb.sum()) / T
        if not math.isfinite(loss_value):
            raise FloatingPointError("training loss became NaN/inf: lower the learning rate or "
                                     "the noise scale alpha")
        correct = int((batch.outputs.sum(0).argmax(1) == y).sum())
        return BatchStats(loss_sum=loss_value, correct=correct, count=B)

    # -- the Learner protocol (opzo.learner.Learner) ---------------------------------------
    #: no spatial rule: the temporal feedback takes its place
    rule = None

    def parameters(self) -> list[torch.nn.Parameter]:
        """The model's parameters (the feedback matrices are not trained by the optimizer)."""
        return list(self.net.parameters())

    def state_dict(self) -> dict | None:
        """The feedback's state (its matrices, the noise stream)."""
        return self.feedback.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if state is not None:
            self.feedback.load_state_dict(state)

    def start_epoch(self, progress: float, freeze_feedback: bool) -> None:
        """The noise schedule at ``progress``; the feedback keeps learning (no freezing)."""
        self.feedback.set_progress(progress)

    def epoch_metrics(self) -> dict[str, float]:
        noise = self.feedback.noise
        return {"alpha": noise.alpha} if noise is not None else {}

    def train_batch(self, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
                    T: int | None = None, on_grad: Callable[[], None] | None = None,
                    shard: Shard | None = None) -> BatchStats:
        """Clear ``.grad``, accumulate one batch, step ``optimizer`` (``on_grad`` is called
        before the step). One process only: a ``shard`` is refused."""
        if shard is not None:
            raise ValueError("PZO without truncation runs in one process (no shard)")
        check_optimizer(optimizer, self.net)
        self.net.train()
        optimizer.zero_grad(set_to_none=False)
        stats = self.accumulate(x, y, T)
        if on_grad is not None:
            on_grad()
        optimizer.step()
        return stats
