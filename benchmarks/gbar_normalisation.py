"""Approximate OTPE with the paper's ḡ against a normalised leaky mean: alignment with BPTT.

    python benchmarks/run_randman.py --methods bptt     # first: the trained BPTT checkpoints
    python benchmarks/gbar_normalisation.py

The OTPE paper (section 3.1) defines ḡ = (1/T) Σ_t λ^{T−t} ψ_t, which ``opzo.traces``
implements literally; the 1/t shrinks ḡ along the sequence. This script takes the trained BPTT
model of each Randman code (``benchmarks/runs/randman-<code>-bptt``), and on 6 test batches
compares the per-layer cosine with the exact BPTT gradient of approximate OTPE with the
literal ḡ, with the normalised leaky mean ḡ = Σ_t λ^{T−t} ψ_t / Σ_k λ^k, and of OTTT.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

import opzo.traces as traces
from opzo.config import TrainConfig
from opzo.diagnostics import gradient_cosine
from opzo.losses import InstantLoss
from opzo.rules import SpatialBP
from opzo.train import build_network, make_source

RUNS = Path(__file__).resolve().parent / "runs"


def mean_cosine(net, batches, T: int, loss: InstantLoss, trace: str) -> str:
    """Mean per-layer cosine with BPTT over the batches, "hidden 1 / hidden 2 / readout"."""
    cos = [gradient_cosine(net, SpatialBP(), x, y, T, loss, reference="bptt", trace=trace)
           for x, y in batches]
    return " / ".join(f"{statistics.mean(c[k] for c in cos):.3f}" for k in cos[0])


def main() -> None:
    trace_cls = next(c for c in vars(traces).values()
                     if isinstance(c, type) and getattr(c, "name", "") == "approx_otpe")
    literal = trace_cls.push

    def normalised(self, x, rec=None, l=0):
        literal(self, x, rec, l)
        self.gbar = self.S / ((1 - self.lam ** self.count) / (1 - self.lam))

    for code in ("time", "rate"):
        run = RUNS / f"randman-{code}-bptt"
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
        try:
            for name, push in (("approx_otpe, ḡ literal (1/t)", literal),
                               ("approx_otpe, ḡ normalised", normalised)):
                trace_cls.push = push
                print(f"{code:4s}  {name:30s} {mean_cosine(*args, 'approx_otpe')}")
        finally:
            trace_cls.push = literal
        print(f"{code:4s}  {'ottt':30s} {mean_cosine(*args, 'ottt')}")


if __name__ == "__main__":
    main()
