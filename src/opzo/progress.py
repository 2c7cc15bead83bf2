"""Progress on the terminal and the statistics an epoch's log line reports."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from .distributed import Communicator
from .learner import BatchStats


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int, prefix: str, enabled: bool = True) -> None:
        self.total = total
        self.prefix = prefix
        self.enabled = enabled
        # (the launcher of --nproc N pipes stderr; OPZO_PROGRESS_TTY: its own is a terminal)
        self.tty = sys.stderr.isatty() or os.environ.get("OPZO_PROGRESS_TTY") == "1"
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, done: int, info: str) -> None:
        if not self.enabled or not self.tty:
            return
        now = time.perf_counter()
        if now - self.last < 0.1 and done < self.total:
            return
        self.last = now
        width = 24
        filled = int(width * done / max(self.total, 1))
        rate = done / max(now - self.start, 1e-9)
        bar = "=" * filled + (">" if filled < width else "") + " " * (width - filled - 1)
        eta = (self.total - done) / max(rate, 1e-9)
        sys.stderr.write(f"\r{self.prefix} [{bar}] {done}/{self.total} {info} "
                         f"{rate:.1f} it/s eta {eta:.0f}s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


@dataclass
class Accumulator:
    """Pools :class:`BatchStats` over an epoch."""

    loss: float = 0.0
    correct: int = 0
    count: int = 0
    spikes: list[float] | None = None
    neuron_steps: list[int] | None = None

    def add(self, s: BatchStats) -> None:
        self.loss += s.loss_sum
        self.correct += s.correct
        self.count += s.count
        if self.spikes is None:
            self.spikes = list(s.spike_counts)
            self.neuron_steps = list(s.neuron_steps)
        else:
            assert self.neuron_steps is not None
            self.spikes = [a + b for a, b in zip(self.spikes, s.spike_counts)]
            self.neuron_steps = [a + b for a, b in zip(self.neuron_steps, s.neuron_steps)]

    def all_reduce(self, comm: Communicator, layers: int) -> None:
        """Replace every sum by its total over the processes (``layers``: the number of
        per-layer spike counts, for a process that saw no sample)."""
        spikes = self.spikes or [0.0] * layers
        steps = self.neuron_steps or [0] * layers
        total = comm.sum([self.loss, self.correct, self.count, *spikes, *steps])
        self.loss, self.correct, self.count = total[0], int(total[1]), int(total[2])
        if self.spikes is not None or layers:
            self.spikes = total[3:3 + len(spikes)]
            self.neuron_steps = [int(v) for v in total[3 + len(spikes):]]

    def summary(self) -> dict[str, Any]:
        n = max(self.count, 1)
        rates = ([s / max(k, 1) for s, k in zip(self.spikes, self.neuron_steps)]
                 if self.spikes and self.neuron_steps else [])
        return {"loss": self.loss / n, "acc": 100.0 * self.correct / n,
                "firing_rate": [round(r, 5) for r in rates]}
