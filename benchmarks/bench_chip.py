"""What the chip costs per training batch: today's learner path against the same training
through the chip interface (``--chip opzo``, the reference backend), with a weight grid, and
with the quantized, mismatched LIF chip (:mod:`opzo.chip`). Ratios of round-robin medians
in one run (:func:`baselines.round_robin_medians`), never lone times.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_chip.py --rounds 30 \
        --csv benchmarks/results/chip_overhead.csv

The networks use LIF with reset to zero (what a NIR graph carries); ``nir-snntorch`` and
``nir-spikingjelly`` (skipped when the simulator is missing) train through the network's own
NIR graph run by that simulator (``--chip nir:FILE --chip-sim SIM``, :mod:`opzo.chip_nir`).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import round_robin_medians  # noqa: E402

from opzo import chip_nir  # noqa: E402,F401  (registers --chip nir:)
from opzo.chip import ChipConfig, setup_chip  # noqa: E402
from opzo.learner import OnlineLearner  # noqa: E402
from opzo.network import SpikingMLP  # noqa: E402
from opzo.neurons import LIF  # noqa: E402
from opzo.rules.direct import OPZO  # noqa: E402
from opzo.rules.noise import NoiseSampler  # noqa: E402

CASES = {
    "today": None,
    "chip-opzo": ChipConfig(backend="opzo"),
    "chip-opzo+w4": ChipConfig(backend="opzo", weight_bits=4, update_rounding="stochastic"),
    "chip-w4+s8+mismatch": ChipConfig(weight_bits=4, update_rounding="stochastic",
                                      state_bits=8, threshold_noise=0.1, leak_noise=0.1),
    "nir-snntorch": ChipConfig(backend="nir:", sim="snntorch"),
    "nir-spikingjelly": ChipConfig(backend="nir:", sim="spikingjelly"),
}


def make(chip: ChipConfig | None, sizes: list[int], batch: int, T: int, folder: Path):
    torch.manual_seed(0)
    net = SpikingMLP(sizes, neuron=LIF(reset="zero"))
    if chip is not None and chip.backend == "nir:":  # the net's own graph, in the simulator
        import nir

        from opzo.nir import to_nir

        path = folder / f"{chip.sim}.nir"
        nir.write(str(path), to_nir(net))
        chip = ChipConfig(backend=f"nir:{path}", sim=chip.sim)
    rule = OPZO(NoiseSampler(position="before"))
    setup = setup_chip(net, chip) if chip is not None else None
    learner = OnlineLearner(net, rule, chip=setup.learner_chip if setup else None)
    opt = torch.optim.AdamW([*net.parameters(), *rule.parameters()], lr=2e-4)
    if setup is not None:
        setup.attach(opt, net)
    x = torch.rand(batch, sizes[0])
    y = torch.randint(0, sizes[-1], (batch,))
    return lambda: learner.train_batch(x, y, opt, T=T)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[784, 400, 400, 10])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--T", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier "
                    "on a shared machine)")
    ap.add_argument("--csv", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cases = {name: chip for name, chip in CASES.items()
             if chip is None or not chip.backend.startswith("nir:")
             or (importlib.util.find_spec("nir") and importlib.util.find_spec(chip.sim))}
    with tempfile.TemporaryDirectory() as folder:
        calls = {name: make(chip, a.sizes, a.batch, a.T, Path(folder))
                 for name, chip in cases.items()}
        med = round_robin_medians(calls, a.rounds)
    rows = [{"case": k, "ratio_to_today": round(v / med["today"], 3)} for k, v in med.items()]
    for r in rows:
        print(f"{r['case']:24s} {r['ratio_to_today']:.3f}x")
    if a.csv:
        with a.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["case", "ratio_to_today"])
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
