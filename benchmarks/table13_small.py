"""OPZO paper Table 13 at reduced size on CPU (issue 26): the 5-layer CNN with scaled weight
standardization (norm none) or with BN along all time steps (norm bn-all-t), trained by BPTT
(STBP), DFA through time and untruncated PZO (:mod:`opzo.pzo`), on the embedded MNIST subset.

    PYTHONPATH=src python benchmarks/table13_small.py --epochs 2 --train 3000 \
        --out benchmarks/results/table13_small.json

Reduced: conv5 at width 0.125 (16C3-AP2-32C3-AP2-64C3-FC) on 28×28 MNIST, T = 4, direct
input, Adam lr 1e-3, batch 64, λ_M = 0.99, α = 0.1 (the paper: DVS-CIFAR10, full width, its
Table 13 gives no further settings).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from opzo import InstantLoss, NoiseSampler, SpikingNet
from opzo.bptt import BPTTLearner
from opzo.norm import apply_norm
from opzo.pzo import DFAThroughTime, PZOFeedback, UntruncatedLearner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from importlib.resources import files

    d = np.load(files("opzo.data") / "embedded" / "mnist_subset.npz")
    xtr = torch.tensor(d["train_images"][: args.train], dtype=torch.float32).div(255)
    ytr = torch.tensor(d["train_labels"][: args.train], dtype=torch.long)
    xte = torch.tensor(d["test_images"], dtype=torch.float32).div(255)
    yte = torch.tensor(d["test_labels"], dtype=torch.long)
    T, B = 4, 64
    rows = []
    for norm in ("none", "bn-all-t"):
        for method in ("bptt", "dfa-tt", "pzo"):
            torch.manual_seed(args.seed)
            net = SpikingNet("conv5", (1, 28, 28), 10, width=0.125, dropout=0.0)
            apply_norm(net, norm)
            loss = InstantLoss("mix", 0.05)
            if method == "bptt":
                learner = BPTTLearner(net, loss)
            elif method == "dfa-tt":
                learner = UntruncatedLearner(net, DFAThroughTime(), steps=T, loss=loss)
            else:
                learner = UntruncatedLearner(
                    net, PZOFeedback(NoiseSampler(alpha=0.1), lambda_m=0.99), steps=T,
                    loss=loss)
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            start = time.perf_counter()
            for _epoch in range(args.epochs):
                perm = torch.randperm(len(ytr))
                for i in range(0, len(ytr) - B + 1, B):
                    idx = perm[i:i + B]
                    learner.train_batch(xtr[idx].reshape(B, -1), ytr[idx], opt, T=T)
            seconds = time.perf_counter() - start
            net.eval()
            with torch.no_grad():
                acc = float((net(xte.reshape(len(yte), -1), T=T).argmax(1) == yte)
                            .float().mean())
            row = dict(norm=norm, method=method, test_acc=round(100 * acc, 2),
                       train_seconds=round(seconds, 1), epochs=args.epochs,
                       train=args.train, seed=args.seed)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
