"""Peak memory of a training step against the number of time steps T.

    python benchmarks/bench_memory.py                      # T = 6, 30, 100; all rules + BPTT
    python benchmarks/bench_memory.py --json benchmarks/logs/memory.json

Every (method, T) runs in a fresh process: build the FC 784-800-800-10 network (batch 128,
static direct-current input), run one warm-up step at T=1 (gradients and optimizer state now
exist), read the peak resident set size, run two training steps at T, and read the peak again.
The growth is the working memory of a training step beyond what the model, its gradients and
the optimizer already hold. Online rules keep O(1) state per neuron, so it must not grow with
T; autograd BPTT stores every step, so it grows linearly.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ["bp", "dfa", "dkp", "zo", "opzo", "bptt"]


def child(method: str, T: int, batch: int) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from baselines import bptt_step

    from opzo import RULES, InstantLoss, OnlineLearner, SpikingMLP
    from opzo.build import make_optimizer
    from opzo.config import TrainConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = SpikingMLP([784, 800, 800, 10], dropout=0.2)
    x = torch.rand(batch, 784)
    y = torch.randint(0, 10, (batch,))
    loss = InstantLoss()
    opt = make_optimizer(net.parameters(), TrainConfig())
    if method == "bptt":
        def step(steps: int) -> None:
            bptt_step(net, x, y, steps, loss, opt)
    else:
        learner = OnlineLearner(net, RULES.build(method), loss)

        def step(steps: int) -> None:
            learner.train_batch(x, y, opt, T=steps)
    step(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(T)
    step(T)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kib": after, "growth_kib": after - before}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[6, 30, 100])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.batch)
        return
    table: dict[str, dict[int, dict]] = {}
    for method in args.methods:
        table[method] = {}
        for T in args.T:
            out = subprocess.run([sys.executable, __file__, "--child", method, str(T),
                                  "--batch", str(args.batch)],
                                 check=True, capture_output=True, text=True).stdout
            table[method][T] = json.loads(out.strip().splitlines()[-1])
    print(f"FC 784-800-800-10, batch {args.batch}: peak RSS of the process and its growth "
          "during training steps (MiB)")
    print(f"{'method':8s} " + " ".join(f"{'T=' + str(T):>18s}" for T in args.T)
          + "   peak(max T)/peak(min T)")
    for method, row in table.items():
        cells = " ".join(f"{r['peak_kib'] / 1024:8.1f} (+{r['growth_kib'] / 1024:6.1f})"
                         for r in row.values())
        peaks = [r["peak_kib"] for r in row.values()]
        print(f"{method:8s} {cells}   {peaks[-1] / peaks[0]:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
            "batch": args.batch, "results": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
