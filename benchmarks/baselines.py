"""Autograd baselines for the benchmarks: OTTT through autograd, and BPTT.

These are what one writes without opzo's explicit rules: the same network and loss, gradients
by ``loss.backward()``. They train the same :class:`opzo.SpikingNet` parameters (FC or conv:
the layers' own differentiable ``forward`` is used).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from opzo import InstantLoss, SpikingNet
from opzo.bptt import BPTTLearner
from opzo.surrogate import spike_with_surrogate


def _bias_per_neuron(layer) -> torch.Tensor:
    """The layer's bias as one value per output neuron (a conv bias repeated over H·W)."""
    per_map = layer.out_features // layer.bias.numel()
    return layer.bias if per_map == 1 else layer.bias.repeat_interleave(per_map)


def autograd_ottt_step(net: SpikingNet, x, y, T: int, loss: InstantLoss, opt) -> None:
    """OTTT with autograd: one backward per time step through the layers (traces detached)."""
    opt.zero_grad(set_to_none=False)
    p, lam = net.neuron, net.neuron.lam
    batch = y.shape[0]
    u = [x.new_zeros(batch, n) for n in net.hidden_sizes]
    s = [x.new_zeros(batch, n) for n in net.hidden_sizes]
    a = [None for _ in net.hidden_sizes]
    b_hat = 0.0
    masks = net.dropout_masks(batch, x)
    for t in range(T):
        b_hat = lam * b_hat + 1.0
        inp = x if x.dim() == 2 else x[t]
        for l, layer in enumerate(net.hidden):
            a[l] = inp if a[l] is None else lam * a[l] + inp
            with torch.no_grad():
                u_val = lam * (u[l] - p.v_th * s[l]) + layer(inp)
            # op(â; W) + b̂ b = layer(â) + (b̂ − 1) b
            attached = layer(a[l]) + _bias_per_neuron(layer) * (b_hat - 1.0)
            ul = (u_val - attached).detach() + attached
            sl = spike_with_surrogate(ul, p.v_th, net.surrogate)
            u[l], s[l] = u_val, sl.detach()
            a[l] = a[l].detach()
            inp = sl if masks is None else sl * masks[l]
        (loss.per_sample(net.readout(inp), y).mean() / T).backward()
        a = [ai.detach() if ai is not None else None for ai in a]
    opt.step()


def bptt_step(net: SpikingNet, x, y, T: int, loss: InstantLoss, opt) -> None:
    """Exact surrogate-gradient BPTT (opzo's BPTTLearner): the unrolled graph is kept."""
    BPTTLearner(net, loss).train_batch(x, y, opt, T=T)


def round_robin_medians(calls: dict[str, Callable[[], object]], rounds: int,
                        warmup: int = 2, sync: Callable[[], object] | None = None
                        ) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin in one run.

    Every round calls each function once, the order rotated by one each round, so machine noise
    hits all of them alike; ``warmup`` untimed calls of each come first. Ratios of these medians
    are what the benchmarks report (never lone absolute times). ``sync`` waits for queued
    device work (``torch.cuda.synchronize`` on a GPU) before each clock reading.
    """
    wait = sync if sync is not None else (lambda: None)
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    names = list(calls)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            wait()
            t0 = time.perf_counter()
            calls[name]()
            wait()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def print_ratios(medians: dict[str, float], base: str, header: str, width: int = 16) -> None:
    """Print ``header`` and each median as a ratio to the median of ``base``."""
    print(header)
    for name, t in medians.items():
        print(f"  {name:{width}s} {t / medians[base]:6.2f}x")
