"""The conformance checks every registered part must pass (tests/test_conformance.py runs them
over the registries; a part registered at run time is checked by calling them).

Each check compares a part with an independent statement of what it claims:

* a neuron (:func:`check_neuron_steps`, :func:`check_neuron_learning`): its in-place step
  equals its pure step; spatial BP under every temporal trace the neuron supports equals
  autograd of the approximation the trace claims, built on the neuron's own pure step
  (OTTT / approximate OTPE: u rewritten as const + op(â) with â through the neuron's
  presynaptic filter cascade; OSTL / OTPE: the neuron's own temporal path with inputs
  detached); BPTT equals autograd of the unrolled pure step;
* a surrogate (:func:`check_surrogate`): ψ (its mean over draws for a sampled one) equals its
  documented form (``expected``), which equals the autograd derivative of its documented
  smooth function (``primitive``) where it gives one; ψ depends on u − V_th only;
  ``grad`` / ``grad_scaled`` / the autograd spike agree with ψ;
* a rule (:func:`check_rule_deltas`): at every step δ equals its closed form (a direct
  feedback rule: (F_l e) ⊙ m ⊙ ψ; ZO: (L/α) z ⊙ m ⊙ ψ) or, for spatial BP and its transport
  variants, autograd within the step with the rule's ``feedback_weight`` carrying the error
  through each layer (exact BP: the layer's own weight, i.e. plain autograd);
* a dataset (:func:`check_dataset`): ``head``, ``part``, ``labels_head``, ``batches`` and a
  one-epoch ``opzo train`` run.

Which closed form applies to a rule is read from its class (:func:`rule_closed_form`); with
the rules' declared cost profiles (how the feedback reaches a layer) it would read those.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from opzo import InstantLoss, OnlineLearner
from opzo.bptt import BPTTLearner
from opzo.layers import ConvLayer
from opzo.neurons.base import Neuron, surrogate_at
from opzo.rules import ZO, DirectFeedbackRule, SpatialBP, SpatialRule
from opzo.surrogate import FastSigmoidSurrogate, Surrogate, spike_with_surrogate
from opzo.traces import (
    TRACES,
    ApproxOTPETrace,
    OSTLTrace,
    OTPETrace,
    OTTTTrace,
    make_trace,
)

from .reference import (
    bptt_layers_autograd_grads,
    leaky_readout,
    presynaptic_autograd_grads,
    spiky_net,
)

LOSS = InstantLoss("mix", 0.3)
#: small networks: fully connected (deep), conv with pooling, residual
NETS = {"fc": ("7-6-FC", (5,)), "conv": ("3C3-AP2-4C3-FC", (1, 6, 6)),
        "res": ("6-6+-FC", (5,))}
T_STEPS = 5


def _net(kind: str, neuron: Neuron, seed: int = 0, **kw):
    spec, shape = NETS[kind]
    return spiky_net(spec, shape, 4, seed, neuron=neuron, **kw), shape


def _data(shape, static: bool, T: int = T_STEPS, batch: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    f = math.prod(shape)
    x = (torch.randn(batch, f, generator=g, dtype=torch.float64) if static
         else torch.rand(T, batch, f, generator=g, dtype=torch.float64).mul(2.0))
    return x, torch.randint(0, 4, (batch,), generator=g)


def _grads(net) -> dict[str, Tensor]:
    return {k: p.grad.clone() for k, p in net.named_parameters()}


def _close(ours: dict[str, Tensor], ref: dict[str, Tensor], what: str,
           atol: float = 1e-10) -> None:
    for k in ref:
        err = float((ours[k] - ref[k]).abs().max())
        assert torch.allclose(ours[k], ref[k], atol=atol, rtol=1e-7), f"{what}: {k} off by {err}"


# ------------------------------------------------------------------------------- neurons


def check_neuron_steps(neuron: Neuron, steps: int = 12) -> None:
    """The in-place step (scratch or not) gives the pure step's values, spikes bit for bit,
    leaves the old state as it was, and keeps every state variable; some neurons fire."""
    assert neuron.state_vars[:2] == ("u", "s"), neuron.state_vars
    sur = FastSigmoidSurrogate(5.0)
    g = torch.Generator().manual_seed(0)
    pure = neuron.initial_state(4, 7, torch.zeros(1, dtype=torch.float64))
    assert set(pure) == set(neuron.state_vars)
    fast = {k: v.clone() for k, v in pure.items()}
    fast2 = {k: v.clone() for k, v in pure.items()}
    fired = 0
    for _ in range(steps):
        current = torch.rand(4, 7, generator=g, dtype=torch.float64) * 1.5
        kept = {k: v.clone() for k, v in fast.items()}
        pure = neuron.step(pure, current, sur)
        new = neuron.step_(fast, current.clone(), scratch=True)
        for k, v in kept.items():
            assert torch.equal(fast[k], v), f"{neuron}: step_ changed the old state {k}"
        fast = new
        fast2 = neuron.step_(fast2, current, scratch=False)
        assert set(pure) == set(fast) == set(neuron.state_vars)
        for k in neuron.state_vars:
            assert torch.allclose(fast[k], pure[k], atol=1e-12), f"{neuron}: {k} in place"
            assert torch.allclose(fast2[k], pure[k], atol=1e-12), f"{neuron}: {k} no scratch"
        assert torch.equal(fast["s"], pure["s"]), f"{neuron}: spikes differ"
        fired += int(pure["s"].sum())
    assert fired > 0, f"{neuron}: no spike in {steps} steps (the check would be vacuous)"


def supported_traces(neuron: Neuron, kind: str = "fc") -> list[str]:
    """The registered traces this neuron (on a ``kind`` net) accepts: the others refuse it
    with a ValueError when made."""
    net, _ = _net(kind, neuron)
    out = []
    for name in TRACES:
        try:
            for l, layer in enumerate(net.hidden):
                make_trace(name, neuron, feeds_readout=(l == len(net.hidden) - 1),
                           layer=layer)
        except ValueError as exc:
            assert str(exc), f"{name} refused {neuron} without a message"
            continue
        out.append(name)
    return out


def _with_derivative(value: Tensor, u: Tensor, d: Tensor) -> Tensor:
    return value + d * (u - u.detach())


def eligibility_autograd_grads(net, x, y, T: int, loss: InstantLoss, kind: str,
                               leaky: bool = False) -> dict[str, Tensor]:
    """OSTL (``kind="ostl"``) or OTPE (``"otpe"``) with spatial BP by autograd, for any neuron
    that accepts them (fully connected layers): each layer's own temporal path runs through
    the neuron's pure step with its input detached; the spikes reach the next layer through
    their post-synaptic estimate P = λ P + s (OTPE) or s (OSTL), and the error crosses to the
    layer below only at the current step, with the local derivative ḡ (OTPE) or ψ."""
    for p in net.parameters():
        p.grad = None
    neuron, sur = net.neuron, net.surrogate
    lam = neuron.lam
    n = len(net.hidden)
    batch = y.shape[0]
    state = [neuron.initial_state(batch, k, x) for k in net.hidden_sizes]
    post: list[Tensor | None] = [None] * n
    psi_sum: list[Tensor | float] = [0.0] * n
    hist = None
    total = 0.0
    for t in range(T):
        inp = x if x.dim() == 2 else x[t]
        for l, lin in enumerate(net.hidden):
            theta = neuron.threshold(state[l])
            state[l] = neuron.step(state[l], F.linear(inp.detach(), lin.weight, lin.bias), sur)
            s = state[l]["s"]
            psi = surrogate_at(sur, state[l]["u"].detach(), theta)
            psi_sum[l] = lam * psi_sum[l] + psi
            if kind == "otpe" and (l < n - 1 or leaky):
                post[l] = s if post[l] is None else lam * post[l] + s
                p, d = post[l], psi_sum[l] / (t + 1)
            else:
                p, d = s, psi
            cross = F.linear(inp, lin.weight.detach())
            inp = _with_derivative(s.detach() + (p - p.detach()), cross, d)
        out, hist = leaky_readout(net, inp, hist, lam, leaky)
        total = total + loss.per_sample(out, y).mean() / T
    total.backward()
    return _grads(net)


def trace_claim(name: str) -> str | None:
    """The approximation a registered trace claims, read from its class: "ottt",
    "approx_otpe", "ostl" or "otpe" (None: none with a reference here)."""
    cls = TRACES[name].factory
    for claim, base in (("approx_otpe", ApproxOTPETrace), ("otpe", OTPETrace),
                        ("ostl", OSTLTrace), ("ottt", OTTTTrace)):
        if issubclass(cls, base):
            return claim
    return None


def check_neuron_learning(neuron: Neuron, trace: str, kind: str, static: bool = False) -> None:
    """Spatial BP with ``trace`` (and its f_ form) equals autograd of what the trace claims,
    on a ``kind`` net of this neuron, where the neuron accepts the trace there."""
    if trace not in supported_traces(neuron, kind):
        return
    for leaky in (False, True):
        net, shape = _net(kind, neuron)
        x, y = _data(shape, static)
        name = f"f_{trace}" if leaky else trace
        OnlineLearner(net, SpatialBP(), LOSS, trace=name).accumulate(x, y, T=T_STEPS)
        ours = _grads(net)
        claim = trace_claim(trace)
        if claim in ("ottt", "approx_otpe"):
            ref = presynaptic_autograd_grads(net, x, y, T_STEPS, LOSS, kind=claim, leaky=leaky)
        elif claim in ("ostl", "otpe"):
            if any(j is not None for j in net.skips):
                return  # the eligibility reference has no residual shortcuts
            ref = eligibility_autograd_grads(net, x, y, T_STEPS, LOSS, claim, leaky=leaky)
        else:  # a trace without a reference here: at least every gradient is finite
            assert all(torch.isfinite(g).all() for g in ours.values()), name
            continue
        _close(ours, ref, f"{neuron} / bp / {name} / {kind}")
        assert ref["hidden.0.weight"].abs().sum() > 0, "vacuous: no gradient reaches layer 0"


def check_neuron_bptt(neuron: Neuron, kind: str) -> None:
    """BPTT through the neuron equals autograd of the unrolled network (its pure step)."""
    net, shape = _net(kind, neuron)
    x, y = _data(shape, static=False)
    BPTTLearner(net, LOSS).accumulate(x, y, T=T_STEPS)
    ours = _grads(net)
    _close(ours, bptt_layers_autograd_grads(net, x, y, T_STEPS, LOSS), f"{neuron} / bptt")


# ---------------------------------------------------------------------------- surrogates


def _seeded(fn, seed: int = 7):
    torch.manual_seed(seed)
    return fn()


def check_surrogate(sur: Surrogate, draws: int = 3000) -> None:
    """ψ against its documented form and smooth function (see the module docstring)."""
    v = 0.5
    u = torch.linspace(-1.5, 2.5, 161, dtype=torch.float64) + 2.0 ** -12  # off the grid knots
    expected = sur.expected(u, v)
    assert expected.shape == u.shape and torch.isfinite(expected).all()
    assert (expected >= 0).all(), f"{sur}: a negative expected derivative"
    assert expected.max() > 0, f"{sur}: zero everywhere"
    # the documented form is the derivative of the documented smooth function
    prim = sur.primitive(u.clone().requires_grad_(True), v)
    if prim is not None:
        uu = u.clone().requires_grad_(True)
        (deriv,) = torch.autograd.grad(sur.primitive(uu, v).sum(), uu)
        assert torch.allclose(deriv, expected, atol=1e-9, rtol=1e-7), (
            f"{sur}: expected() is not the derivative of primitive(), off by "
            f"{float((deriv - expected).abs().max()):.3g}")
    # ψ itself: equal to the documented form, or its mean over draws for a sampled ψ
    if sur.sampled:
        samples = torch.stack([sur(u, v) for _ in range(draws)])
        mean = samples.mean(0)
        # Var ψ ≤ E[ψ²] ≤ E[ψ] · max ψ (ψ ≥ 0): six standard errors from that bound
        var = torch.maximum(samples.var(0), expected * samples.max())
        bound = 6.0 * (var / draws).sqrt() + 1e-9
        err = (mean - expected).abs()
        assert (err <= bound).all(), (
            f"{sur}: mean of ψ over {draws} draws is off its expected form by "
            f"{float((err - bound).max()):.3g} beyond 6 standard errors")
    else:
        psi = sur(u, v)
        assert torch.allclose(psi, expected, atol=1e-12, rtol=1e-9), (
            f"{sur}: ψ differs from its documented form by "
            f"{float((psi - expected).abs().max()):.3g}")
    # ψ depends on u − V_th only (the network passes a moving threshold that way)
    a = _seeded(lambda: sur(u, v))
    b = _seeded(lambda: sur(u - v, 0.0))
    assert torch.allclose(a, b, atol=1e-12), f"{sur}: ψ(u, V) != ψ(u − V, 0)"
    # grad, grad_scaled and the autograd spike give g ⊙ ψ with the same draws
    g = torch.linspace(-1.0, 1.0, u.numel(), dtype=torch.float64)
    assert torch.allclose(_seeded(lambda: sur.grad(g, u, v)), g * a, atol=1e-12), "grad"
    assert torch.allclose(_seeded(lambda: sur.grad_scaled(g * sur.gain(), u, v)), g * a,
                          atol=1e-12), f"{sur}: grad_scaled with gain {sur.gain()}"
    uu = u.clone().requires_grad_(True)
    s = spike_with_surrogate(uu, v, sur)
    assert torch.equal(s.detach(), (u > v).to(u.dtype)), "the spike is not H(u − V_th)"
    (ds,) = _seeded(lambda: torch.autograd.grad((s * g).sum(), uu))
    assert torch.allclose(ds, g * a, atol=1e-12), f"{sur}: the autograd spike's derivative"


# --------------------------------------------------------------------------------- rules


def rule_closed_form(rule: SpatialRule) -> str | None:
    """Which closed form a rule's δ has: "transport" (spatial BP and its variants), "direct"
    (a fixed or learned matrix per layer), "scalar" (ZO), or None (none known here)."""
    if isinstance(rule, SpatialBP):
        return "transport"
    if isinstance(rule, DirectFeedbackRule):
        return "direct"
    if isinstance(rule, ZO):
        return "scalar"
    return None


def _pooled(layer, x: Tensor) -> Tensor:
    if layer.pool is None:
        return x
    return F.avg_pool2d(x.reshape(x.shape[0], *layer.in_shape), layer.pool).flatten(1)


def _transport(layer, x: Tensor, weight: Tensor | None) -> Tensor:
    """op(P x) with ``weight`` in place of the layer's own (its own when None), biasless."""
    xp = _pooled(layer, x)
    if isinstance(layer, ConvLayer):
        w = layer.effective_weight() if weight is None else weight
        return F.conv2d(xp.reshape(x.shape[0], *layer.op_in_shape), w, stride=layer.stride,
                        padding=layer.padding).flatten(1)
    return F.linear(xp, layer.weight if weight is None else weight)


def _psi(rec, l: int) -> Tensor:
    return surrogate_at(rec.surrogate, rec.u[l], rec.threshold(l))


def _sws(conv) -> Tensor:
    v = conv.weight - conv.weight.mean(dim=(1, 2, 3), keepdim=True)
    return conv.gain * v / (v.square().sum(dim=(1, 2, 3), keepdim=True) + conv.eps).sqrt()


def transport_deltas(rule: SpatialBP, ctx) -> list[Tensor]:
    """δ_l[t] by autograd within the step: the potentials are leaves, each layer passes the
    error down through op(·; feedback_weight(layer)) and its spikes' derivative m ⊙ ψ. A rule
    that keeps SpatialBP's ``feedback_weight`` is exact BP: then the layer's own weight is
    used, written out here (W, or the standardized Ŵ of a conv), i.e. plain autograd."""
    net, rec = ctx.net, ctx.record
    if type(rule).feedback_weight is SpatialBP.feedback_weight:
        def feedback(layer):
            return _sws(layer) if isinstance(layer, ConvLayer) else layer.weight
    else:
        feedback = rule.feedback_weight
    n = len(net.hidden)
    with torch.enable_grad():
        u = [rec.u[l].detach().clone().requires_grad_(True) for l in range(n)]
        xs: list[Tensor] = []
        for l in range(n):
            ueff = u[l]
            if l > 0:
                w = feedback(net.hidden[l])
                cur = _transport(net.hidden[l], xs[l - 1], w)
                ueff = ueff + cur - cur.detach()
            j = net.skips[l]
            if j is not None:
                ueff = ueff + xs[j] - xs[j].detach()
            x = _psi(rec, l).detach() * (ueff - ueff.detach())
            xs.append(x if rec.masks is None else x * rec.masks[l])
        o = _transport(net.readout, xs[-1], feedback(net.readout))
        return list(torch.autograd.grad((ctx.error * o).sum(), u))


def expected_deltas(rule: SpatialRule, ctx, form: str) -> list[Tensor]:
    rec = ctx.record
    mask = (lambda l: 1.0) if rec.masks is None else (lambda l: rec.masks[l])
    if form == "transport":
        return transport_deltas(rule, ctx)  # type: ignore[arg-type]
    if form == "direct":
        blocks = rule.feedback_blocks()  # type: ignore[attr-defined]
        return [(ctx.error @ b.t()) * mask(l) * _psi(rec, l) for l, b in enumerate(blocks)]
    assert form == "scalar"
    noise = rule.noise
    coef = ctx.loss / noise.alpha if rule.alpha_factor else ctx.loss  # type: ignore[attr-defined]
    zs = noise.z.split(rule.sizes, dim=1)
    return [coef[:, None] * z * mask(l) * _psi(rec, l) for l, z in enumerate(zs)]


def check_rule_deltas(rule: SpatialRule, neuron: Neuron, kind: str) -> None:
    """At every step of a second batch (after the rule's ``optimizer_step``) the rule's δ
    has one (B, n_l) tensor per layer, equal to its closed form; the rule leaves the
    model's parameters as they were."""
    net, shape = _net(kind, neuron, dropout=0.2)
    net.train()
    x, y = _data(shape, static=False)
    masks = net.dropout_masks(x.shape[1], x)
    before = copy.deepcopy(net.state_dict())
    form = rule_closed_form(rule)
    checked = []
    learner = OnlineLearner(net, rule, LOSS, trace="ottt")
    # a first batch and the rule's own step (learned feedback starts at zero, e.g. DKP's)
    learner.accumulate(x, y, T=T_STEPS, masks=masks)
    rule.optimizer_step()
    deltas = rule.deltas

    def spy(ctx):
        out = deltas(ctx)
        assert [tuple(d.shape) for d in out] == [(ctx.output.shape[0], k)
                                                 for k in net.hidden_sizes]
        if form is not None:
            ref = expected_deltas(rule, ctx, form)
            for l, (d, r) in enumerate(zip(out, ref)):
                err = float((d - r).abs().max())
                assert torch.allclose(d, r, atol=1e-12, rtol=1e-9), (
                    f"{rule.name} on {neuron} ({kind}): δ_{l}[{ctx.t}] off its {form} closed "
                    f"form by {err:.3g}")
            checked.append(max(float(r.abs().max()) for r in ref))
        return out

    rule.deltas = spy  # type: ignore[method-assign]
    learner.accumulate(x, y, T=T_STEPS, masks=masks)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{rule.name} changed the model's {k}"
    if form is not None:
        assert len(checked) == T_STEPS and max(checked) > 0, "vacuous: every δ was zero"


# ------------------------------------------------------------------------------ datasets


def check_dataset(name: str, options: dict, run_dir: Path) -> None:
    """``head``, ``part``, ``labels_head`` and ``batches`` of both splits agree with each
    other, and one epoch of ``opzo train`` runs and writes a finite metrics row."""
    from opzo.build import make_source
    from opzo.config import TrainConfig
    from opzo.train import run_training

    base = dict(dataset=name, hidden=[8], epochs=1, batch_size=4, eval_batch_size=8,
                threads=1, limit_train=8, limit_test=4, seed=0)
    cfg = TrainConfig.from_dict({**base, **options})
    T = cfg.T
    for split in ("train", "test"):
        src = make_source(cfg, split)
        n = len(src)
        assert n > 0 and src.classes > 1, (name, split, n)
        head = src.head(min(n, 3))
        assert len(head) == min(n, 3)
        assert torch.equal(src.labels_head(min(n, 3)), head.labels_head(min(n, 3)))
        got = list(head.batches(2, T))
        xs = torch.cat([xb for xb, _ in got], dim=-2)
        ys = torch.cat([yb for _, yb in got])
        assert ys.tolist() == src.labels_head(min(n, 3)).tolist()
        assert xs.shape[-1] == math.prod(src.input_shape), (xs.shape, src.input_shape)
        assert xs.dim() in (2, 3) and torch.isfinite(xs).all()
        assert ((0 <= ys) & (ys < src.classes)).all()
        part = src.part(1, min(n, 3))
        assert torch.equal(part.labels_head(len(part)), ys[1:])
    summary = run_training(cfg, run_dir, progress=False, log=lambda *_: None)
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and math.isfinite(rows[0]["train_loss"]), rows
    assert summary["final_test_acc"] is not None
