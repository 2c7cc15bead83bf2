"""Where a training step's time goes: cProfile of opzo's online step for one rule.

    python benchmarks/profile_step.py opzo          # FC 784-800-800-10, T 6, batch 128, 1 thread
    python benchmarks/profile_step.py bp --threads 2 --batches 40

The network, input and optimizer are those of ``bench_speed.py`` (the first layer's weights
times 3, dropout 0.2, fused AdamW); three untimed batches, then ``--batches`` profiled ones.
Prints the functions with the largest own time (the native kernels appear as their Python
wrappers, torch's ops as built-in methods). For fractions of one step, not absolute times.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import torch

from opzo import OPZO, RULES, OnlineLearner, SpikingMLP


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rule", choices=sorted(RULES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--top", type=int, default=18)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = SpikingMLP([784, 800, 800, 10], dropout=0.2)
    with torch.no_grad():
        net.hidden[0].weight.mul_(3.0)
    rule = OPZO() if a.rule == "opzo" else RULES[a.rule].factory()
    learner = OnlineLearner(net, rule)
    opt = torch.optim.AdamW([*net.parameters(), *rule.parameters()], lr=2e-4, fused=True)
    x = torch.rand(128, 784, device="cpu")
    y = torch.randint(0, 10, (128,), device="cpu")
    for _ in range(3):
        learner.train_batch(x, y, opt, T=6)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(a.batches):
        learner.train_batch(x, y, opt, T=6)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(a.top)


if __name__ == "__main__":
    main()
