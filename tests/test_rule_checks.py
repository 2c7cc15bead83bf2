"""Known-answer checks of the learning rules: tests that fail when a rule is wrong.

Each test computes what a rule must produce from its formula, independently of the rule's
code (its own forward pass with torch primitives, its own closed-form loss error, its own ψ,
its own Adam), and compares:

* DFA (and OPZO, which shares the direct-feedback path): δ_l[t] = (B_l e[t]) ⊙ m_l ⊙ ψ(u_l[t])
  (OPZO paper eq. 5 and 7), per layer and step, on a fully connected and a conv net, in
  float64 (torch ops) and float32 (the fused native step, which computes m_l ⊙ ψ itself);
* DKP: the feedback gradient Σ_t â_l[t] e[t]ᵀ with â_l[t] = λ â_l[t−1] + x_l[t] (appendix
  C.3.2), the AdamW steps it makes, and the learned feedback following the readout's
  direction (Kolen-Pollack: same gradient, same optimizer, so the difference decays);
* per-step updates (OTTT_O, ``update="step"``) at T > 1 against autograd with the optimizer
  stepped after every time step;
* OPZO's M (eq. 6) with noise before the neuron against the expected Jacobian of the output
  with respect to the membrane potential, known in closed form on a one-hidden-layer net;
* firing rates of evaluation and of an epoch summary against a hand count.

``tools/mutation_check.py`` injects one-line mistakes into a copy of the package and checks
that these tests (and the others it names) catch every one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from opzo import (
    DFA,
    DKP,
    OPZO,
    FastSigmoidSurrogate,
    InstantLoss,
    NoiseSampler,
    OnlineLearner,
    SigmoidSurrogate,
    SpatialBP,
    SpikingMLP,
    SpikingNet,
    evaluate_batch,
    native,
)
from opzo.layers import ConvLayer
from opzo.surrogate import spike_with_surrogate

from .reference import layer_op

LOSS = InstantLoss("mix", 0.3)  # both terms of the closed-form error


# ---------------------------------------------------------------------------------------
# an independent forward pass and closed forms


@dataclass
class Step:
    """What the independent forward computed at one step: readout o[t]; per hidden layer the
    potential u_l[t], spikes s_l[t], delivered output x_l[t] and raw input x_{l−1}[t]."""

    o: Tensor
    u: list[Tensor]
    s: list[Tensor]
    out: list[Tensor]
    inp: list[Tensor]


@torch.no_grad()
def forward_steps(net: SpikingNet, x: Tensor, T: int, masks: list[Tensor] | None = None,
                  noise: list[list[Tensor]] | None = None, alpha: float = 0.0,
                  position: str = "after") -> list[Step]:
    """The LIF net of OPZO paper eq. 1 written again with torch primitives (no residuals):
    u_l[t] = λ (u_l[t−1] − V_th s_l[t−1]) + op_l(x_{l−1}[t]) (+ α z_l[t] before the neuron),
    s_l[t] = H(u_l[t] − V_th), x_l[t] = (s_l[t] (+ α z_l[t] after the neuron)) ⊙ m_l."""
    assert all(j is None for j in net.skips)
    lif = net.neuron
    static = x.dim() == 2
    batch = x.shape[0] if static else x.shape[1]
    u = [x.new_zeros(batch, n) for n in net.hidden_sizes]
    s = [x.new_zeros(batch, n) for n in net.hidden_sizes]
    steps = []
    for t in range(T):
        inp = x if static else x[t]
        rec = Step(o=x, u=[], s=[], out=[], inp=[])
        for l, layer in enumerate(net.hidden):
            current = layer_op(layer, inp)
            if noise is not None and position == "before":
                current = current + alpha * noise[t][l]
            if lif.reset == "subtract":
                u[l] = lif.lam * (u[l] - lif.v_th * s[l]) + current
            else:
                u[l] = lif.lam * u[l] * (1.0 - s[l]) + current
            s[l] = (u[l] > lif.v_th).to(x.dtype)
            out = s[l]
            if noise is not None and position == "after":
                out = out + alpha * noise[t][l]
            if masks is not None:
                out = out * masks[l]
            rec.u.append(u[l])
            rec.s.append(s[l])
            rec.out.append(out)
            rec.inp.append(inp)
            inp = out
        rec.o = layer_op(net.readout, inp)
        steps.append(rec)
    return steps


def output_error(o: Tensor, y: Tensor, loss: InstantLoss, T: int) -> Tensor:
    """e[t] = ∂L[t]/∂o[t] / (B·T) with L = (1 − γ) CE + γ MSE (OPZO paper section 4.1)."""
    m = o.shape[1]
    target = F.one_hot(y, m).to(o.dtype)
    p = o.exp() / o.exp().sum(1, keepdim=True)
    e = (1.0 - loss.gamma) * (p - target) + (2.0 * loss.gamma / m) * (o - target)
    return e / (o.shape[0] * T)


def psi(net: SpikingNet, u: Tensor) -> Tensor:
    """ψ(u) of the net's surrogate, from its formula (the docstring of opzo.surrogate.sigmoid)."""
    v, sg = net.neuron.v_th, net.surrogate
    if type(sg) is SigmoidSurrogate:
        e = torch.exp(-(u - v) / sg.a)
        return e / (1.0 + e) ** 2 / sg.a
    assert type(sg) is FastSigmoidSurrogate
    return 1.0 / (sg.k * (u - v).abs() + 1.0) ** 2


def trace_grads(net: SpikingNet, steps: list[Step], deltas: list[list[Tensor]],
                errors: list[Tensor]) -> dict[str, Tensor]:
    """OTTT's weight gradients for given δ's: Σ_t ∂⟨δ_l[t], op_l(â_l[t]) + b̂[t] b_l⟩/∂θ with
    â_l[t] = λ â_l[t−1] + x_{l−1}[t], b̂[t] = λ b̂[t−1] + 1, by autograd (through the conv's
    weight standardization), and the readout's Σ_t e[t]ᵀ x_{N−1}[t], Σ_t Σ_b e[t]."""
    lam = net.neuron.lam
    params = dict(net.named_parameters())
    total = 0.0
    a: list[Tensor | None] = [None] * len(net.hidden)
    b_hat = 0.0
    with torch.enable_grad():
        for t, st in enumerate(steps):
            b_hat = lam * b_hat + 1.0
            for l, layer in enumerate(net.hidden):
                a[l] = st.inp[l] if a[l] is None else lam * a[l] + st.inp[l]
                total = total + (deltas[t][l] * layer_op(layer, a[l], b_hat)).sum()
            total = total + (errors[t] * layer_op(net.readout, st.out[-1])).sum()
        grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    return {k: (torch.zeros_like(p) if g is None else g)
            for (k, p), g in zip(params.items(), grads)}


def spy_deltas(rule) -> list[dict]:
    """Record, at every step, the error the rule got, the δ's it returned, its feedback
    blocks as used (after the step's feedback update), the noise and the fused m ⊙ ψ."""
    log: list[dict] = []
    deltas = rule.deltas

    def spy(ctx):
        out = deltas(ctx)
        z = None if rule.noise is None else rule.noise.z.clone()
        dpsi = ctx.record.dpsi
        log.append(dict(error=ctx.error.clone(), deltas=[d.clone() for d in out],
                        feedback=[b.clone() for b in rule.feedback_blocks()], z=z,
                        fused=dpsi is not None and all(d is not None for d in dpsi)))
        return out

    rule.deltas = spy
    return log


def _close(actual: Tensor, expected: Tensor, rtol: float, what: str) -> None:
    """|actual − expected| ≤ rtol · max|expected| elementwise (a relative norm-free check)."""
    scale = float(expected.abs().max())
    assert scale > 0, f"{what}: the expected value is all zeros (the test would be vacuous)"
    err = float((actual - expected).abs().max())
    assert err <= rtol * scale, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def _grads(net) -> dict[str, Tensor]:
    return {k: p.grad.clone() for k, p in net.named_parameters()}


def _fc_net(dtype, surrogate=None, dropout=0.25, seed=0):
    torch.manual_seed(seed)
    net = SpikingMLP([12, 20, 16, 5], surrogate=surrogate, dropout=dropout).to(dtype)
    with torch.no_grad():  # larger weights so that neurons spike often
        for lin in net.hidden:
            lin.weight.mul_(4.0)
    return net


def _conv_net(dtype, dropout=0.25, seed=0):
    torch.manual_seed(seed)
    net = SpikingNet("4C3-AP2-6C3-FC", (2, 6, 6), 4, dropout=dropout).to(dtype)
    with torch.no_grad():
        for layer in net.hidden:
            assert isinstance(layer, ConvLayer)
            layer.gain.mul_(3.0)
            layer.bias.uniform_(0.0, 0.8)
    return net


def _need_native(dtype) -> None:
    if dtype == torch.float32 and not native.ready():
        pytest.skip("the native kernels are unavailable (no C compiler)")


# ---------------------------------------------------------------------------------------
# DFA: δ_l = (B_l e) ⊙ m_l ⊙ ψ(u_l)

DFA_CASES = [
    ("fc", torch.float64, "sigmoid", "dfa"),
    ("fc", torch.float64, "fast-sigmoid", "dfa"),
    ("fc", torch.float32, "sigmoid", "dfa"),
    ("fc", torch.float32, "fast-sigmoid", "dfa"),
    ("conv", torch.float64, "sigmoid", "dfa"),
    ("conv", torch.float32, "sigmoid", "dfa"),
    ("fc", torch.float64, "sigmoid", "opzo"),
    ("fc", torch.float32, "sigmoid", "opzo"),
]


@pytest.mark.parametrize("kind,dtype,surrogate,rule_name", DFA_CASES,
                         ids=["-".join([k, str(d).removeprefix("torch."), s, r])
                              for k, d, s, r in DFA_CASES])
def test_direct_feedback_delta_equals_its_closed_form(kind, dtype, surrogate, rule_name):
    """δ_l[t] = (B_l e[t]) ⊙ m_l ⊙ ψ(u_l[t]) at every layer and step (OPZO paper eq. 7),
    and the weight gradients OTTT's trace makes of them. Float32 runs the fused native step,
    whose m ⊙ ψ (dpsi) must be the one used; OPZO's δ is the same with B_l = M_l (after the
    step's update of eq. 6) and the noise in the forward pass."""
    _need_native(dtype)
    if kind == "fc":
        sg = SigmoidSurrogate() if surrogate == "sigmoid" else FastSigmoidSurrogate(5.0)
        net = _fc_net(dtype, surrogate=sg)
    else:
        net = _conv_net(dtype)
    T, batch = 4, 6
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, batch, net.num_inputs, generator=g, dtype=dtype).abs()
    y = torch.randint(0, net.num_outputs, (batch,), generator=g)
    net.train()
    masks = net.dropout_masks(batch, x)
    assert masks is not None
    if rule_name == "dfa":
        rule = DFA()
    else:
        rule = OPZO(NoiseSampler(alpha=0.3), lambda_m=0.9, alpha_factor=True)
    learner = OnlineLearner(net, rule, LOSS)
    log = spy_deltas(rule)
    for p in net.parameters():
        p.grad = None
    learner.accumulate(x, y, T=T, masks=masks)
    ours = _grads(net)

    noise_kw = {}
    if rule_name == "opzo":
        noise_kw = dict(noise=[list(entry["z"].split(net.hidden_sizes, dim=1)) for entry in log],
                        alpha=0.3, position="after")
    steps = forward_steps(net, x, T, masks=masks, **noise_kw)
    rtol = 1e-10 if dtype == torch.float64 else 2e-5
    expected_deltas, errors = [], []
    for t, (st, entry) in enumerate(zip(steps, log)):
        if dtype == torch.float32:
            assert entry["fused"], "the fused native step did not give m ⊙ ψ"
        e = output_error(st.o, y, LOSS, T)
        _close(entry["error"], e, rtol, f"e[{t}]")
        errors.append(e)
        per_layer = []
        for l, (B_l, m_l, u_l) in enumerate(zip(entry["feedback"], masks, st.u)):
            delta = (e @ B_l.t()) * m_l * psi(net, u_l)
            _close(entry["deltas"][l], delta, rtol, f"delta_{l}[{t}]")
            per_layer.append(delta)
        expected_deltas.append(per_layer)
    ref = trace_grads(net, steps, expected_deltas, errors)
    for k in ref:
        _close(ours[k], ref[k], 1e-9 if dtype == torch.float64 else 2e-4, k)


# ---------------------------------------------------------------------------------------
# DKP: gradient Σ_t â_l[t] e[t]ᵀ, AdamW


def _adamw(p: Tensor, grad: Tensor, state: dict, lr: float, wd: float,
           betas=(0.9, 0.999), eps=1e-8) -> Tensor:
    """One AdamW step written out (Loshchilov & Hutter 2019; torch's defaults)."""
    state["k"] = k = state.get("k", 0) + 1
    state["m"] = betas[0] * state.get("m", 0.0) + (1 - betas[0]) * grad
    state["v"] = betas[1] * state.get("v", 0.0) + (1 - betas[1]) * grad * grad
    m_hat = state["m"] / (1 - betas[0] ** k)
    v_hat = state["v"] / (1 - betas[1] ** k)
    return p * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)


def test_dkp_feedback_gradient_and_step_equal_their_formula():
    """The gradient DKP hands its optimizer is Σ_t e[t]ᵀ â[t] (stored transposed: F is
    (Σ n_l, m), the gradient of Fᵀ is (m, Σ n_l)), â_l[t] = λ â_l[t−1] + x_l[t] on what layer
    l delivered (spikes ⊙ dropout mask), reset every batch; the step is AdamW's with the
    rule's lr and weight decay. Two batches: the second starts from learned feedback (its
    δ's are non-zero) and continues Adam's moments."""
    dtype = torch.float64
    net = _fc_net(dtype, dropout=0.25)
    lr, wd = 1e-2, 0.1
    rule = DKP(lr=lr, weight_decay=wd)
    learner = OnlineLearner(net, rule, LOSS)
    captured: list[tuple[Tensor, Tensor, Tensor]] = []
    step = rule.optimizer.step

    def spy_step(*args, **kw):
        before = rule.feedback_t.detach().clone()
        grad = rule.feedback_t.grad.clone()
        out = step(*args, **kw)
        captured.append((before, grad, rule.feedback_t.detach().clone()))
        return out

    rule.optimizer.step = spy_step
    T, batch, lam = 5, 6, net.neuron.lam
    g = torch.Generator().manual_seed(2)
    state: dict = {}
    net.train()
    for k in range(2):
        x = torch.rand(T, batch, 12, generator=g, dtype=dtype) * 2
        y = torch.randint(0, 5, (batch,), generator=g)
        masks = net.dropout_masks(batch, x)
        learner.accumulate(x, y, T=T, masks=masks)  # the model's weights stay as they are
        rule.optimizer_step()
        steps = forward_steps(net, x, T, masks=masks)
        expected = torch.zeros_like(rule.feedback_t)
        trace = None
        for st in steps:
            act = torch.cat(st.out, dim=1)
            trace = act if trace is None else lam * trace + act
            expected += output_error(st.o, y, LOSS, T).t() @ trace
        before, grad, after = captured[k]
        _close(grad, expected, 1e-10, f"DKP feedback gradient, batch {k}")
        _close(after, _adamw(before, expected, state, lr, wd), 1e-9, f"DKP step, batch {k}")
        assert float(rule.feedback_t.grad.abs().max()) == 0.0  # cleared for the next batch
    assert float(captured[1][0].abs().max()) > 0  # the second batch started from learned F


def _toy_task(batch=32, n_in=10, m=4, seed=3):
    """A linearly separable problem: the label is the argmax of a fixed linear map of x."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n_in, m, generator=g, dtype=torch.float64)
    x = torch.randn(batch, n_in, generator=g, dtype=torch.float64)
    return x, (x @ A).argmax(1)


def _cosine(a: Tensor, b: Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_dkp_feedback_equals_readout_minus_its_decayed_init_without_trace_leak():
    """Kolen-Pollack's known answer: with trace leak λ = 0 the gradient of the last hidden
    layer's feedback, Σ_t e[t]ᵀ x_{N−1}[t], is the readout's gradient, and with the same AdamW
    (lr, weight decay) both make the same steps, so after k batches
    F_{N−1}ᵀ = W_N[k] − (1 − lr·wd)^k W_N[0] exactly (a sign or scale error in the feedback
    gradient, or another optimizer, breaks it)."""
    torch.manual_seed(0)
    net = SpikingMLP([10, 16, 4]).double()
    with torch.no_grad():
        net.hidden[0].weight.mul_(3.0)
    lr, wd, K = 1e-2, 0.5, 25
    rule = DKP(lr=lr, weight_decay=wd, lam=0.0)
    learner = OnlineLearner(net, rule, LOSS)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    w0 = net.readout.weight.detach().clone()
    x, y = _toy_task(n_in=10)
    for _ in range(K):
        learner.train_batch(x, y, opt, T=4)
    expected = net.readout.weight.detach() - (1 - lr * wd) ** K * w0
    _close(rule.feedback_t, expected, 1e-8, "F^T against W_N - (1 - lr wd)^K W_N[0]")


def test_dkp_feedback_moves_toward_the_readout_direction():
    """With the default trace (λ = the membrane leak) the feedback of the layer below the
    readout is no longer W_Nᵀ exactly, but it learns the readout's direction: the cosine
    between F_{N−1} and W_Nᵀ grows over training and ends clearly positive (a flipped
    feedback update would drive it negative)."""
    torch.manual_seed(0)
    net = SpikingMLP([10, 24, 16, 4]).double()
    with torch.no_grad():
        for lin in net.hidden:
            lin.weight.mul_(3.0)
    rule = DKP(lr=1e-2, weight_decay=1e-2)
    learner = OnlineLearner(net, rule, LOSS)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=1e-2)
    x, y = _toy_task(n_in=10)
    cosines = []
    for k in range(60):
        learner.train_batch(x, y, opt, T=4)
        if k in (0, 59):
            last = rule.feedback_blocks()[-1]  # (n_{N-1}, m)
            cosines.append(_cosine(last, net.readout.weight.detach().t()))
    assert cosines[1] > cosines[0] + 0.1, cosines
    assert cosines[1] > 0.6, cosines


# ---------------------------------------------------------------------------------------
# per-step updates (OTTT_O) at T > 1


def per_step_reference(net: SpikingNet, x: Tensor, y: Tensor, T: int, loss: InstantLoss,
                       opt: torch.optim.Optimizer, masks: list[Tensor] | None = None) -> None:
    """OTTT_O by autograd: at every step t the loss L[t]/T of that step alone is
    differentiated under OTTT's approximation (u_l[t] rewritten as const + op_l(â_l[t]) +
    b̂[t] b_l with the weights of this step, see tests/reference.py) and the optimizer steps;
    the next step's forward pass runs with the updated weights."""
    lif = net.neuron
    lam = lif.lam
    static = x.dim() == 2
    batch = y.shape[0]
    u = [x.new_zeros(batch, n) for n in net.hidden_sizes]
    s = [x.new_zeros(batch, n) for n in net.hidden_sizes]
    a_prev: list[Tensor | None] = [None] * len(net.hidden)
    b_hat = 0.0
    for t in range(T):
        opt.zero_grad(set_to_none=False)
        b_hat = lam * b_hat + 1.0
        inp = x if static else x[t]
        for l, layer in enumerate(net.hidden):
            a = inp if a_prev[l] is None else lam * a_prev[l] + inp
            with torch.no_grad():
                current = layer_op(layer, inp)
                u_val = lam * (u[l] - lif.v_th * s[l]) + current
            attached = layer_op(layer, a, b_hat)
            u_att = (u_val - attached).detach() + attached
            spikes = spike_with_surrogate(u_att, lif.v_th, net.surrogate)
            u[l], s[l], a_prev[l] = u_val, spikes.detach(), a.detach()
            inp = spikes if masks is None else spikes * masks[l]
        o = layer_op(net.readout, inp)
        (loss.per_sample(o, y).mean() / T).backward()
        opt.step()


def _sgd(params):
    return torch.optim.SGD(params, lr=0.5, momentum=0.9)


def _adamw_opt(params):
    return torch.optim.AdamW(params, lr=0.05, weight_decay=0.01)


@pytest.mark.parametrize("kind,static,dropout,make_opt", [
    ("fc", True, 0.0, _sgd),
    ("fc", False, 0.0, _adamw_opt),
    ("fc", True, 0.3, _adamw_opt),
    ("conv", True, 0.0, _adamw_opt),
], ids=["fc-static-sgd", "fc-sequence-adamw", "fc-dropout-adamw", "conv-static-adamw"])
def test_per_step_updates_equal_autograd_with_an_optimizer_step_per_time_step(
        kind, static, dropout, make_opt):
    """``update="step"`` (OTTT_O) at T = 5: the weights after one batch equal the autograd
    reference that steps the optimizer after every time step, and differ from one update
    per batch (so the check can tell the two apart)."""
    dtype = torch.float64
    net = _fc_net(dtype, surrogate=FastSigmoidSurrogate(5.0), dropout=dropout) if kind == "fc" \
        else _conv_net(dtype, dropout=dropout)
    T, batch = 5, 6
    g = torch.Generator().manual_seed(4)
    shape = (batch, net.num_inputs) if static else (T, batch, net.num_inputs)
    x = torch.rand(*shape, generator=g, dtype=dtype) * 2
    y = torch.randint(0, net.num_outputs, (batch,), generator=g)
    net.train()
    masks = net.dropout_masks(batch, x)
    ref_net, batch_net = copy.deepcopy(net), copy.deepcopy(net)

    learner = OnlineLearner(net, SpatialBP(), LOSS, update="step")
    opt = make_opt(net.parameters())
    if masks is None:
        learner.train_batch(x, y, opt, T=T)
    else:
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        learner.accumulate(x, y, T, opt, masks=masks)
    per_step_reference(ref_net, x, y, T, LOSS, make_opt(ref_net.parameters()), masks=masks)
    ours = {k: p.detach() for k, p in net.named_parameters()}
    ref = {k: p.detach() for k, p in ref_net.named_parameters()}
    start = {k: p.detach().clone() for k, p in batch_net.named_parameters()}
    moved = 0.0
    for k, p in ref.items():
        moved = max(moved, float((p - start[k]).abs().max()))
        _close(ours[k], p, 1e-8, k)
    assert moved > 1e-2  # the weights did change over the batch

    # one update per batch gives other weights
    opt_b = make_opt(batch_net.parameters())
    batch_learner = OnlineLearner(batch_net, SpatialBP(), LOSS, update="batch")
    opt_b.zero_grad(set_to_none=False)
    for p in batch_net.parameters():
        p.grad = torch.zeros_like(p)
    batch_learner.accumulate(x, y, T, masks=masks)
    opt_b.step()
    diff = max(float((p.detach() - ref[k]).abs().max()) for k, p in batch_net.named_parameters())
    assert diff > 1e-3, diff


# ---------------------------------------------------------------------------------------
# OPZO: M with noise before the neuron


def _gaussian_pdf(c: Tensor) -> Tensor:
    return torch.exp(-0.5 * c * c) / math.sqrt(2 * math.pi)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("distribution,position", [
    ("gaussian", "before"), ("rademacher", "before"), ("gaussian", "after")])
def test_opzo_momentum_converges_to_the_expected_jacobian(dtype, distribution, position):
    """One hidden layer, T = 1: u = u0 + α z (noise before the neuron), s = H(u − V_th),
    õ = W_2 s + b_2. M (eq. 6, with the 1/α factor) tends to E[z õᵀ]/α, whose entry (i, k)
    is W_2[k, i] E[z_i H(u0_i + α z_i − V_th)]/α averaged over the batch: the Jacobian of the
    output with respect to the potential, smoothed by the noise (Stein's lemma:
    E[z f(αz)]/α = E[f'(αz)]). In closed form:

    * Gaussian z: E[z 1{z > c}] = φ(c), c = (V_th − u0)/α, so M_ik = W_2[k, i] mean_b φ(c_bi)/α;
    * Rademacher z: E[z H(u0 + α z − V_th)] = ½ (H(u0 + α − V_th) − H(u0 − α − V_th))
      = ½ 1{V_th − α < u0 ≤ V_th + α}, so M_ik = W_2[k, i] mean_b ½ 1{…}/α;
    * noise after the neuron: õ = W_2 (s + α z) + b_2, M = W_2ᵀ (the Jacobian w.r.t. the
      spikes), which the noise-before answer must differ from.
    """
    _need_native(dtype)
    torch.manual_seed(0)
    alpha, lam_m, steps, batch = 0.5, 0.99, 800, 256
    net = SpikingMLP([5, 6, 3]).to(dtype)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(batch, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():  # potentials spread over V_th ± 2α
        w1 = torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.5
        b1 = 1.0 - (x @ w1.t()).mean(0) + torch.linspace(-0.6, 0.6, 6, dtype=torch.float64)
        w2 = torch.randn(3, 6, generator=g, dtype=torch.float64) * 0.5
        net.hidden[0].weight.copy_(w1)
        net.hidden[0].bias.copy_(b1)
        net.readout.weight.copy_(w2)
        net.readout.bias.zero_()
    rule = OPZO(NoiseSampler(alpha=alpha, distribution=distribution, position=position),
                lambda_m=lam_m, alpha_factor=True)
    learner = OnlineLearner(net, rule, LOSS)
    xs = x.to(dtype)
    y = torch.zeros(batch, dtype=torch.long)
    for _ in range(steps):
        learner.accumulate(xs, y, T=1)
    M = rule.M.double() / (1 - lam_m**steps)  # (6, 3)

    u0 = x @ w1.t() + b1  # (B, 6): the potential without noise (T = 1, from rest)
    v_th = net.neuron.v_th
    if position == "after":
        expected = w2.t()
    elif distribution == "gaussian":
        expected = w2.t() * (_gaussian_pdf((v_th - u0) / alpha).mean(0) / alpha)[:, None]
    else:
        inside = ((u0 + alpha > v_th) & (u0 - alpha <= v_th)).double()
        expected = w2.t() * (0.5 * inside.mean(0) / alpha)[:, None]
    err = float((M - expected).norm() / expected.norm())
    assert err < 0.08, err
    if position == "before":  # the answer is not the Jacobian w.r.t. the spikes
        assert float((expected - w2.t()).norm() / w2.norm()) > 0.3


# ---------------------------------------------------------------------------------------
# firing rates


def _hand_net(kernels: str) -> SpikingMLP:
    """2 → 3 → 2 → 2, λ = 0.5, V_th = 1, subtractive reset, no biases, with the weights
    the hand count below assumes."""
    net = SpikingMLP([2, 3, 2, 2], kernels=kernels, dropout=0.5)  # eval: no dropout
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
        net.hidden[1].weight.copy_(torch.tensor([[0.6, 0.0, 0.0], [0.3, 0.3, 0.3]]))
        for layer in (*net.hidden, net.readout):
            layer.bias.zero_()
    return net


@pytest.mark.parametrize("kernels", ["native", "torch"])
def test_firing_rates_equal_a_hand_count(kernels):
    """Input (1.5, 0.6) for T = 4 steps, u[t] = 0.5 (u[t−1] − s[t−1]) + I, spike when u > 1.

    Layer 1, currents 1.5, 0.6, 1.05:
      n1: u = 1.5, 1.75, 1.875, 1.9375         → spikes 1 1 1 1   (4)
      n2: u = 0.6, 0.9, 1.05, 0.625            → spikes 0 0 1 0   (1)
      n3: u = 1.05, 1.075, 1.0875, 1.09375     → spikes 1 1 1 1   (4)
    Layer 2, inputs (n1, n2, n3) = (1,0,1), (1,0,1), (1,1,1), (1,0,1):
      m1: I = 0.6 always: u = 0.6, 0.9, 1.05, 0.625          → 0 0 1 0   (1)
      m2: I = 0.6, 0.6, 0.9, 0.6: u = 0.6, 0.9, 1.35, 0.775  → 0 0 1 0   (1)
    A zero input never spikes. Batch [(1.5, 0.6), 0]: 9 and 2 spikes over 2·4·3 = 24 and
    2·4·2 = 16 neuron-steps; batch [(1.5, 0.6)]: 9 and 2 over 12 and 8. The epoch's rate
    pools the counts: (9 + 9)/(24 + 12) = 0.5 and (2 + 2)/(16 + 8) = 1/6.
    """
    from opzo.progress import Accumulator

    net = _hand_net(kernels)
    net.train()  # evaluation must switch dropout off by itself
    sample = torch.tensor([[1.5, 0.6]])
    first = evaluate_batch(net, torch.cat([sample, torch.zeros(1, 2)]), torch.tensor([0, 1]),
                           LOSS, T=4)
    assert first.spike_counts == [9.0, 2.0]
    assert first.neuron_steps == [24, 16]
    second = evaluate_batch(net, sample, torch.tensor([1]), LOSS, T=4)
    assert second.spike_counts == [9.0, 2.0]
    assert second.neuron_steps == [12, 8]
    acc = Accumulator()
    acc.add(first)
    acc.add(second)
    assert acc.summary()["firing_rate"] == [0.5, round(1 / 6, 5)]
    assert net.training  # and restore the mode
