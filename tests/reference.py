"""Independent autograd references for the explicit learning rules (tests only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from opzo.losses import InstantLoss
from opzo.network import SpikingMLP
from opzo.surrogate import spike_with_surrogate


def ottt_autograd_grads(net: SpikingMLP, x, y, T: int, loss: InstantLoss, masks=None):
    """Gradients of (1/T) Σ_t mean_b L_b[t] by autograd under OTTT's approximation.

    At every step the membrane potential is rewritten as
        u_l[t] = const + W_l â_l[t] + b_l b̂[t]
    with â_l[t] = λ â_l[t−1].detach() + x_{l−1}[t] (the current input attached) and the
    constant the detached remainder. Its value is exactly the LIF potential of eq. 1, while
    autograd sees ∂u/∂W = â, ∂u/∂b = b̂ and ∂u/∂x_{l−1}[t] = W: gradients flow through the
    layers at the same step only, which is OTTT's instantaneous gradient.
    """
    for p in net.parameters():
        p.grad = None
    lam, v_th = net.lif.lam, net.lif.v_th
    static = x.dim() == 2
    batch = y.shape[0]
    u_prev = [x.new_zeros(batch, n) for n in net.hidden_sizes]
    s_prev = [x.new_zeros(batch, n) for n in net.hidden_sizes]
    a_prev = [None for _ in net.hidden_sizes]
    b_hat = 0.0
    total = 0.0
    for t in range(T):
        b_hat = lam * b_hat + 1.0
        inp = x if static else x[t]
        for l, lin in enumerate(net.hidden):
            a = inp if a_prev[l] is None else lam * a_prev[l].detach() + inp
            with torch.no_grad():
                current = F.linear(inp, lin.weight, lin.bias)
                if net.lif.reset == "subtract":
                    u_val = lam * (u_prev[l] - v_th * s_prev[l]) + current
                else:
                    u_val = lam * u_prev[l] * (1 - s_prev[l]) + current
            attached = F.linear(a, lin.weight) + lin.bias * b_hat
            u = (u_val - attached).detach() + attached
            s = spike_with_surrogate(u, v_th, net.surrogate)
            u_prev[l], s_prev[l], a_prev[l] = u_val, s.detach(), a.detach()
            inp = s if masks is None else s * masks[l]
        o = net.readout(inp)
        total = total + loss.per_sample(o, y).mean() / T
    total.backward()
    return {name: p.grad.clone() for name, p in net.named_parameters()}


def bptt_autograd_grads(net: SpikingMLP, x, y, T: int, loss: InstantLoss):
    """Exact surrogate-gradient BPTT of the same loss (through time and layers)."""
    for p in net.parameters():
        p.grad = None
    static = x.dim() == 2
    batch = y.shape[0]
    u = [x.new_zeros(batch, n) for n in net.hidden_sizes]
    s = [x.new_zeros(batch, n) for n in net.hidden_sizes]
    total = 0.0
    p = net.lif
    for t in range(T):
        inp = x if static else x[t]
        for l, lin in enumerate(net.hidden):
            u[l] = p.lam * (u[l] - p.v_th * s[l]) + lin(inp)
            s[l] = spike_with_surrogate(u[l], p.v_th, net.surrogate)
            inp = s[l]
        total = total + loss.per_sample(net.readout(inp), y).mean() / T
    total.backward()
    return {name: q.grad.clone() for name, q in net.named_parameters()}
