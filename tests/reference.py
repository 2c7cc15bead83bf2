"""Independent autograd references for the explicit learning rules (tests only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from opzo.layers import ConvLayer
from opzo.losses import InstantLoss
from opzo.network import SpikingMLP, SpikingNet
from opzo.neurons.base import PureOps, surrogate_at
from opzo.surrogate import FastSigmoidSurrogate, spike_with_surrogate


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
    lam, v_th = net.neuron.lam, net.neuron.v_th
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
                if net.neuron.reset == "subtract":
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
    """Exact surrogate-gradient BPTT of the same loss (through time and layers): the unroll of
    :func:`bptt_layers_autograd_grads`, which covers fully connected layers too."""
    return bptt_layers_autograd_grads(net, x, y, T, loss)


# ---------------------------------------------------------------------------------------
# networks with conv layers and pooling: the ops written out again, independently of the
# layers' explicit maps (op_input, input_grad, accumulate_grad) and of their forward


def sws_weight(conv):
    """Ŵ = γ (W − mean W) / √(Σ (W − mean W)² + ε) per output channel, by autograd."""
    w = conv.weight
    v = w - w.mean(dim=(1, 2, 3), keepdim=True)
    return conv.gain * v / (v.square().sum(dim=(1, 2, 3), keepdim=True) + conv.eps).sqrt()


def layer_op(layer, x, bias_factor=1.0):
    """The synaptic current of a DenseLayer / ConvLayer for a flat input x (pooling included),
    with the bias multiplied by ``bias_factor`` (b̂ for the detached-trace rewriting)."""
    b = x.shape[0]
    pool = layer.pool
    if pool is not None and hasattr(pool, "kind"):  # a strided / max / adaptive pooling
        x4 = x.reshape(b, *layer.in_shape)
        if pool.kind == "avg":
            x = F.avg_pool2d(x4, pool.kernel, pool.stride, pool.padding)
        elif pool.kind == "max":
            x = F.max_pool2d(x4, pool.kernel, pool.stride, pool.padding)
        else:
            x = F.adaptive_avg_pool2d(x4, pool.kernel)
        x = x.flatten(1)
    elif pool is not None:
        x = F.avg_pool2d(x.reshape(b, *layer.in_shape), layer.pool).flatten(1)
    if hasattr(layer, "gain"):
        out = F.conv2d(x.reshape(b, *layer.op_in_shape), sws_weight(layer),
                       stride=layer.stride, padding=layer.padding)
        out = out + (layer.bias * bias_factor)[None, :, None, None]
        return out.flatten(1)
    return F.linear(x, layer.weight) + layer.bias * bias_factor


def _lif_value(lif, u_prev, s_prev, current):
    if lif.reset == "subtract":
        return lif.lam * (u_prev - lif.v_th * s_prev) + current
    return lif.lam * u_prev * (1.0 - s_prev) + current


def leaky_readout(net, inp, hist, lam: float, leaky: bool):
    """What the loss is on: o[t] (plain), or with ``leaky`` O[t] = λ O[t−1] + o[t] whose past
    reaches the readout's W_N, b_N only (the F-variants, OTPE paper section 3.2). Returns it
    and the history to pass on."""
    o = layer_op(net.readout, inp)
    if not leaky:
        return o, None
    past = layer_op(net.readout, inp.detach())
    return (o if hist is None else lam * hist + o), (past if hist is None else lam * hist + past)


class _NoDerivative(FastSigmoidSurrogate):
    """ψ = 0: spikes through it are constants for autograd (OTTT holds them constant)."""

    def __call__(self, u, v_th):
        return torch.zeros_like(u)


class _OTTTOps(PureOps):
    """The pure step's primitives with OTTT's approximation: spikes and the reset term are
    constants (the membrane's derivative is that of λ u + input only)."""

    def __init__(self) -> None:
        super().__init__(_NoDerivative())

    def membrane(self, u, s, inp, lam, v_th, reset):
        full = super().membrane(u, s, inp, lam, v_th, reset)
        kept = lam * u + inp
        return full.detach() + (kept - kept.detach())


def _ottt_step(neuron, state, current):
    """One step of ``neuron`` whose derivatives are OTTT's (see :class:`_OTTTOps`)."""
    return neuron.dynamics(state, current, _OTTTOps())


def presynaptic_autograd_grads(net, x, y, T: int, loss: InstantLoss, kind="ottt", masks=None,
                               local=None, leaky=False):
    """OTTT (``kind="ottt"``) or approximate OTPE (``"approx_otpe"``) with spatial BP, by
    autograd, for any network of DenseLayer / ConvLayer layers (flat inputs) and any neuron.

    OTTT's claim: the weight gradient is Σ_t δ_l[t] ∂u_l[t]/∂W_l with the spikes (and so the
    reset) held constant and the inputs of past steps constants. Here ∂u_l[t]/∂W_l comes from
    autograd of a shadow of each layer: the neuron's own dynamics (``Neuron.dynamics``) fed
    op_l(x_{l−1}[t]; W_l) with the input detached, spikes and reset term without derivative
    (the shadow's values equal the network's; only its derivative in W_l is used). It is
    independent of the neuron's declared presynaptic filter (``presynaptic_leaks``), which
    the learner's trace uses.
    Approximate OTPE replaces ∂u/∂W by its leaky sum ẑ = λ ẑ + ∂u/∂W (λ the membrane leak)
    and ψ by ḡ (except at the layer feeding a memoryless readout, where it is OTTT's).
    The error reaches layer l − 1 at the current step only, through op_l and m ⊙ D.

    ``local``: {layer l: (readout, weight, reaches_below)} adds weight · L(readout(x_l[t]), y)
    per step (local learning, OPZO paper appendix C.1). With ``reaches_below`` False its
    gradient reaches only layer l's own synapses, with True it flows down through the layers
    below too (IGL under spatial BP). The readouts' gradients are returned as
    ``local.<l>.weight`` / ``local.<l>.bias``. ``leaky``: the loss is on the leaky sum of the
    outputs (F-variants; then the last hidden layer gets the estimate too).
    """
    local = local or {}
    for p in [*net.parameters(), *(q for r, _, _ in local.values() for q in r.parameters())]:
        p.grad = None
    neuron, sur = net.neuron, net.surrogate
    lam = neuron.lam
    n = len(net.hidden)
    static = x.dim() == 2
    batch = y.shape[0]
    shadow = [neuron.initial_state(batch, k, x) for k in net.hidden_sizes]
    z_prev = [0.0] * n
    psi_sum = [0.0] * n
    hist = None
    total = 0.0
    skips = net.skips
    for t in range(T):
        inp = x if static else x[t]
        outs = []  # what each layer delivered at this step (residual shortcuts read them)
        for l, layer in enumerate(net.hidden):
            short = 0.0 if skips[l] is None else outs[skips[l]]
            theta = neuron.threshold({k: v.detach() for k, v in shadow[l].items()})
            short_c = short.detach() if isinstance(short, torch.Tensor) else short
            shadow[l] = _ottt_step(neuron, shadow[l], layer_op(layer, inp.detach()) + short_c)
            u_val = shadow[l]["u"].detach()
            s_val = shadow[l]["s"].detach()
            psi = surrogate_at(sur, u_val, theta.detach() if isinstance(theta, torch.Tensor)
                               else theta)
            du = shadow[l]["u"] - u_val  # value 0, derivative ∂u[t]/∂W_l (spikes constant)
            z = lam * z_prev[l] + du
            z_prev[l] = z
            psi_sum[l] = lam * psi_sum[l] + psi
            estimate = kind == "approx_otpe" and (l < n - 1 or leaky)
            own, d = (z, psi_sum[l] / (t + 1)) if estimate else (du, psi)
            # the spatial path at this step: value 0, derivative op_l in the input only (the
            # two terms' derivatives in W_l and b_l cancel; op_l is taken at the actual input,
            # so a max pooling routes to the inputs that won, not to those of a zero input)
            cross = layer_op(layer, inp) - layer_op(layer, inp.detach())
            if isinstance(short, torch.Tensor):
                cross = cross + (short - short.detach())
            u = u_val + own + cross
            s = s_val + d * (u - u.detach())
            if l in local:
                readout, weight, reaches_below = local[l]
                s_loc = s
                if not reaches_below:  # the same spikes, differentiable in layer l's W only
                    u_loc = u_val + own
                    s_loc = s_val + d * (u_loc - u_loc.detach())
                x_loc = s_loc if masks is None else s_loc * masks[l]
                total = total + weight * loss.per_sample(readout.op(x_loc), y).mean() / T
            inp = s if masks is None else s * masks[l]
            outs.append(inp)
        out, hist = leaky_readout(net, inp, hist, lam, leaky)
        total = total + loss.per_sample(out, y).mean() / T
    total.backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    for l, (readout, _, _) in local.items():
        grads.update({f"local.{l}.{k}": p.grad.clone() for k, p in readout.named_parameters()})
    return grads


def bptt_layers_autograd_grads(net, x, y, T: int, loss: InstantLoss, masks=None,
                               output_leak: float = 0.0, max_leak: float | None = None,
                               detach_reset: bool = False):
    """Exact surrogate-gradient BPTT with the ops of :func:`layer_op` (any layer types) of
    (1/T) Σ_t mean_b L(O[t]), O[t] = output_leak · O[t−1] + o[t]; with ``max_leak`` λ_o
    instead of mean_b L(max_t Y[t]), Y[t] = λ_o Y[t−1] + o[t] (the maximum taken
    over the stacked Y). ``detach_reset``: the spikes in the reset term are constants.
    The neuron runs its pure step (:meth:`opzo.neurons.Neuron.step`; tests/test_neurons.py
    checks it against each built-in model's equations written out)."""
    for p in net.parameters():
        p.grad = None
    static = x.dim() == 2
    batch = y.shape[0]
    neuron = net.neuron
    state = [neuron.initial_state(batch, n, x) for n in net.hidden_sizes]
    out = None
    total = 0.0
    trajectory = []  # Y[t] of a max-over-time readout
    for t in range(T):
        inp = x if static else x[t]
        outs = []
        for l, layer in enumerate(net.hidden):
            short = 0.0 if net.skips[l] is None else outs[net.skips[l]]
            state[l] = neuron.step(state[l], layer_op(layer, inp) + short, net.surrogate,
                                   detach_reset=detach_reset)
            s = state[l]["s"]
            inp = s if masks is None else s * masks[l]
            outs.append(inp)
        o = layer_op(net.readout, inp)
        if max_leak is not None:
            out = o if out is None else max_leak * out + o
            trajectory.append(out)
            continue
        out = o if out is None else output_leak * out + o
        total = total + loss.per_sample(out, y).mean() / T
    if max_leak is not None:
        total = loss.per_sample(torch.stack(trajectory).max(0).values, y).mean()
    total.backward()
    return {name: q.grad.clone() for name, q in net.named_parameters()}


def brute_op_fanout(layer) -> torch.Tensor:
    """Synapses reached by each element of what ``layer`` receives, by enumerating them:
    every (pooled input, op output) connection, credited to every input pixel of the pooled
    input's window (1 per pixel). Shares nothing with the library's transposed-convolution
    count (:func:`opzo.energy.op_fanout`)."""
    import itertools

    from opzo.layers import ConvLayer

    in_shape = tuple(layer.in_shape)
    count = torch.zeros(in_shape, dtype=torch.float64)
    op_in = tuple(layer.op_in_shape)
    # which input elements make each op-input element (the pooling windows)
    if layer.pool is None:
        def sources(idx):
            return [idx]
    else:
        kh, kw = layer.pool

        def sources(idx):
            c, y, x = idx
            return [(c, y * kh + i, x * kw + j) for i in range(kh) for j in range(kw)]
    # synapses of each op-input element
    per_op_input = torch.zeros(op_in, dtype=torch.float64)
    if isinstance(layer, ConvLayer):
        c_out, ho, wo = layer.out_shape
        k, p, st = layer.kernel_size, layer.padding, layer.stride
        c_in, h, w = op_in
        for _co, yo, xo, ci, dy, dx in itertools.product(range(c_out), range(ho), range(wo),
                                                         range(c_in), range(k), range(k)):
            y, x = yo * st + dy - p, xo * st + dx - p
            if 0 <= y < h and 0 <= x < w:
                per_op_input[ci, y, x] += 1
    else:
        per_op_input += layer.out_features
    for idx in itertools.product(*(range(d) for d in op_in)):
        for src in sources(idx):
            count[src] += per_op_input[idx]
    return count.reshape(-1)


def spiky_net(spec, shape, outputs: int = 4, seed: int = 0, **kw) -> SpikingNet:
    """A float64 :class:`SpikingNet` whose neurons spike often (larger weights, conv gains and
    biases; fast-sigmoid surrogate of slope 5 unless ``surrogate`` is given): a test network
    on which every rule and trace has something to compare."""
    torch.manual_seed(seed)
    kw.setdefault("surrogate", FastSigmoidSurrogate(5.0))
    net = SpikingNet(spec, shape, outputs, **kw).double()
    with torch.no_grad():
        for layer in net.hidden:
            if isinstance(layer, ConvLayer):
                layer.gain.mul_(3.0)
                layer.bias.uniform_(0.0, 0.8)
            else:
                layer.weight.mul_(4.0)
    return net
