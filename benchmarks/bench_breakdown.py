"""Where an OPZO training step's time goes: the step with one part taken away at a time.

    python benchmarks/bench_breakdown.py --rounds 30 --threads 2

FC 784-800-800-10, T=6, batch 128, the settings of bench_speed.py. Every variant is the
library's OPZO step (native kernels, Gaussian noise, dropout 0.2, sigmoid ψ, mixed loss, fused
AdamW) except for one thing; its saving against ``opzo`` is what that thing costs, in
inference passes (all ratios to an inference forward pass of the same run, round-robin,
medians):

* ``no-noise-draw``: the same z every step (drawn once): the cost of drawing the noise;
* ``no-dropout``: dropout 0: the masks and their multiplications;
* ``torch-psi``: the fused step does not compute m ⊙ ψ(u); the rules take it from torch's
  ops (sigmoid, sigmoid_backward) as before the fused kernel;
* ``tiny-net``: the same loop on a 8-8-8-10 net with batch 2, whose arithmetic is negligible:
  the Python and dispatch overhead of the training loop, against ``tiny-inference``, the
  overhead of an inference pass (both still as ratios to the full-size inference).
"""

from __future__ import annotations

import argparse

import torch
from baselines import print_ratios, round_robin_medians  # benchmarks/ on sys.path

from opzo import OPZO, InstantLoss, NoiseSampler, OnlineLearner, SpikingMLP
from opzo.build import make_optimizer
from opzo.config import TrainConfig


class FixedNoise(NoiseSampler):
    """Draws z once and then hands out the same tensor (no random numbers per step)."""

    def _draw(self, batch: int, sizes: list[int], like: torch.Tensor) -> torch.Tensor:
        if getattr(self, "_fixed", None) is None:
            self._fixed = super()._draw(batch, sizes, like)
        return self._fixed


class TorchPsi(SpikingMLP):
    """A network whose fused step leaves ψ to torch's ops."""

    def _native_surrogate(self):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes, batch, T = [784, 800, 800, 10], 128, 6
    tiny_sizes, tiny_batch = [8, 8, 8, 10], 2
    cfg = TrainConfig()

    def net(cls=SpikingMLP, dropout=0.2, layer_sizes=sizes):
        torch.manual_seed(0)
        n = cls(layer_sizes, dropout=dropout)
        with torch.no_grad():
            n.hidden[0].weight.mul_(3.0)
        return n

    def data(layer_sizes, b):
        torch.manual_seed(1)
        return torch.rand(b, layer_sizes[0]), torch.randint(0, layer_sizes[-1], (b,))

    def step(n, rule, x, y):
        learner = OnlineLearner(n, rule, InstantLoss("mix", 0.05))
        opt = make_optimizer(n.parameters(), cfg)
        return lambda: learner.train_batch(x, y, opt, T=T)

    def infer(n, x):
        n.eval()

        def run():
            with torch.no_grad():
                n(x, T=T)
        return run

    x, y = data(sizes, batch)
    tx, ty = data(tiny_sizes, tiny_batch)
    calls = {
        "inference": infer(net(), x),
        "opzo": step(net(), OPZO(), x, y),
        "no-noise-draw": step(net(), OPZO(FixedNoise()), x, y),
        "no-dropout": step(net(dropout=0.0), OPZO(), x, y),
        "torch-psi": step(net(TorchPsi), OPZO(), x, y),
        "tiny-net": step(net(layer_sizes=tiny_sizes), OPZO(), tx, ty),
        "tiny-inference": infer(net(layer_sizes=tiny_sizes), tx),
    }
    print_ratios(round_robin_medians(calls, args.rounds), "inference",
                 f"OPZO step on {'-'.join(map(str, sizes))}, T={T}, batch {batch}, "
                 f"{torch.get_num_threads()} threads, {args.rounds} rounds; "
                 "median time / inference forward:", width=16)


if __name__ == "__main__":
    main()
