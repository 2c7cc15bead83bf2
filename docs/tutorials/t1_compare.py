"""Tutorial 1: train OPZO on MNIST and compare it with spatial BP, DFA and ZO.

Run it from the repository root (or anywhere opzo is installed):

    python docs/tutorials/t1_compare.py            # the embedded MNIST subset, FC 800-800, 5 epochs
    python docs/tutorials/t1_compare.py --small    # what CI runs: a tiny net, 2 epochs, 2000 images

It writes its table and figure next to itself, into docs/tutorials/out/, and its run folders
under runs/tutorials/compare/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from opzo.config import TrainConfig
from opzo.plots import plot_runs
from opzo.train import run_training

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--small", action="store_true", help="tiny sizes (CI)")
parser.add_argument("--runs", default="runs/tutorials/compare", help="where the run folders go")
args = parser.parse_args()
out = Path(__file__).resolve().parent / "out"
out.mkdir(exist_ok=True)

# One config per method; everything else is the OPZO paper's MNIST setting (Table 1), which
# is opzo's default: T=6, AdamW lr 2e-4, batch 128, dropout 0.2, mixed loss, sigmoid psi.
if args.small:
    # few samples: smaller batches and a larger learning rate so that 2 epochs learn something
    size = dict(hidden=[128, 64], T=4, epochs=2, limit_train=2000, limit_test=500,
                batch_size=32, lr=1e-3)
else:
    size = dict(hidden=[800, 800], T=6, epochs=5)
methods = {
    "opzo": dict(method="opzo"),
    "bp": dict(method="bp"),          # spatial BP = OTTT: needs the transposed weights
    "dfa": dict(method="dfa"),        # fixed random feedback
    "zo": dict(method="zo", dropout=0.0),  # the paper's ZO_sp: no dropout, lr / 10
}

rows = []
for name, options in methods.items():
    settings = {**size, **options}
    if name == "zo":
        settings["lr"] = settings.get("lr", 2e-4) / 10  # the paper: 2e-5 for ZO, 2e-4 else
    cfg = TrainConfig(dataset="embedded-mnist", seed=0, **settings)
    run_dir = Path(args.runs) / name
    summary = run_training(cfg, run_dir, progress=False, overwrite=True)
    rows.append((name, summary))
    print(f"{name:5s} test accuracy {summary['final_test_acc']:.2f}%")

# The table the page shows: accuracy, training time and the energy proxy (synaptic
# operations per test sample, opzo.energy) of each method.
lines = ["| method | final test acc (%) | best (%) | wall time (s) | SynOps / sample |",
         "|---|---|---|---|---|"]
for name, s in rows:
    lines.append(f"| {name} | {s['final_test_acc']:.2f} | {s['best_test_acc']:.2f} | "
                 f"{s['wall_time_s']:.1f} | {s['synops_total']:.0f} |")
setting = ", ".join(f"{k}={v}" for k, v in size.items())
(out / "compare.md").write_text(
    "\n".join(lines) + f"\n\nSetting: {setting} (`--small`: {args.small}).\n")

# Test accuracy per epoch of the four runs side by side (what `opzo plot` draws).
plot_runs([Path(args.runs) / name for name in methods], out / "compare.png")
print("wrote", out / "compare.md", "and", out / "compare.png")
