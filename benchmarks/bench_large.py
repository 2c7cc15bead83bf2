"""Time and peak memory of the seeds' large settings (issue 26): a ResNet-19 epoch on
CIFAR-shaped data with LocalZO + TET, and NF-ResNet-34 steps at 224x224.

    python benchmarks/bench_large.py resnet19 --device cuda --json OUT.json
    python benchmarks/bench_large.py nfresnet34 --device cuda --json OUT.json
    python benchmarks/bench_large.py resnet19 --device cpu --net conv5 --width 0.125 \\
        --images 128 --T 2          # a CPU smoke run of the script on a net of this tree

* ``resnet19``: LocalZO paper Table 2's "LocalZO + TET" on CIFAR-10 (settings of its Table 7:
  BPTT, LocalZO δ = 0.5, m = 5, z ~ N(0, 1), TET λ = 0.05, φ = 1, LIF leak 0.5, Adam lr 1e-3,
  batch 64, T = 6), one epoch of 50 000 synthetic 3x32x32 images with random labels (CIFAR-10
  itself is not available offline); ``--max-seconds`` stops early and extrapolates.
* ``nfresnet34``: OPZO paper Table 4's fine-tuning setting (ImageNet, 1000 classes, 224x224,
  T = 6, batch 64, noise before the neuron = hw_noise 0.1), ``--steps`` training batches for
  each of ``--methods`` (default opzo and bp, the online rules; OPZO's dense M is about
  10 GiB): seconds per batch and the peak memory, and the 'rule state:' line.

A net that is not registered in this tree (``resnet19``, ``nfresnet34`` come with issue
26a's branch) is reported as skipped, exit 0. Peak memory: torch's peak allocation on a GPU,
the process's peak RSS on the CPU. A method that runs out of GPU memory is reported as such.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from dataclasses import fields
from pathlib import Path

import torch

from opzo.build import build_learner, build_network, build_rule, make_optimizer, to_device
from opzo.config import ConfigError, TrainConfig
from opzo.losses import InstantLoss
from opzo.rules import mforms

CASES = {
    "resnet19": {"shape": (3, 32, 32), "classes": 10, "T": 6, "batch": 64, "images": 50_000,
                 "methods": ["bptt"],
                 "cfg": {"method": "bptt", "norm": "bn", "surrogate": "localzo",
                         "localzo_delta": 0.5, "localzo_m": 5, "localzo_dist": "normal",
                         "loss": "tet", "tet_lambda": 0.05, "tet_phi": 1.0,
                         "lif_lambda": 0.5, "optimizer": "adam", "lr": 1e-3,
                         "weight_decay": 0.0, "dropout": 0.0}},
    "nfresnet34": {"shape": (3, 224, 224), "classes": 1000, "T": 6, "batch": 64,
                   "images": None, "methods": ["opzo", "bp"],
                   "cfg": {"hw_noise": 0.1, "optimizer": "adamw", "lr": 2e-6,
                           "weight_decay": 0.0, "dropout": 0.0, "loss": "mix",
                           "gamma": 0.05, "lambda_m": 0.99999}},
}


def _config(options: dict) -> tuple[TrainConfig | None, str | None]:
    """The TrainConfig of ``options`` (keys this tree lacks, e.g. 'norm', are dropped and
    named), or None and why not."""
    known = {f.name for f in fields(TrainConfig)}
    dropped = [k for k in options if k not in known]
    try:
        cfg = TrainConfig.from_dict({k: v for k, v in options.items() if k in known},
                                    complete=False)
        cfg._net_tokens()
    except ConfigError as exc:
        return None, str(exc)
    return cfg, (f"options not in this tree, left out: {dropped}" if dropped else None)


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(cfg: TrainConfig, method: str, case: dict, args, device: torch.device, T: int,
             batch: int) -> dict:
    """Build the case's net and learner, train a warm-up batch, then time batches."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    shape, classes = case["shape"], case["classes"]
    row: dict = {}
    torch.manual_seed(0)
    net = build_network(cfg, shape, classes).to(device)
    row["net"] = net.describe()
    row["hidden_neurons"] = sum(net.hidden_sizes)
    if method != "bptt":
        sizes = mforms.state_sizes(build_rule(cfg), net, batch)
        row["rule_state"] = mforms.describe(sizes)
        print(row["rule_state"], flush=True)
        free, where = mforms.available_bytes(device)
        mforms.check_fits(sizes, free, where,
                          net_bytes=sum(p.numel() * p.element_size() for p in net.parameters()))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    learner = build_learner(cfg, net, InstantLoss.from_config(cfg))
    opt = make_optimizer(net.parameters(), cfg)
    g = torch.Generator(device="cpu").manual_seed(0)
    n_images = args.images or case["images"] or batch * (args.steps + 1)
    n_batches = math.ceil(n_images / batch)
    limit = n_batches if case["images"] else args.steps + 1

    def data() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch, math.prod(shape), generator=g, device="cpu")
        y = torch.randint(0, classes, (batch,), generator=g, device="cpu")
        return to_device(x, device), to_device(y, device)

    learner.train_batch(*data(), opt, T=T)  # warm-up (kernels, allocator)
    sync()
    t0 = time.perf_counter()
    done = 0
    for _ in range(limit - 1):
        learner.train_batch(*data(), opt, T=T)
        done += 1
        if args.max_seconds and time.perf_counter() - t0 > args.max_seconds:
            break
    sync()
    elapsed = time.perf_counter() - t0
    row.update({"seconds_per_batch": round(elapsed / max(done, 1), 4), "batches_timed": done,
                "peak_memory_mb": round(_peak(device), 1)})
    if case["images"]:
        row["seconds_per_epoch"] = round(elapsed / max(done, 1) * n_batches, 2)
        row["batches_per_epoch"] = n_batches
        if done < n_batches - 1:
            row["extrapolated_from_batches"] = done
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=list(CASES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--net", default=None, help="network (default: the case's name)")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--T", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--images", type=int, default=None, help="resnet19: images per epoch")
    ap.add_argument("--steps", type=int, default=3, help="nfresnet34: timed batches")
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    case = CASES[args.case]
    device = torch.device(args.device)
    T = args.T or case["T"]
    batch = args.batch or case["batch"]
    net_name = args.net or args.case
    out: dict = {"case": args.case, "net": net_name, "width": args.width, "T": T,
                 "batch": batch, "device": str(device), "torch": torch.__version__,
                 "machine": (torch.cuda.get_device_name(device) if device.type == "cuda"
                             else "cpu"), "results": {}}
    for method in args.methods or case["methods"]:
        options = {**case["cfg"], "net": net_name, "width": args.width, "T": T,
                   "batch_size": batch, "method": method}
        cfg, note = _config(options)
        if cfg is None:
            out["results"][method] = {"skipped": note}
            print(f"{method}: skipped: {note}", flush=True)
            continue
        row: dict = {"note": note} if note else {}
        try:
            row.update(_measure(cfg, method, case, args, device, T, batch))
        except torch.cuda.OutOfMemoryError as exc:
            row["out_of_memory"] = str(exc).splitlines()[0][:300]
        except mforms.StateTooLarge as exc:
            row["refused"] = str(exc)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        out["results"][method] = row
        print(f"{method}: {json.dumps(row)}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
