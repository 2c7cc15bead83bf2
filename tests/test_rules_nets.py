"""Every online rule on the large networks of issue 26, against its closed form (piece 3).

On tiny widths of ``nfresnet34`` (composite layers reading earlier currents), ``resnet19``
(identity and projection shortcuts; also with per-step batch norm), ``vggsnn`` (a string
net with pooling) and ``sew-resnet34`` (spike-element-wise ADD blocks), with dropout:

* the output error e[t] = ∂L[t]/∂õ[t] / (B·T) and, for ZO, the per-sample loss, from their
  formulas applied to the recorded output õ[t];
* δ_l[t] = g_l[t] ⊙ m_l ⊙ ψ(u_l[t]) at every layer and step (OPZO paper eq. 7), ψ from its
  formula at the recorded potential, with g_l = F_l e (DFA: the fixed F; DKP: its learned F;
  OPZO: M after the step's update M ← λ M + (1 − λ)/B Σ_b z_b õ_bᵀ, eq. 6, checked too) or
  g_l = (L_b/α) z_l (ZO, eq. 3);
* DKP's feedback gradient Σ_t e[t]ᵀ â[t], â[t] = λ â[t−1] + x[t] over every layer's output;
* at T = 1 the weight gradient of every parameter (convs, standardization gains, biases,
  NF-ResNet's skip-init gains, BN's γ and β) = autograd of Σ_l ⟨δ_l, I_l⟩ + ⟨e, o⟩ with the
  rule's δ held fixed (the layers' differentiable forward; their explicit transposes and
  weight gradients are what the rules use).

The forward passes of these nets are checked against plain-torch references of their papers'
descriptions in ``tests/test_nets.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from opzo import DFA, DKP, OPZO, ZO, InstantLoss, NoiseSampler, OnlineLearner, SpikingNet
from opzo.nets import NFResNet, ResNet19, build_named
from opzo.surrogate import FastSigmoidSurrogate

LOSS = InstantLoss("mix", 0.3)
ALPHA, LAMBDA_M = 0.3, 0.9


def _net(which: str):
    torch.manual_seed(0)
    sg = FastSigmoidSurrogate(5.0)
    if which == "nf":
        net = NFResNet((2, 16, 16), 4, width=1 / 16, blocks=(1, 2, 1, 1), surrogate=sg,
                       dropout=0.25)
    elif which in ("r19", "r19-bn"):
        net = ResNet19((2, 8, 8), 4, width=1 / 32, surrogate=sg, dropout=0.25,
                       norm="bn" if which == "r19-bn" else "none")
    elif which == "sew":
        net = build_named("sew-resnet34", (2, 16, 16), 4, width=1 / 32, surrogate=sg,
                          dropout=0.25)
    else:
        net = SpikingNet("vggsnn", (2, 48, 48), 4, width=1 / 32, surrogate=sg, dropout=0.25)
    net = net.double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("skipinit_gain"):
                p.fill_(1.0 + float(torch.rand((), generator=g)))
            elif name.endswith(".gain"):
                p.mul_(3.0)
            elif name.endswith("bn_bias"):
                p.uniform_(0.3, 0.9, generator=g)
            elif name.endswith("bias") and "readout" not in name:
                p.uniform_(0.2, 0.8, generator=g)
    return net


def _psi(net, u):
    """The fast sigmoid's derivative 1 / (k |u − V_th| + 1)² (opzo.surrogate.sigmoid)."""
    return 1.0 / (net.surrogate.k * (u - net.neuron.v_th).abs() + 1.0) ** 2


def _error_and_loss(o, y, T):
    """e = ((1−γ)(softmax(o) − y) + (2γ/m)(o − y)) / (B·T), L_b = ((1−γ) CE_b + γ/m ‖o_b −
    y_b‖²) / (B·T) (OPZO paper section 4.1)."""
    m, B, gam = o.shape[1], o.shape[0], LOSS.gamma
    target = F.one_hot(y, m).to(o.dtype)
    p = torch.softmax(o, 1)
    e = ((1 - gam) * (p - target) + (2 * gam / m) * (o - target)) / (B * T)
    ce = -torch.log_softmax(o, 1).gather(1, y[:, None])[:, 0]
    loss = ((1 - gam) * ce + gam / m * (o - target).square().sum(1)) / (B * T)
    return e, loss


def _rule(name, net):
    if name == "dfa":
        return DFA()
    if name == "dkp":
        rule = DKP(lr=1e-3)
        rule.bind(net)
        with torch.no_grad():  # a learned feedback, not the zeros it starts from
            rule.feedback_t.normal_(0.0, 0.5)
        return rule
    if name == "zo":
        return ZO(NoiseSampler(alpha=ALPHA))
    return OPZO(NoiseSampler(alpha=ALPHA), lambda_m=LAMBDA_M)


def _spy(rule, log):
    deltas = rule.deltas

    def spy(ctx):
        before = None
        if hasattr(rule, "feedback_t"):
            before = rule.feedback_t.clone()
        out = deltas(ctx)
        rec = ctx.record
        log.append(dict(
            o=ctx.output.clone(), error=ctx.error.clone(), loss=ctx.loss.clone(),
            u=[u.clone() for u in rec.u], out=[x.clone() for x in rec.out],
            inputs=[i.clone() for i in rec.inputs], r_in=rec.readout_in.clone(),
            masks=rec.masks, deltas=[d.clone() for d in out], before=before,
            feedback=None if before is None else rule.feedback_t.clone(),
            z=None if rule.noise is None else rule.noise.z.clone()))
        return out

    rule.deltas = spy


def _close(a, b, what, rtol=1e-9):
    scale = float(b.abs().max())
    assert scale > 0, f"{what}: the expected value is all zeros"
    err = float((a - b).abs().max())
    assert err <= rtol * scale, f"{what}: error {err:.3g} vs scale {scale:.3g}"


def _run(net, rule, T, seed=2):
    B = 3
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.rand(T, B, net.num_inputs, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    net.train()
    torch.manual_seed(seed)
    masks = net.dropout_masks(B, x[0])
    log: list[dict] = []
    _spy(rule, log)
    for p in net.parameters():
        p.grad = None
    OnlineLearner(net, rule, LOSS).accumulate(x, y, T=T, masks=masks)
    return x, y, masks, log


NETS = ["nf", "r19", "r19-bn", "vgg", "sew"]


@pytest.mark.parametrize("rule_name", ["dfa", "dkp", "zo", "opzo"])
@pytest.mark.parametrize("which", NETS)
def test_each_online_rule_on_each_new_net_equals_its_closed_form(rule_name, which):
    net = _net(which)
    rule = _rule(rule_name, net)
    T = 3
    x, y, masks, log = _run(net, rule, T)
    assert len(log) == T
    sizes = net.hidden_sizes
    fired = 0.0
    dkp_grad = torch.zeros(net.num_outputs, sum(sizes), dtype=torch.float64)
    trace = None
    for t, st in enumerate(log):
        e, loss = _error_and_loss(st["o"], y, T)
        _close(st["error"], e, f"e[{t}]")
        if rule_name == "zo":
            _close(st["loss"], loss, f"L[{t}]")
            g = (st["z"] * (loss / ALPHA)[:, None]).split(sizes, dim=1)
        else:
            ft = st["feedback"]
            if rule_name == "opzo":  # eq. 6, then the updated M is used
                expected = LAMBDA_M * st["before"] + (1 - LAMBDA_M) / 3 * (st["o"].t() @ st["z"])
                _close(ft, expected, f"M[{t}]")
            else:
                _close(ft, st["before"], f"F[{t}] (fixed within the batch)")
            g = (e @ ft).split(sizes, dim=1)
        for l, (gl, m, u) in enumerate(zip(g, masks, st["u"])):
            _close(st["deltas"][l], gl * m * _psi(net, u), f"delta_{l}[{t}]")
        fired += sum(float(s.sum()) for s in st["out"])
        if rule_name == "dkp":
            act = torch.cat(st["out"], 1)
            trace = act if trace is None else net.neuron.lam * trace + act
            dkp_grad += e.t() @ trace
    assert fired > 0, "no spikes: the check would be vacuous"
    if rule_name == "dkp":
        _close(rule.feedback_t.grad, dkp_grad, "DKP's feedback gradient")


def _instantaneous_reference(net, x, log):
    """Σ_l ⟨δ_l, I_l(x_{l−1})⟩ + ⟨e, o(x_{N−1})⟩ at one step by autograd (δ, e held fixed;
    each layer's current from its differentiable op on the recorded inputs)."""
    st = log[0]
    for p in net.parameters():
        p.grad = None
    total = 0.0
    for l, layer in enumerate(net.hidden):
        total = total + (st["deltas"][l] * layer.op(st["inputs"][l])).sum()
    total = total + (st["error"] * net.readout.op(st["r_in"])).sum()
    total.backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("rule_name", ["dfa", "opzo"])
@pytest.mark.parametrize("which", NETS)
def test_weight_gradients_of_the_rules_delta_equal_autograd(rule_name, which):
    net = _net(which)
    rule = _rule(rule_name, net)
    x, y, masks, log = _run(net, rule, 1)
    ours = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    ref = _instantaneous_reference(net, x, log)
    for k, v in ref.items():
        if float(v.abs().max()) == 0.0 and k not in ours:
            continue
        assert torch.allclose(ours[k], v, atol=1e-10, rtol=1e-8), (
            k, float((ours[k] - v).abs().max()))
    moving = sum(float(v.abs().max()) > 1e-8 for v in ref.values())
    assert moving > 0.6 * len(ref), f"only {moving} of {len(ref)} parameters get a gradient"
    assert math.isfinite(sum(float(v.sum()) for v in ours.values()))
