"""NIR interoperability figures (issue 14, benchmarks/RESULTS.md section "NIR").

1. Networks trained by opzo with OPZO (embedded MNIST, reset to zero): an FC net and the
   paper's conv5 at width 0.25. Each is exported (:func:`opzo.nir.to_nir`, dt = 1e-4), written
   and read back with ``nir``, and run in snnTorch and SpikingJelly on the 1000 test images:
   the fraction of images with the same predicted class as in opzo, the fraction of neurons
   (per layer, over all images) whose spike count equals opzo's, and the largest difference
   of the summed outputs.
2. The same FC net trained with subtractive reset (opzo's default), exported with
   ``approximate=True``: agreement of the reset-to-zero export with the trained network.
3. A snnTorch-built network (784-128-10, β = 0.8, reset to zero, random init) → NIR → opzo,
   fine-tuned with OPZO in opzo, exported back: its accuracy measured in snnTorch before and
   after, and the accuracy opzo measured.

    .venv/bin/python benchmarks/run_nir.py                 # ~5 min on a 2-core CPU
    .venv/bin/python benchmarks/run_nir.py --epochs 1 --no-conv   # quick

Writes benchmarks/results/nir.json (and prints it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import torch

from opzo import OPZO, InstantLoss, NoiseSampler, OnlineLearner, SpikingNet
from opzo.data import iterate_batches, load_dataset, make_encoder
from opzo.layers import ConvLayer
from opzo.neuron import LIFParams

T = 6
OUT = Path(__file__).resolve().parent / "results" / "nir.json"


def encode(images: torch.Tensor) -> torch.Tensor:
    return make_encoder("direct", "embedded-mnist")(images, T)


def train_opzo(net: SpikingNet, train, epochs: int, lr: float, seed: int = 0) -> float:
    """OPZO (paper defaults: Gaussian noise α = 0.2, λ_M = 0.99999, mix loss) with AdamW."""
    torch.manual_seed(seed)
    rule = OPZO(NoiseSampler(alpha=0.2, distribution="gaussian"), lambda_m=0.99999)
    learner = OnlineLearner(net, rule, InstantLoss("mix", gamma=0.05))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=2e-4)
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        for images, labels in iterate_batches(train, 64, shuffle=True, generator=gen):
            learner.train_batch(encode(images), labels, opt, T=T)
    net.eval()
    return time.perf_counter() - start


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return round(100.0 * float((scores.argmax(1) == labels).float().mean()), 2)


def ties(net: SpikingNet, x: torch.Tensor) -> list[int]:
    """Per layer, the (image, step, neuron) events with u = V_th exactly: no spike under
    opzo's and NIR's u > V_th, a spike under SpikingJelly's u >= V_th."""
    counts = [0] * len(net.hidden)
    with torch.no_grad():
        for _, rec in net.run(x, T):
            for l, u in enumerate(rec.u):
                counts[l] += int((u == net.neuron.v_th).sum())
    return counts


def compare(onir, net: SpikingNet, x: torch.Tensor, y: torch.Tensor, tmp: Path) -> dict:
    """Export, write, read back, run in opzo (re-imported) and in each peer."""
    import nir

    path = tmp / "model.nir"
    nir.write(path, onir.to_nir(net))
    graph = nir.read(path)
    ref, counts = onir.spike_counts(net, x, T)
    back, _ = onir.spike_counts(onir.from_nir(graph), x, T)
    row = {"net": net.describe(), "reset": net.neuron.reset, "images": len(y),
           "opzo_accuracy": accuracy(ref, y),
           "firing_rate": [round(float(c.mean()) / T, 4) for c in counts],
           "opzo_reimported_identical": bool(torch.equal(ref, back)),
           "potential_exactly_at_threshold": ties(net, x), "peers": {}}
    for peer, run in (("snntorch", onir.run_snntorch), ("spikingjelly", onir.run_spikingjelly)):
        try:
            out, peer_counts = run(graph, x, T)
        except ImportError as exc:
            row["peers"][peer] = f"not installed ({exc})"
            continue
        row["peers"][peer] = {
            "accuracy": accuracy(out, y),
            "same_prediction": round(float((out.argmax(1) == ref.argmax(1)).float().mean()), 4),
            "same_spike_count_per_layer": [
                round(float((peer_counts[f"lif{l}"] == c).float().mean()), 6)
                for l, c in enumerate(counts, start=1)],
            "neurons_with_other_spike_count_per_layer": [
                int((peer_counts[f"lif{l}"] != c).sum()) for l, c in enumerate(counts, start=1)],
            "max_abs_output_difference": float((out - ref).abs().max()),
        }
    return row


def snntorch_fine_tune(onir, train, x, y, epochs: int, tmp: Path) -> dict:
    import nir
    import snntorch as snn
    from snntorch import utils
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(5)
    hidden = 128
    peer = torch.nn.Sequential(
        torch.nn.Linear(784, hidden),
        snn.Leaky(beta=torch.full((hidden,), 0.8), threshold=torch.ones(hidden),
                  init_hidden=True, reset_mechanism="zero"),
        torch.nn.Linear(hidden, 10))
    with torch.no_grad():
        peer[0].weight.mul_(3.0)
        utils.reset(peer)
        before = sum(peer(x) for _ in range(T))
    with contextlib.redirect_stdout(io.StringIO()):
        graph = export_to_nir(peer, x[:1], ignore_dims=[0])
    path = tmp / "snntorch.nir"
    nir.write(path, graph)
    net = onir.load_nir_network(path)
    imported = onir.spike_counts(net, x, T)[0]
    seconds = train_opzo(net, train, epochs, lr=1e-3, seed=1)
    tuned = onir.spike_counts(net, x, T)[0]
    nir.write(path, onir.to_nir(net))
    after = onir.run_snntorch(nir.read(path), x, T)[0]
    return {"net": "snnTorch Linear(784,128)-Leaky(beta 0.8, reset zero)-Linear(128,10)",
            "accuracy_in_snntorch_before": accuracy(before, y),
            "accuracy_in_opzo_after_import": accuracy(imported, y),
            "epochs_opzo": epochs, "train_seconds": round(seconds, 1),
            "accuracy_in_opzo_after_fine_tune": accuracy(tuned, y),
            "accuracy_in_snntorch_after_fine_tune": accuracy(after, y),
            "same_prediction_after": round(float((after.argmax(1) == tuned.argmax(1))
                                                 .float().mean()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="OPZO epochs for the FC nets")
    parser.add_argument("--conv-epochs", type=int, default=1, help="OPZO epochs for conv5")
    parser.add_argument("--no-conv", action="store_true", help="skip the conv5 model")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import opzo.nir as onir

    train = load_dataset("embedded-mnist", split="train")
    test = load_dataset("embedded-mnist", split="test")
    x, y = encode(test.images), test.labels
    result: dict = {"date": time.strftime("%Y-%m-%d"), "torch_threads": torch.get_num_threads(),
                    "dataset": "embedded-mnist (6000 train, 1000 test)", "T": T, "models": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        torch.manual_seed(0)
        fc = SpikingNet("800-FC", (784,), 10, lif=LIFParams(reset="zero"))
        secs = train_opzo(fc, train, args.epochs, lr=2e-4)
        result["models"].append({**compare(onir, fc, x, y, tmp), "epochs": args.epochs,
                                 "train_seconds": round(secs, 1)})
        print(json.dumps(result["models"][-1]), flush=True)
        if not args.no_conv:
            torch.manual_seed(0)
            conv = SpikingNet("conv5", (1, 28, 28), 10, width=0.25, lif=LIFParams(reset="zero"))
            with torch.no_grad():
                for layer in conv.hidden:
                    if isinstance(layer, ConvLayer):
                        layer.gain.mul_(2.74)  # OTTT's scale (README, Networks)
            secs = train_opzo(conv, train, args.conv_epochs, lr=1e-3)
            result["models"].append({**compare(onir, conv, x, y, tmp),
                                     "epochs": args.conv_epochs, "train_seconds": round(secs, 1)})
            print(json.dumps(result["models"][-1]), flush=True)
        torch.manual_seed(0)
        sub = SpikingNet("800-FC", (784,), 10)  # subtractive reset, the default
        train_opzo(sub, train, args.epochs, lr=2e-4)
        graph = onir.to_nir(sub, approximate=True)
        exported = onir.from_nir(graph)
        ref = onir.spike_counts(sub, x, T)[0]
        got = onir.spike_counts(exported, x, T)[0]
        result["approximate_subtractive_reset"] = {
            "net": sub.describe(), "epochs": args.epochs,
            "accuracy_trained": accuracy(ref, y), "accuracy_exported": accuracy(got, y),
            "same_prediction": round(float((ref.argmax(1) == got.argmax(1)).float().mean()), 4)}
        print(json.dumps(result["approximate_subtractive_reset"]), flush=True)
        try:
            result["snntorch_fine_tune"] = snntorch_fine_tune(onir, train, x, y, 1, tmp)
        except ImportError as exc:
            result["snntorch_fine_tune"] = f"snntorch not installed ({exc})"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
