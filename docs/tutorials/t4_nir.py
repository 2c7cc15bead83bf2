"""Tutorial 4: a snnTorch network through NIR into opzo, trained with OPZO, and back.

NIR (the Neuromorphic Intermediate Representation) is the file format snnTorch, SpikingJelly,
Norse, Lava and others read and write. Here a network built in snnTorch is written to NIR,
read by opzo, trained with OPZO (no backpropagation), written back to NIR and run in snnTorch
again, which then computes exactly what opzo computes. Needs `pip install "opzo[nir]"
snntorch` (snnTorch's NIR importer also needs nirtorch).

    python docs/tutorials/t4_nir.py            # 300 batches of OPZO
    python docs/tutorials/t4_nir.py --small    # what CI runs: 60 batches
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import nir
import snntorch
import torch
from snntorch.export_nir import export_to_nir
from snntorch.import_nir import import_from_nir

from opzo import OPZO, InstantLoss, NoiseSampler, OnlineLearner
from opzo.data import iterate_batches, load_dataset, make_encoder
from opzo.nir import load_nir_network, to_nir

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--small", action="store_true", help="tiny sizes (CI)")
parser.add_argument("--runs", default="runs/tutorials/nir")
args = parser.parse_args()
out = Path(__file__).resolve().parent / "out"
out.mkdir(exist_ok=True)
runs = Path(args.runs)
runs.mkdir(parents=True, exist_ok=True)
T, hidden, batches = 6, 64, (60 if args.small else 300)

train = load_dataset("embedded-mnist", split="train")
test = load_dataset("embedded-mnist", split="test")
encode = make_encoder("direct", "embedded-mnist")  # normalised pixels, the same at every step
x_test = encode(test.images, T)                      # (1000, 784)

# 1. A network built in snnTorch: Linear -> Leaky (LIF, reset to zero) -> Linear readout.
#    (Per-neuron beta and threshold: snnTorch's exporter writes scalar ones with an empty
#    shape, which nir's type check rejects.)
torch.manual_seed(0)
peer = torch.nn.Sequential(
    torch.nn.Linear(784, hidden),
    snntorch.Leaky(beta=torch.full((hidden,), 0.8), threshold=torch.ones(hidden),
                   init_hidden=True, reset_mechanism="zero"),
    torch.nn.Linear(hidden, 10))
with torch.no_grad():
    peer[0].weight.mul_(3.0)  # so that the untrained neurons fire


def run_in_snntorch(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ_t of a snnTorch module's output over T steps of the static input x."""
    for m in module.modules():  # start every neuron from rest
        if isinstance(m, snntorch.SpikingNeuron) and hasattr(m, "reset_mem"):
            m.reset_mem()
    with torch.no_grad():
        outs = [module(x) for _ in range(T)]
    return sum(o[0] if isinstance(o, tuple) else o for o in outs)


def accuracy(scores: torch.Tensor) -> float:
    return 100 * float((scores.argmax(1) == test.labels).float().mean())


acc_peer = accuracy(run_in_snntorch(peer, x_test))

# 2. snnTorch -> NIR file -> opzo's SpikingNet
with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress
    graph = export_to_nir(peer, x_test[:1], ignore_dims=[0])
nir.write(runs / "from_snntorch.nir", graph)
net = load_nir_network(runs / "from_snntorch.nir")
print(net.describe(), "| leak", net.neuron.lam, "| reset", net.neuron.reset)
with torch.no_grad():
    scores = net(x_test, T=T)  # opzo's inference: Σ_t o[t]
gap_in = float((scores - run_in_snntorch(peer, x_test)).abs().max())
acc_imported = accuracy(scores)

# 3. Train it with OPZO: one noisy forward pass per step, momentum feedback, no backprop.
torch.manual_seed(0)
net.train()
rule = OPZO(NoiseSampler(alpha=0.2, distribution="gaussian"), lambda_m=0.99999)
learner = OnlineLearner(net, rule, InstantLoss("mix", gamma=0.05))
opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=2e-4)
gen = torch.Generator().manual_seed(0)
for b, (images, labels) in enumerate(iterate_batches(train, 64, shuffle=True, generator=gen)):
    if b == batches:
        break
    learner.train_batch(encode(images, T), labels, opt, T=T)
net.eval()
with torch.no_grad():
    scores = net(x_test, T=T)
acc_trained = accuracy(scores)

# 4. opzo -> NIR file -> snnTorch
nir.write(runs / "trained.nir", to_nir(net))
with contextlib.redirect_stdout(io.StringIO()):  # the importer prints progress
    back = import_from_nir(nir.read(runs / "trained.nir"))
back.eval()
scores_back = run_in_snntorch(back, x_test)
gap_out = float((scores_back - scores).abs().max())
acc_back = accuracy(scores_back)

table = "\n".join([
    "| step | test accuracy (%) | max \\|Σ_t o − snnTorch's\\| |",
    "|---|---|---|",
    f"| built in snnTorch (untrained) | {acc_peer:.2f} | |",
    f"| read into opzo from NIR | {acc_imported:.2f} | {gap_in:.2e} |",
    f"| after {batches} batches of OPZO in opzo | {acc_trained:.2f} | |",
    f"| written to NIR, run in snnTorch | {acc_back:.2f} | {gap_out:.2e} |",
])
(out / "nir.md").write_text(table + f"\n\nFC 784-{hidden}-10, T = {T}, batch 64.\n")
print(table)
