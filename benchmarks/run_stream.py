"""Truly online learning on a stream, with a change of task half-way (issue 15, part 4).

    python benchmarks/run_stream.py                     # OPZO, BP (= OTTT), DFA; JSON + PNG
    python benchmarks/run_stream.py --samples 400 --update-every 5

Stream: Randman (time code, the OTPE preset of ``run_pzo.py``: 10 classes, 50 units, 50
steps per sample), B = 16 parallel streams; each stream presents ``--samples`` samples drawn
at random from the 8000 training samples back to back, with no reset of the network, traces
or feedback between samples, and the label of the sample on show as the target at each of its
steps. Half-way through, the task changes: every label y is replaced by perm(y), a fixed
random permutation without fixed points. The learner is :class:`opzo.stream.StreamLearner`
(OTTT trace, weights updated every ``--update-every`` steps, Adamax lr 3e-3, per-step CE),
fed in chunks of 500 steps. Network: FC 50-128-128-10 as ``run_pzo.py`` (λ = 0.5,
fast-sigmoid ψ, hidden weights at 8x torch's init).

Accuracy is prequential: each sample is classified by argmax_c Σ_t o_c[t] over its 50 steps
while the learner trains on it (OPZO's outputs carry its noise), averaged over the streams in
blocks of ``--block`` samples. Writes ``benchmarks/results/stream.json`` and, with matplotlib,
``benchmarks/results/stream.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_pzo import load_randman, make_net  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "stream.json"
PNG = ROOT / "benchmarks" / "results" / "stream.png"
METHODS = ["opzo", "bp", "dfa"]
STEPS = 50  # time steps per sample
STREAMS = 16


def make_rule(method: str, lambda_m: float):
    from opzo import DFA, OPZO, NoiseSampler, SpatialBP

    if method == "opzo":
        return OPZO(NoiseSampler(alpha=0.2), lambda_m=lambda_m)
    return {"bp": SpatialBP, "dfa": DFA}[method]()


def build_stream(samples: int, seed: int):
    """Inputs (samples·50, 16, 50), targets (samples·50, 16) and per-sample labels
    (samples, 16) after the switch, the permutation."""
    import torch

    spikes, labels = load_randman()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 8000, (samples, STREAMS), generator=gen)
    while True:  # a permutation without fixed points: every class changes
        perm = torch.randperm(10, generator=gen)
        if bool((perm != torch.arange(10)).all()):
            break
    y = labels[idx]  # (samples, B)
    half = samples // 2
    y[half:] = perm[y[half:]]
    # (50, samples, B, 50) -> (samples·50, B, 50): sample after sample, per stream
    x = spikes[:, idx].permute(1, 0, 2, 3).reshape(samples * STEPS, STREAMS, -1)
    targets = y.repeat_interleave(STEPS, dim=0)
    return x, targets, y, perm


def run(method: str, args: argparse.Namespace) -> dict:
    import torch

    from opzo import InstantLoss
    from opzo.stream import StreamLearner

    torch.set_num_threads(1)
    x, targets, y, perm = build_stream(args.samples, args.seed)
    torch.manual_seed(args.seed)
    net = make_net()
    opt = torch.optim.Adamax(net.parameters(), lr=args.lr)
    learner = StreamLearner(net, make_rule(method, args.lambda_m), opt, InstantLoss("ce"),
                            update_every=args.update_every)
    chunk = 500
    scores = []
    start = time.time()
    for i in range(0, x.shape[0], chunk):
        stats = learner.feed(x[i:i + chunk], targets[i:i + chunk])
        scores.append(stats.outputs)
    wall = time.time() - start
    out = torch.cat(scores).view(args.samples, STEPS, STREAMS, -1).sum(1)  # (S, B, m)
    correct = (out.argmax(-1) == y).float()  # (S, B)
    blocks = correct.view(-1, args.block, STREAMS).mean(dim=(1, 2)) * 100
    half = args.samples // 2
    return {"method": method, "block_acc": [round(float(a), 2) for a in blocks],
            "before_switch_last_block": round(float(blocks[half // args.block - 1]), 2),
            "after_switch_first_block": round(float(blocks[half // args.block]), 2),
            "final_block": round(float(blocks[-1]), 2),
            "first_half_mean": round(float(correct[:half].mean()) * 100, 2),
            "second_half_mean": round(float(correct[half:].mean()) * 100, 2),
            "wall_s": round(wall, 1), "steps": int(x.shape[0]), "perm": perm.tolist()}


def plot(result: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not available: no plot")
        return
    s = result["setting"]
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=90)
    for method, r in result["runs"].items():
        xs = [(i + 1) * s["block"] for i in range(len(r["block_acc"]))]
        ax.plot(xs, r["block_acc"], label={"opzo": "OPZO", "bp": "BP (OTTT)",
                                           "dfa": "DFA"}.get(method, method))
    ax.axvline(s["samples"] // 2, color="gray", ls="--", lw=1)
    ax.text(s["samples"] // 2, 5, " labels permuted", color="gray", fontsize=8)
    ax.set_xlabel("samples seen per stream")
    ax.set_ylabel(f"prequential accuracy (%), blocks of {s['block']}")
    ax.set_ylim(0, 100)
    ax.set_title("Randman stream, no resets, update every "
                 f"{s['update_every']} steps", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(PNG)
    print("wrote", PNG)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--samples", type=int, default=600, help="samples per stream")
    ap.add_argument("--block", type=int, default=20)
    ap.add_argument("--update-every", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lambda-m", type=float, default=0.9999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    if args.samples % (2 * args.block):
        ap.error("--samples must be a multiple of 2 x --block")
    load_randman()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {m: pool.submit(run, m, args) for m in args.methods}
        runs = {m: f.result() for m, f in futures.items()}
    for m, r in runs.items():
        print(m, {k: v for k, v in r.items() if k != "block_acc"})
    result = {"setting": {"samples": args.samples, "block": args.block, "streams": STREAMS,
                          "update_every": args.update_every, "lr": args.lr,
                          "lambda_m": args.lambda_m, "seed": args.seed,
                          "optimizer": "Adamax", "trace": "ottt", "chunk_steps": 500,
                          "task": "randman-time OTPE preset, labels permuted half-way"},
              "runs": runs,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", OUT)
    plot(result)


if __name__ == "__main__":
    main()
