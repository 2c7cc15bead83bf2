"""Which network do the OPZO paper's Table 7 SynOps count? Our paper-convention count beside it.

    python benchmarks/table7_synops.py            # prints the table, writes the CSV
    python benchmarks/table7_synops.py --csv benchmarks/results/synops_table7.csv

Table 7 (appendix D.2) gives, for DVS-CIFAR10 (T = 10) and CIFAR-10 (T = 6), the firing rate
of four layers, the neuron-weighted total firing rate and the SynOps per sample of six models.
The SynOps follow from the rates under the paper's convention (firing rate x dense fan-out,
:mod:`opzo.energy`, ``convention="paper"``): SOP = Σ_l fr_l · T · n_l · f_l. This script puts
the paper's own rates into :func:`opzo.energy.synops_from_rates` for

- ``conv-table7`` (128C3-AP2-256C3-AP2-512C3-AP2-512C3-FC on 32x32: four spiking convolutions,
  128C3 at 32², 256C3 at 16², 512C3 at 8², 512C3 at 4²), in the paper's and in the exact
  convention (borders counted; every neuron of a layer at the layer's rate);
- ``conv5`` (128C3-AP2-256C3-AP2-512C3-FC, the string the paper gives for these nets: three
  spiking convolutions, so only the first three rates), paper convention;
- for DVS-CIFAR10, ``conv-table7`` on the 48x48 frames the paper says it uses, paper
  convention;

and the total firing rate weighted by each net's neuron counts, beside the table's. No
training: the rates are the paper's. Only ``conv-table7`` at 32x32 reproduces both the
SynOps and the total rates.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from opzo import SpikingNet  # noqa: E402
from opzo.energy import synops_from_rates  # noqa: E402
from opzo.netstring import NETS  # noqa: E402

#: Table 7 of the OPZO paper: dataset -> (T, input channels, rows of (method, 4 layer rates,
#: total fr, SynOps))
TABLE7 = {
    "DVS-CIFAR10": (10, 2, [
        ("Spatial BP", (0.1763, 0.1733, 0.2394, 0.3575), 0.1904, 1.42e9),
        ("Spatial BP (w/ LL)", (0.2272, 0.1618, 0.2199, 0.3439), 0.2122, 1.51e9),
        ("DFA", (0.2693, 0.4564, 0.4783, 0.4930), 0.3574, 2.91e9),
        ("DFA (w/ LL)", (0.2433, 0.4531, 0.4848, 0.4919), 0.3430, 2.84e9),
        ("OPZO", (0.2435, 0.3446, 0.4212, 0.4222), 0.3021, 2.41e9),
        ("OPZO (w/ LL)", (0.0406, 0.0614, 0.1451, 0.2838), 0.0691, 0.53e9),
    ]),
    "CIFAR-10": (6, 3, [
        ("Spatial BP", (0.2005, 0.1679, 0.1067, 0.0493), 0.1734, 0.76e9),
        ("Spatial BP (w/ LL)", (0.1870, 0.1474, 0.0978, 0.0470), 0.1589, 0.69e9),
        ("DFA", (0.1769, 0.3787, 0.4314, 0.4149), 0.2759, 1.40e9),
        ("DFA (w/ LL)", (0.1196, 0.3180, 0.4089, 0.3878), 0.2235, 1.16e9),
        ("OPZO", (0.1563, 0.2861, 0.3496, 0.2754), 0.2229, 1.12e9),
        ("OPZO (w/ LL)", (0.0400, 0.0670, 0.1159, 0.2157), 0.0640, 0.30e9),
    ]),
}


def total_rate(net: SpikingNet, rates) -> float:
    """The neuron-weighted firing rate of all hidden layers (the table's "Total fr")."""
    sizes = net.hidden_sizes
    return sum(r * n for r, n in zip(rates, sizes)) / sum(sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "synops_table7.csv"))
    args = ap.parse_args()
    rows = []
    for dataset, (T, channels, entries) in TABLE7.items():
        t7 = SpikingNet(NETS["conv-table7"], (channels, 32, 32), 10)
        c5 = SpikingNet(NETS["conv5"], (channels, 32, 32), 10)
        big = SpikingNet(NETS["conv-table7"], (channels, 48, 48), 10) if channels == 2 else None
        for method, rates, fr, synops in entries:
            row = {
                "dataset": dataset, "method": method, "T": T,
                "table7_synops_e9": synops / 1e9,
                "conv_table7_paper_e9": sum(synops_from_rates(t7, rates, T)) / 1e9,
                "conv_table7_exact_e9": sum(synops_from_rates(t7, rates, T, "exact")) / 1e9,
                "conv5_paper_e9": sum(synops_from_rates(c5, rates[:3], T)) / 1e9,
                "conv_table7_48x48_paper_e9": (sum(synops_from_rates(big, rates, T)) / 1e9
                                               if big is not None else None),
                "table7_total_fr": fr,
                "conv_table7_total_fr": total_rate(t7, rates),
                "conv5_total_fr": total_rate(c5, rates[:3]),
            }
            rows.append(row)
    path = Path(args.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else
                                 ("" if v is None else v)) for k, v in r.items()})
    print("SynOps per sample (x1e9) and total firing rate: Table 7 vs the paper's rates put "
          "into our fan-outs")
    print("| dataset | method | Table 7 | conv-table7 paper | conv-table7 exact | conv5 paper | "
          "conv-table7 48² paper | Table 7 fr | conv-table7 fr | conv5 fr |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        big = r["conv_table7_48x48_paper_e9"]
        print(f"| {r['dataset']} | {r['method']} | {r['table7_synops_e9']:.2f} | "
              f"{r['conv_table7_paper_e9']:.3f} | {r['conv_table7_exact_e9']:.3f} | "
              f"{r['conv5_paper_e9']:.3f} | {'' if big is None else f'{big:.3f}'} | "
              f"{r['table7_total_fr']:.4f} | {r['conv_table7_total_fr']:.4f} | "
              f"{r['conv5_total_fr']:.4f} |")
    worst = max(abs(r["conv_table7_paper_e9"] - r["table7_synops_e9"]) for r in rows)
    worst_fr = max(abs(r["conv_table7_total_fr"] - r["table7_total_fr"]) for r in rows)
    print(f"conv-table7, paper convention: largest SynOps difference {worst:.4f}e9 (the table "
          f"rounds to 0.01e9), largest total-fr difference {worst_fr:.5f} (rounds to 0.0001)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
