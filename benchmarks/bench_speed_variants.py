"""Three ways to speed up the OPZO training step that were measured and NOT adopted.

    python benchmarks/bench_speed_variants.py            # FC 784-800-800-10, T=6, batch 128

Same timing protocol as bench_speed.py (round-robin, medians, ratio to an inference forward
pass of the same run). The variants:

* ``time-blocked``: the whole batch's T steps processed layer by layer (legitimate with
  ``update="batch"``: the weights do not change within a batch): each layer's current is one
  GEMM over T·B rows, the LIF a scan, δ of all steps one elementwise pass, the weight gradient
  one GEMM with K = T·B (DESIGN.md section 4 suggests measuring this). Gaussian noise, dropout,
  sigmoid ψ, mixed loss and fused AdamW as in the library's OPZO.
* ``noise-prefetch``: the library's learner with the next step's Gaussian noise drawn on a
  background thread (own generator) while the current step computes.
* ``flat-python``: the same OPZO step as the library's (native kernels, Philox noise and
  masks, fused ψ, OTTT traces, mixed loss, fused AdamW) written as one function with the
  least Python possible: no rule, trace, record or context objects, no checks. It measures
  what the library's structure (interchangeable rules and traces) costs.

The first two were slower than the library's step-major loop on the 2-core machine
(RESULTS.md): the time-blocked working set (T·B x 1600 floats per tensor) leaves the cache,
and a third thread oversubscribes the two cores that the GEMMs already use. The third was no
faster than the library: the step's time is in its arithmetic and memory passes, not in its
Python.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from baselines import print_ratios, round_robin_medians  # benchmarks/ on sys.path

from opzo import OPZO, InstantLoss, NoiseSampler, OnlineLearner, SpikingMLP, native

SIZES = [784, 800, 800, 10]


class PrefetchNoise(NoiseSampler):
    """Gaussian z[t+1] drawn on a worker thread while step t computes (one generator/batch)."""

    pool = ThreadPoolExecutor(1)

    def reset(self) -> None:
        super().reset()
        self.gen = torch.Generator()
        self.gen.manual_seed(int(torch.randint(0, 2**62, ())))
        self.future = None

    def _draw(self, batch, sizes, like):
        n = sum(sizes)

        def draw():
            return like.new_empty(batch, n).normal_(generator=self.gen)

        z = draw() if self.future is None else self.future.result()
        self.future = self.pool.submit(draw)
        return z


def time_blocked_step(net: SpikingMLP, opt, M_t: torch.Tensor, x, y, T: int) -> None:
    """One OPZO training batch computed layer-major over all T steps (see module docstring)."""
    lam, vth, a, gamma, alpha, lm, keep = 0.5, 1.0, 0.25, 0.05, 0.2, 0.99999, 0.8
    B = x.shape[0]
    (W1, b1), (W2, b2) = [(lin.weight, lin.bias) for lin in net.hidden]
    W3, b3 = net.readout.weight, net.readout.bias
    n1, n2, m = W1.shape[0], W2.shape[0], W3.shape[0]
    onehot = F.one_hot(y, m).to(x.dtype)
    with torch.no_grad():
        opt.zero_grad(set_to_none=False)
        m1 = torch.empty(B, n1).uniform_().lt_(keep).mul_(1 / keep)
        m2 = torch.empty(B, n2).uniform_().lt_(keep).mul_(1 / keep)
        z = torch.empty(T, B, n1 + n2).normal_()
        current1 = F.linear(x, W1, b1)
        U1, S1 = torch.empty(T, B, n1), torch.empty(T, B, n1)
        u, s = torch.zeros(B, n1), torch.zeros(B, n1)
        for t in range(T):
            u = torch.add(current1, u, alpha=lam).sub_(s, alpha=lam * vth)
            U1[t] = u
            s = torch.gt(u, vth, out=S1[t])
        X1 = torch.add(S1, z[..., :n1], alpha=alpha).mul_(m1)
        U2 = F.linear(X1.view(T * B, n1), W2, b2).view(T, B, n2)
        S2 = torch.empty(T, B, n2)
        u, s = torch.zeros(B, n2), torch.zeros(B, n2)
        for t in range(T):
            u = U2[t].add_(u, alpha=lam).sub_(s, alpha=lam * vth)
            s = torch.gt(u, vth, out=S2[t])
        X2 = torch.add(S2, z[..., n1:], alpha=alpha).mul_(m2)
        O = F.linear(X2.view(T * B, n2), W3, b3).view(T, B, m)
        E = torch.log_softmax(O, -1).exp_().sub_(onehot).mul_(1 - gamma)
        E.add_(O - onehot, alpha=2 * gamma / m).mul_(1 / (B * T))
        G = torch.empty(T, B, n1 + n2)
        for t in range(T):  # M[t] is needed at step t: a short sequential loop of small GEMMs
            M_t.mul_(lm).addmm_(O[t].t(), z[t], alpha=(1 - lm) / B)
            torch.mm(E[t], M_t, out=G[t])
        sig = torch.cat([U1, U2], -1).mul_(1 / a).sub_(vth / a).sigmoid_()
        D = torch.ops.aten.sigmoid_backward(G.mul_(torch.cat([m1, m2], -1).mul_(1 / a)), sig)
        c = torch.tensor([(1 - lam ** (t + 1)) / (1 - lam) for t in range(T)]).view(T, 1, 1)
        D1 = (D[..., :n1] * c).sum(0)
        W1.grad.addmm_(D1.t(), x)
        b1.grad.add_(D1.sum(0))
        A1, acc = torch.empty(T, B, n1), torch.zeros(B, n1)
        for t in range(T):
            acc = torch.add(X1[t], acc, alpha=lam)
            A1[t] = acc
        W2.grad.addmm_(D[..., n1:].reshape(T * B, n2).t(), A1.view(T * B, n1))
        b2.grad.add_((D[..., n1:] * c).sum((0, 1)))
        W3.grad.addmm_(E.view(T * B, m).t(), X2.view(T * B, n2))
        b3.grad.add_(E.sum((0, 1)))
    opt.step()


def flat_step(net: SpikingMLP, opt, M_t: torch.Tensor, x, y, T: int) -> None:
    """The library's OPZO step (native kernels; see the module docstring) as one function.
    Same random draws in the same order, so the same gradients and M as the library's step
    under the same seed, to the last bit (tests/test_fused.py checks it)."""
    lam, vth, keep = net.neuron.lam, net.neuron.v_th, 1.0 - net.dropout
    gamma, alpha, lm = 0.05, 0.2, 0.99999  # the loss's mix, the noise scale, λ_M
    # the sigmoid surrogate's parameter and gain are its 1/a, as the network passes them
    params = native.LifKernelParams(lam, vth, False, native.SURROGATE_CODES["sigmoid"],
                                    1.0 / net.surrogate.a, 1.0 / net.surrogate.a)
    threads = native.default_threads()
    B = x.shape[0]
    (W1, b1), (W2, b2) = [(lin.weight, lin.bias) for lin in net.hidden]
    W3, b3 = net.readout.weight, net.readout.bias
    n1, n2, m = W1.shape[0], W2.shape[0], W3.shape[0]
    onehot = F.one_hot(y, m).to(x.dtype)
    scale = 1.0 / (B * T)
    with torch.no_grad():
        opt.zero_grad(set_to_none=False)
        m1 = native.philox_keep_mask_(torch.empty(B, n1), keep, 1 / keep)
        m2 = native.philox_keep_mask_(torch.empty(B, n2), keep, 1 / keep)
        current1 = F.linear(x, W1, b1)
        u1, s1, u2, s2 = (torch.zeros(B, n) for n in (n1, n1, n2, n2))
        a1 = None
        c, d1_sum = 0.0, torch.zeros(B, n1)
        for _ in range(T):
            z = native.philox_normal_(torch.empty(B, n1 + n2))
            u1, s1, x1, p1 = native.lif_step_unchecked(
                params, current1, u1, s1, noise=z[:, :n1], alpha=alpha, mask=m1,
                threads=threads)
            current2 = F.linear(x1, W2, b2)
            u2, s2, x2, p2 = native.lif_step_unchecked(
                params, current2, u2, s2, noise=z[:, n1:], alpha=alpha, mask=m2,
                u_out=current2, threads=threads)
            o = F.linear(x2, W3, b3)
            e = torch.log_softmax(o, 1).exp_().sub_(onehot).mul_(1 - gamma)
            e.add_(o - onehot, alpha=2 * gamma / m).mul_(scale)
            M_t.mul_(lm).addmm_(o.t(), z, alpha=(1 - lm) / B)
            g = e @ M_t
            c = lam * c + 1.0
            a1 = x1.clone() if a1 is None else a1.mul_(lam).add_(x1)  # the layer-2 trace
            d1_sum.add_(g[:, :n1] * p1, alpha=c)
            d2 = g[:, n1:] * p2
            W2.grad.addmm_(d2.t(), a1)
            b2.grad.add_(d2.sum(0), alpha=c)
            W3.grad.addmm_(e.t(), x2)  # the readout has no membrane: no trace
            b3.grad.add_(e.sum(0))
        W1.grad.addmm_(d1_sum.t(), x)
        b1.grad.add_(d1_sum.sum(0))
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--T", type=int, default=6)
    args = ap.parse_args()
    x = torch.rand(args.batch, SIZES[0])
    y = torch.randint(0, SIZES[-1], (args.batch,))

    def fresh() -> SpikingMLP:
        torch.manual_seed(0)
        net = SpikingMLP(SIZES, dropout=0.2)
        with torch.no_grad():
            net.hidden[0].weight.mul_(3.0)  # a realistic firing rate, as in bench_speed.py
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        return net

    def adamw(net):
        return torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=2e-4, fused=True)

    inf_net = fresh().eval()

    def inference() -> None:
        with torch.no_grad():
            inf_net(x, T=args.T)

    calls = {"inference": inference}
    for name, noise in (("opzo (library)", NoiseSampler(0.2)),
                        ("noise-prefetch", PrefetchNoise(0.2))):
        net = fresh()
        learner, opt = OnlineLearner(net, OPZO(noise), InstantLoss("mix", 0.05)), adamw(net)
        calls[name] = (lambda lr=learner, o=opt: lr.train_batch(x, y, o, T=args.T))
    blk = fresh()
    blk_opt, M_t = adamw(blk), torch.zeros(SIZES[-1], sum(SIZES[1:-1]))
    calls["time-blocked"] = lambda: time_blocked_step(blk, blk_opt, M_t, x, y, args.T)
    flat = fresh()
    flat_opt, flat_M = adamw(flat), torch.zeros(SIZES[-1], sum(SIZES[1:-1]))
    calls["flat-python"] = lambda: flat_step(flat, flat_opt, flat_M, x, y, args.T)
    print_ratios(round_robin_medians(calls, args.rounds), "inference",
                 f"FC {SIZES}, T={args.T}, batch {args.batch}, {args.rounds} rounds, "
                 f"{torch.get_num_threads()} threads; median step time / inference forward:")


if __name__ == "__main__":
    main()
