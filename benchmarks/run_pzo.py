"""PZO without temporal truncation against DFA through time and BPTT (OPZO paper Table 13).

    python benchmarks/run_pzo.py                        # train all methods, then memory vs T
    python benchmarks/run_pzo.py --methods pzo bptt --epochs 5
    python benchmarks/run_pzo.py --memory-only

Task: the OTPE paper's Randman (time code; 10 classes, 50 units, T = 50, one draw of 10 000
samples split 8000 / 2000, as ``configs/otpe-randman.toml``), FC 50-128-128-10, LIF λ = 0.5,
fast-sigmoid ψ (k = 25), hidden weights at 8x torch's init, per-step CE, Adamax lr 3e-3,
batch 128, seed 0, one torch thread per method, two methods at a time. Methods:

* ``bptt``: exact BPTT (STBP), :class:`opzo.bptt.BPTTLearner`;
* ``pzo``: PZO without truncation, T lagged momentum matrices M_k (α = 0.2, λ_M = 0.99999,
  no 1/α), :class:`opzo.pzo.UntruncatedLearner`;
* ``pzo-lag0``: the same with M_0 only (same-step feedback, exact temporal credit inside
  each layer);
* ``dfa-time``: DFA through time, fixed random B_k per lag; ``dfa-lag0``: B_0 only;
* ``opzo``: online OPZO (OTTT trace, same noise and λ_M), :class:`opzo.OnlineLearner`.

After every epoch: test accuracy, and the cosine of the method's gradient with BPTT's on a
fixed training batch with the same weights (measured on a copy: the run is not changed).
Memory: the growth of the peak resident set size over two training steps at T (batch 128,
random spikes), each (method, T) in a fresh process, as ``bench_memory.py`` does.
Writes ``benchmarks/results/pzo.json``. The Randman draw is cached under
``$OPZO_CACHE_DIR`` (default ``~/.cache/opzo``): generating it takes about two minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "pzo.json"
METHODS = ["bptt", "pzo", "pzo-lag0", "dfa-time", "dfa-lag0", "opzo"]
MEMORY_METHODS = ["bptt", "pzo", "dfa-time", "opzo"]
MEMORY_T = [10, 50, 100, 200]
T_STEPS = 50


def load_randman():
    """(spikes (50, 10000, 50) float32, labels (10000,)) of ``otpe_preset(time_code=True,
    seed=0)``, cached on disk."""
    import torch

    from opzo.data.randman import otpe_preset

    cache = Path(os.environ.get("OPZO_CACHE_DIR", Path.home() / ".cache" / "opzo"))
    path = cache / "randman-time-seed0.pt"
    if path.exists():
        data = torch.load(path)
        return data["spikes"].float(), data["labels"]
    spikes, labels = otpe_preset(time_code=True, seed=0)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"spikes": spikes.to(torch.uint8), "labels": labels}, tmp)
    os.replace(tmp, path)
    return spikes, labels


def make_net():
    import torch

    from opzo import FastSigmoidSurrogate, LIFParams, SpikingMLP

    net = SpikingMLP([50, 128, 128, 10], lif=LIFParams(lam=0.5),
                     surrogate=FastSigmoidSurrogate(25.0))
    with torch.no_grad():
        for layer in net.hidden:
            layer.weight.mul_(8.0)
    return net


def make_learner(method: str, net, steps: int):
    from opzo import OPZO, InstantLoss, NoiseSampler, OnlineLearner
    from opzo.bptt import BPTTLearner
    from opzo.pzo import DFAThroughTime, PZOFeedback, UntruncatedLearner

    loss = InstantLoss("ce")
    if method == "bptt":
        return BPTTLearner(net, loss)
    if method == "opzo":
        return OnlineLearner(net, OPZO(NoiseSampler(alpha=0.2)), loss)
    lags = 1 if method.endswith("lag0") else None
    if method.startswith("pzo"):
        feedback = PZOFeedback(NoiseSampler(alpha=0.2), lags=lags)
    else:
        feedback = DFAThroughTime(lags=lags)
    return UntruncatedLearner(net, feedback, steps, loss)


def _cosines(learner, x, y) -> dict[str, float]:
    """Per parameter tensor, cos(method's gradient, BPTT's) on one batch, on copies."""
    import torch

    from opzo.bptt import BPTTLearner

    mine = copy.deepcopy(learner)
    mine.net.zero_grad(set_to_none=False)
    mine.net.train()
    mine.accumulate(x, y, T_STEPS)
    ref = BPTTLearner(copy.deepcopy(learner.net), learner.loss)
    ref.net.zero_grad(set_to_none=False)
    ref.accumulate(x, y, T_STEPS)
    out = {}
    for (name, a), b in zip(mine.net.named_parameters(), ref.net.parameters()):
        if name.endswith("weight"):
            out[name] = float(torch.nn.functional.cosine_similarity(
                a.grad.flatten(), b.grad.flatten(), dim=0))
    return out


def train(method: str, epochs: int, seed: int) -> dict:
    import torch

    from opzo.learner import evaluate_batch

    torch.set_num_threads(1)
    spikes, labels = load_randman()
    xtr, ytr = spikes[:, :8000], labels[:8000]
    xte, yte = spikes[:, 8000:], labels[8000:]
    torch.manual_seed(seed)
    net = make_net()
    learner = make_learner(method, net, T_STEPS)
    opt = torch.optim.Adamax(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    probe = (xtr[:, :128], ytr[:128])
    rows = []
    start = time.time()
    for epoch in range(1, epochs + 1):
        t0 = time.time()
        order = torch.randperm(8000, generator=gen)
        correct = count = 0
        for i in range(0, 8000, 128):
            idx = order[i:i + 128]
            stats = learner.train_batch(xtr[:, idx], ytr[idx], opt, T=T_STEPS)
            correct += stats.correct
            count += stats.count
        train_s = time.time() - t0
        ev = evaluate_batch(net, xte, yte, learner.loss, T_STEPS)
        cos = _cosines(learner, *probe) if method != "bptt" else {}
        rows.append({"epoch": epoch, "train_acc": 100 * correct / count,
                     "test_acc": 100 * ev.correct / ev.count, "cosine_bptt": cos,
                     "epoch_s": round(train_s, 2)})
        print(method, rows[-1], flush=True)
    return {"method": method, "epochs": rows, "wall_s": round(time.time() - start, 1)}


def memory_child(method: str, T: int, batch: int) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = make_net()
    learner = make_learner(method, net, T)
    opt = torch.optim.Adamax(net.parameters(), lr=3e-3)
    x = (torch.rand(T, batch, 50) < 0.05).float()
    y = torch.randint(0, 10, (batch,))
    learner.train_batch(x[:1], y, opt, T=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    learner.train_batch(x, y, opt, T=T)
    learner.train_batch(x, y, opt, T=T)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kib": after, "growth_kib": after - before}))


def memory(batch: int) -> list[dict]:
    rows = []
    for method in MEMORY_METHODS:
        for T in MEMORY_T:
            out = subprocess.run([sys.executable, __file__, "--memory-child", method, str(T),
                                  str(batch)], capture_output=True, text=True, check=True)
            row = {"method": method, "T": T, **json.loads(out.stdout.strip().splitlines()[-1])}
            print(row, flush=True)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        method, T, batch = args.memory_child
        memory_child(method, int(T), int(batch))
        return
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result.setdefault("runs", {})
    if not args.memory_only:
        load_randman()  # generate the cache once, before the workers start
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = {m: pool.submit(train, m, args.epochs, args.seed) for m in args.methods}
            for m, fut in futures.items():
                result["runs"][m] = fut.result()
        result["task"] = ("randman-time (OTPE preset, 8000/2000), FC 50-128-128-10, T=50, "
                          "fast-sigmoid k=25, 8x init, CE, Adamax 3e-3, batch 128, "
                          f"{args.epochs} epochs, seed {args.seed}, 1 thread per method")
    if not args.no_memory:
        result["memory"] = memory(args.batch)
        result["memory_setting"] = (f"growth of peak RSS over two training steps at T, batch "
                                    f"{args.batch}, FC 50-128-128-10, one process per point")
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
