"""Seconds per training epoch and peak memory of bp, dfa and opzo on CIFAR-10-shaped data.

    python benchmarks/bench_epoch.py --device cuda --json OUT.json     # the GPU check
    python benchmarks/bench_epoch.py --device cpu --images 512 --width 0.125   # a CPU smoke run

The OPZO paper's Table 6 anchor: one CIFAR-10 epoch of the 5-layer conv net (full width,
T = 6, batch 128) takes OPZO 46 s and BP 45 s on an RTX 3090. CIFAR-10 itself is not
available offline, so the data are synthetic: ``--images`` (default 50 000) uint8 3x32x32
images with random labels, normalised per channel like CIFAR-10 and moved to the device batch
by batch from pinned CPU memory, as ``opzo train`` does. Every method trains the same
network from the same initialisation with AdamW; the epoch time includes data movement and
the optimizer. ``--max-seconds`` stops a method early and extrapolates to the whole epoch
(said in the output). Peak memory: torch's peak allocation on a GPU, the process's peak RSS
on the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import time
from pathlib import Path

import torch

from opzo import InstantLoss, OnlineLearner, SpikingNet
from opzo.build import make_optimizer, to_device
from opzo.config import TrainConfig
from opzo.data.cifar import CIFAR10_MEAN, CIFAR10_STD, normalize
from opzo.rules import DFA, OPZO, SpatialBP

RULES = {"bp": SpatialBP, "dfa": DFA, "opzo": OPZO}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--net", default="conv5")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--T", type=int, default=6)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--methods", nargs="+", default=list(RULES), choices=list(RULES))
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="stop a method after this long and extrapolate to the epoch")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    g = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g,
                           device="cpu")
    labels = torch.randint(0, 10, (args.images,), generator=g, device="cpu")
    n_batches = math.ceil(args.images / args.batch)
    cfg = TrainConfig()
    loss = InstantLoss("mix", 0.05)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    results: dict[str, dict] = {}
    describe = ""
    for method in args.methods:
        torch.manual_seed(0)
        net = SpikingNet(args.net, (3, 32, 32), 10, width=args.width, dropout=0.0).to(device)
        describe = net.describe()
        with torch.no_grad():  # OTTT's gain for standardized convs: the deep layers fire
            for layer in net.hidden:
                gain = getattr(layer, "gain", None)
                if gain is not None:
                    gain.mul_(2.74)
        learner = OnlineLearner(net, RULES[method](), loss)
        opt = make_optimizer(net.parameters(), cfg)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        order = torch.randperm(args.images, generator=g, device="cpu")

        def batch(b: int, order=order) -> tuple[torch.Tensor, torch.Tensor]:
            idx = order[b * args.batch:(b + 1) * args.batch]
            x = normalize(images[idx], CIFAR10_MEAN, CIFAR10_STD).flatten(1)
            return to_device(x, device), to_device(labels[idx], device)

        learner.train_batch(*batch(0), opt, T=args.T)  # warm-up (kernels, allocator)
        sync()
        t0 = time.perf_counter()
        done, correct, seen = 0, 0, 0
        for b in range(n_batches):
            stats = learner.train_batch(*batch(b), opt, T=args.T)
            done += 1
            correct += stats.correct
            seen += stats.count
            if args.max_seconds and time.perf_counter() - t0 > args.max_seconds:
                break
        sync()
        elapsed = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        results[method] = {
            "seconds_per_epoch": round(elapsed * n_batches / done, 2),
            "batches_timed": done, "batches_per_epoch": n_batches,
            "peak_memory_mb": round(peak, 1),
            "train_acc_random_labels": round(100.0 * correct / max(seen, 1), 2),
        }
        extra = "" if done == n_batches else f" (extrapolated from {done} batches)"
        print(f"{method:5s} {results[method]['seconds_per_epoch']:8.2f} s/epoch{extra}, peak "
              f"{results[method]['peak_memory_mb']:.0f} MiB", flush=True)
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "device": str(device),
        "machine": (torch.cuda.get_device_name(device) if device.type == "cuda"
                    else f"{platform.machine()} {torch.get_num_threads()} torch threads"),
        "torch": torch.__version__,
        "setting": {"net": describe, "T": args.T, "batch": args.batch, "images": args.images},
        "results": results,
        "paper_table6_rtx3090_s_per_epoch": {"opzo": 46, "bp": 45},
    }
    if "bp" in results:
        out["ratio_to_bp"] = {m: round(r["seconds_per_epoch"] / results["bp"]["seconds_per_epoch"],
                                       3) for m, r in results.items()}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
