"""Cost of the temporal traces (OTPE paper Table 1): step time relative to OTTT, and state memory.

    python benchmarks/bench_traces.py                       # FC 50-n-n-10, n in 64 128 256
    python benchmarks/bench_traces.py --widths 128 512 --rounds 15 \
        --json benchmarks/logs/traces.json

For each hidden width n the network is 50-n-n-10 (Randman-sized input) with a spike input
that changes every step (the case Table 1 describes; a static input keeps every trace O(n)).
Every trace trains with the same spatial rule (``--rule``, spatial BP by default), and BPTT is
timed alongside as the exact reference. Calls are timed round-robin (one call of each per
round, order rotated) and the median per method is divided by OTTT's median of the same run
and width: ratios, never lone absolute times.

Memory is the state each trace keeps between steps, per sample, summed over the hidden
layers (``Trace.state_nbytes``, measured on traces fed a real forward step): OTTT and
approximate OTPE grow as O(n), OSTL and OTPE as O(n²) (the slope column is the fitted
exponent over the widths). The trace of the last hidden layer follows the learner (OTPE and
approximate OTPE reduce to OSTL and OTTT there unless the output is a leaky sum, ``f_``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from baselines import round_robin_medians  # benchmarks/ is on sys.path when run as a script

from opzo import RULES, InstantLoss, OnlineLearner, SpikingMLP
from opzo.bptt import BPTTLearner
from opzo.traces import make_trace

TRACE_NAMES = ("ottt", "ostl", "otpe", "approx_otpe", "f_otpe", "f_approx_otpe")


def trace_state_per_sample(net: SpikingMLP, name: str, x: torch.Tensor) -> float:
    """Bytes per sample of the traces ``name`` of every hidden layer after the first steps."""
    n = len(net.hidden)
    traces = [make_trace(name, net.neuron, feeds_readout=(l == n - 1)) for l in range(n)]
    state = net.initial_state(x.shape[1], x)
    with torch.no_grad():
        for t in range(min(2, x.shape[0])):
            _, rec = net.step(state, x[t])
            for l, tr in enumerate(traces):
                tr.push(x[t] if l == 0 else rec.out[l - 1], rec, l)
    return sum(tr.state_nbytes() for tr in traces) / x.shape[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=50)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--outputs", type=int, default=10)
    ap.add_argument("--T", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rule", default="bp", choices=sorted(RULES))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loss = InstantLoss("ce")
    result: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''} "
                   f"{torch.get_num_threads()} torch threads".strip(),
        "torch": torch.__version__,
        "setting": {"inputs": args.inputs, "widths": args.widths, "T": args.T,
                    "batch": args.batch, "rounds": args.rounds, "rule": args.rule},
        "step_time_ratio_to_ottt": {},
        "state_bytes_per_sample": {},
    }
    print(f"FC {args.inputs}-n-n-{args.outputs}, T={args.T}, batch {args.batch}, rule "
          f"{args.rule}, {args.rounds} rounds, {torch.get_num_threads()} threads")
    for n in args.widths:
        sizes = [args.inputs, n, n, args.outputs]
        torch.manual_seed(0)
        x = (torch.rand(args.T, args.batch, args.inputs) < 0.2).float()  # spike input
        y = torch.randint(0, args.outputs, (args.batch,))

        def fresh_net(sizes=sizes) -> SpikingMLP:
            torch.manual_seed(0)
            net = SpikingMLP(sizes)
            with torch.no_grad():
                for lin in net.hidden:
                    lin.weight.mul_(3.0)  # neurons that fire
            return net

        calls = {}
        for name in TRACE_NAMES:
            net = fresh_net()
            learner = OnlineLearner(net, RULES.build(args.rule), loss, trace=name)
            opt = torch.optim.SGD(net.parameters(), lr=1e-3)
            calls[name] = (lambda lr=learner, o=opt, x=x, y=y: lr.train_batch(x, y, o))
        bptt_net = fresh_net()
        bptt = BPTTLearner(bptt_net, loss)
        bptt_opt = torch.optim.SGD(bptt_net.parameters(), lr=1e-3)
        calls["bptt"] = (lambda lr=bptt, o=bptt_opt, x=x, y=y: lr.train_batch(x, y, o))
        med = round_robin_medians(calls, args.rounds, warmup=1)
        ratios = {k: round(v / med["ottt"], 3) for k, v in med.items()}
        memory = {name: trace_state_per_sample(fresh_net(), name, x) for name in TRACE_NAMES}
        result["step_time_ratio_to_ottt"][n] = ratios
        result["state_bytes_per_sample"][n] = memory
        print(f"\nwidth n = {n}: step time / OTTT's, trace state per sample")
        for name in calls:
            mem = f"{memory[name] / 1024:10.1f} KiB" if name in memory else "    (∝ T)"
            print(f"  {name:14s} {ratios[name]:6.2f}x  {mem}")
    if len(args.widths) > 1:
        lo, hi = min(args.widths), max(args.widths)
        slopes = {}
        print(f"\nmemory growth exponent from n={lo} to n={hi} (1: O(n), 2: O(n²))")
        for name in TRACE_NAMES:
            a = result["state_bytes_per_sample"][lo][name]
            b = result["state_bytes_per_sample"][hi][name]
            slopes[name] = round(math.log(b / a) / math.log(hi / lo), 2)
            print(f"  {name:14s} {slopes[name]:5.2f}")
        result["memory_exponent"] = slopes
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
