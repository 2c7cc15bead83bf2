"""Cost of learning (OPZO paper Table 5) for the networks of RESULTS.md, written to JSON.

    python benchmarks/cost_table.py                       # prints the tables
    python benchmarks/cost_table.py --json benchmarks/results/cost.json

Counts only (opzo.cost.learning_cost on networks built on the meta device): nothing is
trained or timed, so the numbers are the same on every machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from opzo.cost import build_cost_net, cost_methods, format_cost_table, learning_cost

#: (label, network string or None for the FC net, input shape)
NETWORKS = [
    ("MNIST FC 784-800-800-10", None, (784,)),
    ("conv5 on CIFAR-10 (3, 32, 32)", "conv5", (3, 32, 32)),
    ("conv5 on (1, 28, 28)", "conv5", (1, 28, 28)),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = p.parse_args(argv)
    tables = []
    for label, spec, shape in NETWORKS:
        net = build_cost_net(spec, shape, 10)
        rows = [learning_cost(net, m) for m in cost_methods()]
        rows += [learning_cost(net, m, local_learning=True) for m in ("bp", "dfa", "opzo")]
        tables.append({"label": label, "net": spec or "800-800-FC",
                       "input_shape": list(shape), "rows": rows})
        print(f"## {label}\n{format_cost_table(rows)}\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "tables": tables}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
