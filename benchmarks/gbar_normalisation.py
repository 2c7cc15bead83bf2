"""Approximate OTPE with the paper's ḡ against a normalised leaky mean: alignment with BPTT.

    python benchmarks/run_randman.py --methods bptt     # first: the trained BPTT checkpoints
    python benchmarks/gbar_normalisation.py [--runs benchmarks/runs/randman]

The OTPE paper (section 3.1) defines ḡ = (1/T) Σ_t λ^{T−t} ψ_t, opzo's default
(``--otpe-gbar paper``); the 1/t shrinks ḡ along the sequence. This script takes the trained
BPTT model of each Randman code (``benchmarks/runs/randman/randman-<code>-bptt``: its
``checkpoint.pt``, kept by run_randman.py but not committed), and on 6 test batches
compares the per-layer cosine with the exact BPTT gradient of approximate OTPE with that ḡ,
with the normalised leaky mean ḡ = Σ_t λ^{T−t} ψ_t / Σ_k λ^k (``--otpe-gbar normalised``),
and of OTTT.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from opzo.build import build_network, make_source
from opzo.config import TrainConfig
from opzo.diagnostics import gradient_cosine
from opzo.losses import InstantLoss
from opzo.rules import SpatialBP

RUNS = Path(__file__).resolve().parent / "runs" / "randman"


def mean_cosine(net, batches, T: int, loss: InstantLoss, trace: str, gbar: str) -> str:
    """Mean per-layer cosine with BPTT over the batches, "hidden 1 / hidden 2 / readout"."""
    cos = [gradient_cosine(net, SpatialBP(), x, y, T, loss, reference="bptt", trace=trace,
                           gbar=gbar) for x, y in batches]
    return " / ".join(f"{statistics.mean(c[k] for c in cos):.3f}" for k in cos[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=RUNS,
                    help="run_randman.py's output root (default benchmarks/runs/randman)")
    args = ap.parse_args()
    for code in ("time", "rate"):
        run = args.runs / f"randman-{code}-bptt"
        if not (run / "checkpoint.pt").is_file():
            raise SystemExit(f"{run / 'checkpoint.pt'} not found: run "
                             "'python benchmarks/run_randman.py --methods bptt' first")
        cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
        state = torch.load(run / "checkpoint.pt", weights_only=False)
        source = make_source(cfg, "test")
        net = build_network(cfg, source.num_inputs, source.classes)
        net.load_state_dict(state["model"])
        loss = InstantLoss(cfg.loss, cfg.gamma)
        batches = [b for _, b in zip(range(6), source.batches(128, cfg.T))]

        args = (net, batches, cfg.T, loss)
        for gbar in ("paper", "normalised"):
            print(f"{code:4s}  {'approx_otpe, ḡ ' + gbar:30s} "
                  f"{mean_cosine(*args, 'approx_otpe', gbar)}")
        print(f"{code:4s}  {'ottt':30s} {mean_cosine(*args, 'ottt', 'paper')}")


if __name__ == "__main__":
    main()
