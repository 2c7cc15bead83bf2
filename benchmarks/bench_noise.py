"""Ways to draw OPZO's Gaussian noise on the CPU, timed against torch's ``normal_``.

    python benchmarks/bench_noise.py               # add --compile to time a torch.compile'd randn

One step's noise of the Table 1 network: 128 x 1600 float32 numbers. Every candidate is timed
round-robin with the others (``baselines.round_robin_medians``) and reported as a ratio to
``normal_`` in the same run: numpy's generators, torch's MKL-backed ``bernoulli_`` and
``exponential_`` (Box-Muller from exponentials), and ``normal_`` split over two threads with
two generators; and opzo's native Philox kernels (``opzo.native``), which the noise sampler
and the dropout masks use by default (benchmarks/RESULTS.md, section 2): Gaussians (on
torch's threads, and on one), dropout masks (against the network's torch path) and
Rademacher signs.
"""

from __future__ import annotations

import argparse
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from baselines import print_ratios, round_robin_medians  # benchmarks/ on sys.path

from opzo import native

SHAPE = (128, 1600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--compile", action="store_true", help="also time a torch.compile'd randn")
    args = ap.parse_args()
    n = SHAPE[0] * SHAPE[1]
    buf = torch.empty(SHAPE)
    out32 = np.empty(n, np.float32)
    pcg, sfc = np.random.Generator(np.random.PCG64(0)), np.random.Generator(np.random.SFC64(0))
    exps = torch.empty(2, n // 2)
    pool, gens = ThreadPoolExecutor(1), [torch.Generator(), torch.Generator()]

    def box_muller_from_exponentials() -> None:
        exps.exponential_()  # −2 ln U = 2E and e^{−E} ~ U(0, 1)
        r = exps[0].mul(2.0).sqrt_()
        theta = exps[1].neg().exp_().mul_(2 * math.pi)
        flat = buf.view(-1)
        torch.mul(r, theta.cos(), out=flat[: n // 2])
        torch.mul(r, theta.sin_(), out=flat[n // 2:])

    def two_generators() -> None:
        for g, seed in zip(gens, torch.randint(0, 2**62, (2,)).tolist()):
            g.manual_seed(seed)
        top, bottom = buf.chunk(2, 0)
        job = pool.submit(bottom.normal_, generator=gens[1])
        top.normal_(generator=gens[0])
        job.result()

    calls = {
        "torch normal_": lambda: buf.normal_(),
        "opzo native Philox": lambda: native.philox_normal_(buf),
        "opzo native Philox, 1 thread": lambda: native.philox_normal_(buf, threads=1),
        "opzo Philox dropout mask": lambda: native.philox_keep_mask_(buf, 0.8, 1.25),
        "torch dropout mask": lambda: torch.lt(buf.uniform_(), 0.8, out=buf).mul_(1.25),
        "opzo Philox signs": lambda: native.philox_signs_(buf),
        "torch uniform_": lambda: buf.uniform_(),
        "numpy PCG64 normal": lambda: pcg.standard_normal(dtype=np.float32, out=out32),
        "numpy SFC64 normal": lambda: sfc.standard_normal(dtype=np.float32, out=out32),
        "torch bernoulli_": lambda: buf.bernoulli_(0.8),
        "Box-Muller from exponential_": box_muller_from_exponentials,
        "normal_ on two threads": two_generators,
    }
    if args.compile:
        compiled = torch.compile(lambda like: torch.randn(like.shape), dynamic=False)
        calls["torch.compile randn"] = lambda: compiled(buf)
    print_ratios(round_robin_medians(calls, args.rounds), "torch normal_",
                 f"{SHAPE[0]} x {SHAPE[1]} float32 numbers, {torch.get_num_threads()} torch "
                 f"threads, {args.rounds} rounds; median time / torch normal_:", width=30)


if __name__ == "__main__":
    main()
