"""Tutorial 3: adapt a trained network to a noisy chip, and count its energy and learning cost.

OPZO paper section 5.4: a network trained offline loses accuracy on analog neuromorphic
hardware, whose synaptic currents are noisy; OPZO can fine-tune it on the chip, using the
chip's own noise as its perturbation. This tutorial drives the command line:

1. `opzo train --method bp` trains a network (offline, as one would before deployment);
2. `opzo eval RUN --hw-noise σ` measures its accuracy on a noisy chip;
3. `opzo train --init-from RUN --hw-noise σ --method opzo` adapts it on the chip;
4. `opzo eval` again, before and after: accuracy and synaptic operations (SynOps, the energy
   proxy of opzo.energy);
5. `opzo cost` counts what each method's error-backward step costs on such a chip (Table 5).

    python docs/tutorials/t3_chip.py            # embedded MNIST, FC 800-800
    python docs/tutorials/t3_chip.py --small    # what CI runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--small", action="store_true", help="tiny sizes (CI)")
parser.add_argument("--runs", default="runs/tutorials/chip")
parser.add_argument("--sigma", type=float, default=1.0, help="the chip's noise scale")
args = parser.parse_args()
out = Path(__file__).resolve().parent / "out"
out.mkdir(exist_ok=True)
runs = Path(args.runs)
opzo = [sys.executable, "-m", "opzo"]  # `opzo` in a shell
sigma = str(args.sigma)

if args.small:
    hidden = ["128", "64"]
    net = ["--hidden", *hidden, "--T", "4", "--limit-train", "2000", "--limit-test", "500",
           "--batch-size", "32"]
    pretrain, finetune = ["--epochs", "2", "--lr", "1e-3"], ["--epochs", "1", "--lr", "1e-4"]
else:
    hidden = ["800", "800"]
    net = []
    pretrain, finetune = ["--epochs", "5"], ["--epochs", "3", "--lr", "2e-5"]


def train(*options: str) -> None:
    subprocess.run([*opzo, "train", *net, *options, "--quiet", "--overwrite"], check=True)


def evaluate(run: Path) -> dict:
    """`opzo eval` prints a JSON report: clean accuracy, accuracy on the chip, SynOps."""
    done = subprocess.run([*opzo, "eval", str(run), "--hw-noise", sigma, "--hw-repeats", "3"],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


train("--method", "bp", *pretrain, "--out", str(runs / "pretrained"))
before = evaluate(runs / "pretrained")
# fine-tune on the chip: every forward pass sees the chip's noise, which is OPZO's probe
train("--method", "opzo", "--init-from", str(runs / "pretrained"), "--hw-noise", sigma,
      *finetune, "--out", str(runs / "on-chip"))
after = evaluate(runs / "on-chip")

lines = [f"| network | clean test acc (%) | on the chip, σ = {sigma} (%) | SynOps / sample |",
         "|---|---|---|---|"]
for label, r in (("trained with BP", before), ("after OPZO on the chip", after)):
    hw = r["hardware"]
    lines.append(f"| {label} | {r['acc']:.2f} | {hw['acc_mean']:.2f} ± {hw['acc_std']:.2f} | "
                 f"{r['synops_total']:.0f} |")

# learning cost of each method's error-backward step on this network (per sample and step)
cost = json.loads(subprocess.run([*opzo, "cost", "--hidden", *hidden, "--method", "all",
                                  "--json"], check=True, capture_output=True,
                                 text=True).stdout)
lines += ["", "| method | feedback MACs | feedback-learning MACs | memory (values) | "
          "parallel over layers | / forward MACs |", "|---|---|---|---|---|---|"]
for c in cost:
    lines.append(f"| {c['method']} | {c['ops']['feedback']} | {c['ops']['update']} | "
                 f"{c['memory']['total']} | {'yes' if c['parallel'] else 'no'} | "
                 f"{c['ratio_to_forward']:.3f} |")
options = " ".join(net + pretrain) + " / fine-tune " + " ".join(finetune)
(out / "chip.md").write_text("\n".join(lines) + f"\n\nOptions: `{options}`.\n")
print("\n".join(lines))
