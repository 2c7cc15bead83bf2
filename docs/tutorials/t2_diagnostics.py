"""Tutorial 2: gradient alignment and variance, as the OPZO paper's Figs. 2 and 4.

Fig. 2 compares the variance of the weight gradients of OPZO, spatial BP and ZO_sp per layer;
Fig. 4 the cosine similarity of OPZO's and DFA's gradients with spatial BP's. `opzo train
--diagnostics` measures both during a run (diagnostics.jsonl), `opzo plot` draws them.
This tutorial drives the command line, as you would in a shell:

    python docs/tutorials/t2_diagnostics.py            # embedded MNIST, FC 800-800, 3 epochs
    python docs/tutorials/t2_diagnostics.py --small    # what CI runs

It writes a table and a figure into docs/tutorials/out/ and its runs under
runs/tutorials/diagnostics/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--small", action="store_true", help="tiny sizes (CI)")
parser.add_argument("--runs", default="runs/tutorials/diagnostics")
args = parser.parse_args()
out = Path(__file__).resolve().parent / "out"
out.mkdir(exist_ok=True)
runs = Path(args.runs)

# `opzo ...` in a shell; sys.executable -m opzo is the same command for this interpreter
opzo = [sys.executable, "-m", "opzo"]
if args.small:
    size = ["--hidden", "128", "64", "--T", "4", "--epochs", "2", "--limit-train", "2000",
            "--limit-test", "500", "--batch-size", "32", "--lr", "1e-3", "--diag-every", "10"]
else:
    size = ["--epochs", "3", "--diag-every", "20"]

methods = {"opzo": [], "bp": [], "dfa": [], "zo": ["--dropout", "0"]}
for name, extra in methods.items():
    subprocess.run([*opzo, "train", "--method", name, *size, *extra, "--diagnostics",
                    "--quiet", "--overwrite", "--out", str(runs / name)], check=True)

# accuracy, cosine with BP's gradient and variance, side by side (the figure on the page)
subprocess.run([*opzo, "plot", *(str(runs / m) for m in methods), "--out",
                str(out / "diagnostics.png")], check=True)

# The table: per layer, the mean cosine with spatial BP over the last epoch's measurements
# (Fig. 4), and the last epoch's gradient variance (Fig. 2) with its scale-free form
# Σ‖g_i − ḡ‖² / (n ‖ḡ‖²) (OPZO's M starts at zero and grows, so its gradients start small and
# the absolute variance says little), read from diagnostics.jsonl.
table = ["| method | layer | cosine with BP (last epoch, mean) | gradient variance | "
         "relative variance |", "|---|---|---|---|---|"]
for name in methods:
    rows = [json.loads(line) for line in (runs / name / "diagnostics.jsonl").open()]
    last = max(r["epoch"] for r in rows)
    cosines = [r["cosine"] for r in rows if "cosine" in r and r["epoch"] == last]
    var = next(r for r in rows if "variance" in r and r["epoch"] == last)
    for layer, value in var["variance"].items():
        cos = sum(c[layer] for c in cosines) / len(cosines)
        table.append(f"| {name} | {layer.removesuffix('.weight')} | {cos:.3f} | {value:.3g} | "
                     f"{var['relative_variance'][layer]:.3g} |")
(out / "diagnostics.md").write_text("\n".join(table) + f"\n\nOptions: `{' '.join(size)}`.\n")
print("\n".join(table))
