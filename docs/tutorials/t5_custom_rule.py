"""Tutorial 5: write your own learning rule, register it, and train with it.

A spatial rule answers one question at every time step: given the output error e[t], what is
δ_l[t] = ∂L/∂u_l for every hidden layer? Here we write DRTP, direct random target projection
(Frenkel, Lefebvre and Bol, "Learning without feedback", Front. Neurosci. 2021): like DFA, but
the fixed random matrices B_l project the *target* instead of the error,

    g_l[t] = B_l (−y*),    δ_l[t] = g_l[t] ⊙ m_l ⊙ ψ(u_l[t])

so the hidden layers learn without waiting for the output: no error needs to travel back at
all. One class and one `RULES.register` line make it a method like the built-in ones:
`opzo train --method drtp` then works in this process, with every trace, surrogate, neuron
and network.

    python docs/tutorials/t5_custom_rule.py            # embedded MNIST, FC 800-800, 3 epochs
    python docs/tutorials/t5_custom_rule.py --small    # what CI runs
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from opzo.cli import main as opzo
from opzo.network import SpikingNet
from opzo.rules import RULES, SpatialRule, StepContext

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--small", action="store_true", help="tiny sizes (CI)")
parser.add_argument("--runs", default="runs/tutorials/custom_rule")
args = parser.parse_args()
out = Path(__file__).resolve().parent / "out"
out.mkdir(exist_ok=True)
runs = Path(args.runs)


class DRTP(SpatialRule):
    """Direct random target projection: g_l = B_l (−y*), B_l fixed and random."""

    name = "drtp"

    def bind(self, net: SpikingNet) -> None:
        """Called once before the first step: make one B_l of shape (n_l, m) per layer."""
        super().bind(net)  # sets self.sizes (the hidden layers' n_l) and self.num_outputs
        gen = torch.Generator().manual_seed(1234)
        bound = math.sqrt(1.0 / self.num_outputs)  # as DFA's Kaiming-uniform, fan-in m
        w = net.readout.weight
        self.B = [((torch.rand(n, self.num_outputs, generator=gen) * 2 - 1) * bound)
                  .to(dtype=w.dtype, device=w.device) for n in self.sizes]

    def deltas(self, ctx: StepContext) -> list[torch.Tensor]:
        """δ_l[t] for every hidden layer, each (B, n_l). ``ctx.target`` is the one-hot target
        y*; ``ctx.scale`` = 1/(B·T), the scale of the batch-and-time-mean loss's error."""
        signal = -ctx.target * ctx.scale                       # (B, m)
        g = [signal @ B.t() for B in self.B]                   # (B, n_l): B_l (−y*)
        return self.apply_local_derivative(ctx, g)             # ⊙ m_l ⊙ ψ(u_l), eq. 7


# The one line that makes it a method: --method drtp, config files, checks, checkpoints.
RULES.register("drtp", DRTP, "direct random target projection (Frenkel et al. 2021)")

if args.small:
    size = ["--hidden", "128", "64", "--T", "4", "--epochs", "2", "--limit-train", "2000",
            "--limit-test", "500", "--batch-size", "32", "--lr", "1e-3"]
else:
    size = ["--epochs", "3"]

rows = []
for method in ("drtp", "dfa"):  # ours beside its closest built-in relative
    code = opzo(["train", "--method", method, *size, "--quiet", "--overwrite",
                 "--out", str(runs / method)])
    assert code == 0, f"opzo train --method {method} failed"
    summary = json.loads((runs / method / "summary.json").read_text())
    saved = json.loads((runs / method / "config.json").read_text())
    rows.append(f"| {saved['method']} | {summary['final_test_acc']:.2f} | "
                f"{summary['wall_time_s']:.1f} |")

table = "\n".join(["| method | final test acc (%) | wall time (s) |", "|---|---|---|", *rows])
(out / "custom_rule.md").write_text(table + f"\n\nOptions: `{' '.join(size)}`.\n")
print(table)
