"""LocalZO paper, Tables 3 and 4: the speedup of the sparse backward over the dense surrogate.

    python benchmarks/bench_sparse.py                 # the three rows and the m sweep (~10 min)
    python benchmarks/bench_sparse.py --quick         # a 1-minute version
    python benchmarks/bench_sparse.py --rows fashion --updates 20

For each dataset row, three copies of one network train side by side on the same batches by
BPTT (opzo's ``BPTTLearner``): the dense surrogate (LocalZO's expected surrogate, eq. 9, not
cut, with autograd's backward (:class:`DenseExpected`): the paper's "full surrogate without
truncation, that uses standard back-propagation"), SparseGrad (that surrogate cut at
B̃_th = 0.798 δ) and LocalZO (z ~ N(0, 1), δ = 0.05, m = 1), both through
:mod:`opzo.sparse`'s backward over the active neurons. Each round does one update of each,
in a rotated order (``baselines.round_robin_medians``' scheme), and records per update the
forward and backward seconds (``BPTTLearner.timings``: "backward" is the backward pass from
the loss; "overall" is forward + backward, the paper's "Over.") and the fraction of neurons
with ψ ≠ 0. Speedups are the dense time over the method's time of the same round, averaged
over the updates (the paper: "averaged over all the gradient updates"); the first update is
a warm-up and left out. The Table 4 sweep trains LocalZO with m samples against the same
dense surrogate on the Fashion-MNIST row. The rows also time ``dense-plain``, the same dense
surrogate computed plainly (opzo's SparseGrad with an infinite cut): its exp of the far
neurons' hugely negative exponents takes torch's slow CPU path and returns denormals, which
slow autograd's backward; speedups against it are printed in the last column, not as ours.

Rows (LocalZO paper, appendix B, Table 8; the columns of SHD and N-MNIST are swapped in the
printed table: 1156 = 34·34 inputs, 10 classes, T = 300 steps of 1 ms is N-MNIST in the
SparseGrad framework, 700 inputs, 20 classes, T = 500 steps of 2 ms is SHD):

* ``fashion``: Fashion-MNIST from ``--data-root`` (opzo's reader), latency code (τ_eff 20,
  θ 0.2), T = 100, FC 784-200-200-10, λ = 0.905, readout max over time (λ_o 0.905), reset
  detached, hidden weights 16x torch's initialisation: ``run_localzo_fashion.py``'s setting;
* ``nmnist``: synthetic events on 34·34 = 1156 inputs (both polarities merged, as SparseGrad's
  N-MNIST), 4325 events per sample (the real recording in ``shared/data/nmnist-sample``) at
  uniform pixels and times over T = 300 steps, FC 1156-200-200-10;
* ``shd``: synthetic events on 700 channels, 8000 events per sample over T = 500 steps of
  2 ms (an assumed SHD-like rate: SHD is not on this machine), FC 700-200-200-20.

The synthetic rows have the sizes and event rates of the real data but not their structure;
their active fractions are those of these inputs. Adam (lr 2e-4, 1e-3 for N-MNIST), batch
256. Results: ``benchmarks/results/sparse_backward.csv`` (one line per update and method),
``sparse_backward.json`` (the summary), and the table printed with the paper's numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from opzo import InstantLoss, SpikingNet  # noqa: E402
from opzo.bptt import BPTTLearner  # noqa: E402
from opzo.losses import MaxOverTime  # noqa: E402
from opzo.neurons import LIF  # noqa: E402
from opzo.surrogate import Surrogate  # noqa: E402
from opzo.surrogate.localzo import LocalZOSurrogate, SparseGradSurrogate  # noqa: E402

#: LocalZO paper, Table 3 (z ~ Normal(0, 1), δ = 0.05, m = 1): (Back., Over.)
PAPER_T3 = {"nmnist": {"sparsegrad": (99.57, 3.38), "localzo": (92.27, 3.34)},
            "shd": {"sparsegrad": (143.7, 4.83), "localzo": (142.8, 4.75)},
            "fashion": {"sparsegrad": (15.74, 1.97), "localzo": (15.49, 1.88)}}
#: Table 4: LocalZO's overall speedup against m
PAPER_T4 = {"nmnist": {1: 3.33, 3: 3.28, 5: 3.22, 7: 3.16, 10: 3.06, 20: 2.82, 100: 1.59},
            "shd": {1: 4.75, 3: 4.62, 5: 4.47, 7: 4.39, 10: 4.25, 20: 3.89, 100: 2.24},
            "fashion": {1: 1.89, 3: 1.85, 5: 1.78, 7: 1.75, 10: 1.70, 20: 1.56, 100: 0.88}}
ROWS = {  # inputs, classes, T, lr, events per sample (None: Fashion-MNIST's latency code)
    "fashion": (784, 10, 100, 2e-4, None),
    "nmnist": (1156, 10, 300, 1e-3, 4325),
    "shd": (700, 20, 500, 2e-4, 8000),
}
DELTA, LEAK, INIT_SCALE = 0.05, 0.905, 16.0


def fashion_batches(data_root: str, batch: int, T: int, count: int):
    """``count`` latency-coded Fashion-MNIST training batches through opzo's reader."""
    from opzo.build import make_source
    from opzo.config import TrainConfig

    cfg = TrainConfig.from_dict({"dataset": "fashion-mnist", "data_root": data_root,
                                 "encoding": "latency", "latency_tau": 20.0,
                                 "latency_theta": 0.2, "T": T,
                                 "limit_train": batch * count})
    out = []
    for x, y in make_source(cfg, "train").batches(batch, T):
        out.append((x.float(), y))
        if len(out) == count:
            break
    return out


def event_batches(inputs: int, classes: int, T: int, events: int, batch: int, count: int,
                  seed: int):
    """Synthetic event frames (T, B, inputs): ``events`` events per sample at uniform
    (channel, step), binary per bin; random labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = torch.zeros(T * batch * inputs)
        sample = torch.arange(batch).repeat_interleave(events)
        t = torch.randint(0, T, (batch * events,), generator=g)
        c = torch.randint(0, inputs, (batch * events,), generator=g)
        x[(t * batch + sample) * inputs + c] = 1.0
        out.append((x.reshape(T, batch, inputs), torch.randint(0, classes, (batch,),
                                                                generator=g)))
    return out


class DenseExpected(Surrogate):
    """The dense baseline: LocalZO's expected surrogate for z ~ N(0, 1) (eq. 9),
    exp(−x²/2δ²)/(δ√(2π)), not cut, computed without float32's underflow band: exponents
    below −87 give 0 (float32's exp is a denormal or 0 there). Computed plainly, torch's CPU
    exp takes a ~30x slower path below about −88, and the denormals it returns slow every
    product of autograd's backward (whose thread does not flush them): a quirk that would
    slow the baseline and inflate every speedup."""

    name = "dense-expected"

    def __init__(self, delta: float) -> None:
        self.delta = float(delta)

    def __call__(self, u, v_th):
        d = self.delta
        arg = (u.detach() - v_th).square_().mul_(-0.5 / (d * d))
        psi = arg.clamp(min=-87.0).exp_().mul_(1.0 / (d * math.sqrt(2 * math.pi)))
        return psi.masked_fill_(arg < -87.0, 0.0)


def make_learner(surrogate, inputs: int, classes: int, lr: float):
    torch.manual_seed(0)
    net = SpikingNet("200-200-FC", inputs, classes, neuron=LIF(lam=LEAK), surrogate=surrogate)
    with torch.no_grad():
        for layer in net.hidden:
            layer.weight.mul_(INIT_SCALE)
            layer.bias.mul_(INIT_SCALE)
    learner = BPTTLearner(net, InstantLoss("ce"), readout=MaxOverTime(LEAK), detach_reset=True)
    learner.timings = {}
    return learner, torch.optim.Adam(net.parameters(), lr=lr)


def methods(m_values: list[int], plain: bool = False) -> dict:
    """The surrogates of a row: the dense baseline, SparseGrad, LocalZO (m = 1 and each of
    ``m_values``); with ``plain`` also the dense surrogate as opzo's SparseGrad with an
    infinite cut computes it (exp everywhere, torch's slow path for the far neurons)."""
    out = {"dense": lambda: DenseExpected(DELTA),
           **({"dense-plain": lambda: SparseGradSurrogate(delta=DELTA, threshold=1e9,
                                                          sparse_backward="off")}
              if plain else {}),
           "sparsegrad": lambda: SparseGradSurrogate(delta=DELTA),
           "localzo": lambda: LocalZOSurrogate(delta=DELTA, m=1)}
    for m in m_values:
        if m != 1:
            out[f"localzo-m{m}"] = lambda m=m: LocalZOSurrogate(delta=DELTA, m=m)
    return out


def run_row(name: str, batches, inputs: int, classes: int, T: int, lr: float,
            m_values: list[int], writer, plain: bool = False) -> dict:
    learners = {k: make_learner(f(), inputs, classes, lr)
                for k, f in methods(m_values, plain).items()}
    names = list(learners)
    per: dict[str, list[dict]] = {k: [] for k in names}
    for r, (x, y) in enumerate(batches):
        for k in names[r % len(names):] + names[:r % len(names)]:
            learner, opt = learners[k]
            sur = learner.net.surrogate
            sur.reset_stats()
            learner.train_batch(x, y, opt, T=T)
            fraction = getattr(sur, "nonzero_fraction", 1.0)
            row = {"row": name, "update": r, "method": k,
                   "forward_s": learner.timings["forward"],
                   "backward_s": learner.timings["backward"],
                   "active_fraction": fraction,
                   "sparse": learner.uses_sparse_backward()}
            per[k].append(row)
            writer.writerow(row)
    summary = {}
    dense = per["dense"][1:]
    for k in names:
        rows = per[k][1:]  # the first update warms up
        back = [d["backward_s"] / m["backward_s"] for d, m in zip(dense, rows)]
        over = [(d["forward_s"] + d["backward_s"]) / (m["forward_s"] + m["backward_s"])
                for d, m in zip(dense, rows)]
        summary[k] = {
            "updates": len(rows),
            "backward_speedup_mean": statistics.fmean(back),
            "overall_speedup_mean": statistics.fmean(over),
            "backward_speedup_of_medians": statistics.median(d["backward_s"] for d in dense)
            / statistics.median(m["backward_s"] for m in rows),
            "overall_speedup_of_medians": statistics.median(
                d["forward_s"] + d["backward_s"] for d in dense)
            / statistics.median(m["forward_s"] + m["backward_s"] for m in rows),
            "backward_share_of_dense_update": statistics.fmean(
                d["backward_s"] / (d["forward_s"] + d["backward_s"]) for d in dense),
            "forward_ratio_method_over_dense": statistics.fmean(
                m["forward_s"] / d["forward_s"] for d, m in zip(dense, rows)),
            "active_fraction_mean": statistics.fmean(m["active_fraction"] for m in rows),
            "active_fraction_first_last": [rows[0]["active_fraction"],
                                           rows[-1]["active_fraction"]],
        }
        if "dense-plain" in per:  # against the plainly computed dense surrogate
            base = per["dense-plain"][1:]
            summary[k]["backward_speedup_vs_plain_mean"] = statistics.fmean(
                d["backward_s"] / m["backward_s"] for d, m in zip(base, rows))
            summary[k]["overall_speedup_vs_plain_mean"] = statistics.fmean(
                (d["forward_s"] + d["backward_s"]) / (m["forward_s"] + m["backward_s"])
                for d, m in zip(base, rows))
    return summary


def online_products(rounds: int = 41) -> None:
    """The online OTTT trace's product ∇W += δᵀ â for one step: dense addmm against
    :func:`opzo.sparse.accumulate_sparse`, round-robin medians, at a few sizes and densities
    of δ (why ``sparse_backward=auto`` leaves the online rules dense)."""
    from baselines import round_robin_medians

    from opzo.layers import DenseLayer
    from opzo.sparse import accumulate_sparse

    print("| B | inputs | n | δ non-zeros | dense / sparse time |")
    print("|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for batch, inputs, n in [(256, 784, 200), (256, 200, 200), (64, 128, 128)]:
        for density in (0.005, 0.01, 0.02):
            layer = DenseLayer(inputs, n)
            delta = torch.randn(batch, n, generator=g) * (
                torch.rand(batch, n, generator=g) < density)
            trace = torch.rand(batch, inputs, generator=g)
            layer.weight.grad = torch.zeros_like(layer.weight)
            layer.bias.grad = torch.zeros_like(layer.bias)
            args = (layer, delta, trace)
            if not accumulate_sparse(*args, 1.0):
                print(f"| {batch} | {inputs} | {n} | {density:.1%} | declined: dense |")
                continue
            med = round_robin_medians(
                {"dense": lambda a=args: a[0].accumulate_grad(a[1], a[2], 1.0),
                 "sparse": lambda a=args: accumulate_sparse(*a, 1.0)}, rounds)
            print(f"| {batch} | {inputs} | {n} | {float(delta.ne(0).float().mean()):.2%} | "
                  f"{med['dense'] / med['sparse']:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--updates", type=int, nargs=3, default=[12, 6, 5], metavar=("F", "N", "S"),
                    help="updates per row (fashion, nmnist, shd), the first a warm-up")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--sweep", type=int, nargs="*", default=[1, 3, 5, 7, 10, 20, 100],
                    help="Table 4: LocalZO's m values, on the fashion row")
    ap.add_argument("--sweep-updates", type=int, default=4)
    ap.add_argument("--t-scale", type=float, default=1.0, help="T times this (quick runs)")
    ap.add_argument("--quick", action="store_true",
                    help="batch 64, T/4, 3 updates per row, m in {1, 5}: about a minute")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "fashion-mnist"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sparse_backward"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--online", action="store_true",
                    help="only time the online trace's product, dense against sparse")
    args = ap.parse_args()
    if args.online:
        torch.set_num_threads(args.threads)
        online_products()
        return
    if args.quick:
        args.batch, args.t_scale, args.updates = 64, 0.25, [3, 3, 3]
        args.sweep, args.sweep_updates = [1, 5], 3
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # exp(−x²/2δ²) underflows: denormals would slow ψ alike
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    summary: dict = {"load_average_start": load, "batch": args.batch, "threads": args.threads,
                     "t_scale": args.t_scale, "rows": {}, "sweep": {}}
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, ["row", "update", "method", "forward_s", "backward_s",
                                    "active_fraction", "sparse"])
        writer.writeheader()
        for name in args.rows:
            inputs, classes, T, lr, events = ROWS[name]
            T = max(2, round(T * args.t_scale))
            count = args.updates[list(ROWS).index(name)]
            batches = (fashion_batches(args.data_root, args.batch, T, count) if events is None
                       else event_batches(inputs, classes, T, round(events * args.t_scale),
                                          args.batch, count, seed=1))
            density = statistics.fmean(float(x.mean()) for x, _ in batches)
            res = run_row(name, batches, inputs, classes, T, lr, [], writer, plain=True)
            summary["rows"][name] = {"T": T, "inputs": inputs, "input_density": density,
                                     **res}
            if name == "fashion" and args.sweep:
                sweep_batches = batches[:args.sweep_updates]
                res = run_row("fashion-sweep", sweep_batches, inputs, classes, T, lr,
                              args.sweep, writer)
                summary["sweep"] = {k: v for k, v in res.items() if k != "sparsegrad"}
    summary["load_average_end"] = os.getloadavg()
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(f"load average {load[0]:.2f} -> {summary['load_average_end'][0]:.2f}, "
          f"batch {args.batch}, {args.threads} thread(s)")
    print("| row | method | Back. (ours) | Back. (paper) | Over. (ours) | Over. (paper) "
          "| active ψ≠0 | dense backward share | Back. / Over. vs plain dense |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, res in summary["rows"].items():
        for k in ("sparsegrad", "localzo"):
            s, (pb, po) = res[k], PAPER_T3[name][k]
            print(f"| {name} (T={res['T']}) | {k} | {s['backward_speedup_mean']:.2f}x | {pb}x "
                  f"| {s['overall_speedup_mean']:.2f}x | {po}x | "
                  f"{100 * s['active_fraction_mean']:.2f}% | "
                  f"{100 * s['backward_share_of_dense_update']:.0f}% | "
                  f"{s['backward_speedup_vs_plain_mean']:.2f}x / "
                  f"{s['overall_speedup_vs_plain_mean']:.2f}x |")
    if summary["sweep"]:
        print("\nTable 4 (fashion): LocalZO's overall speedup against m")
        print("| m | Over. (ours) | Over. (paper) | Back. (ours) | active ψ≠0 |")
        print("|---|---|---|---|---|")
        for k, s in summary["sweep"].items():
            if k.startswith("dense"):
                continue
            m = 1 if k == "localzo" else int(k.split("-m")[1])
            print(f"| {m} | {s['overall_speedup_mean']:.2f}x | {PAPER_T4['fashion'].get(m, '-')}x "
                  f"| {s['backward_speedup_mean']:.2f}x "
                  f"| {100 * s['active_fraction_mean']:.2f}% |")


if __name__ == "__main__":
    main()
