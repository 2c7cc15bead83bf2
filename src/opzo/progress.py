"""Progress on the terminal and the statistics an epoch's log line reports."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from .batch import BatchStats
from .distributed import Communicator

#: seconds between two plain progress lines when stderr is not a terminal (a batch job's
#: log); the environment variable ``OPZO_PROGRESS_INTERVAL`` (seconds) overrides it
PLAIN_INTERVAL_S = 30.0


def plain_interval() -> float:
    """:data:`PLAIN_INTERVAL_S`, or ``OPZO_PROGRESS_INTERVAL`` when it holds a number >= 0."""
    try:
        value = float(os.environ.get("OPZO_PROGRESS_INTERVAL", PLAIN_INTERVAL_S))
    except ValueError:
        return PLAIN_INTERVAL_S
    return value if value >= 0 else PLAIN_INTERVAL_S


def _duration(seconds: float) -> str:
    """45s, 2m05s, 1h02m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress within an epoch on stderr: a one-line bar redrawn in place on a terminal;
    without one (a batch job's log, a pipe) a plain line every ``interval`` seconds
    (default :func:`plain_interval`: 30 s), e.g. ``epoch 3/20 batch 120/469, loss 0.512 acc
    84.2%, 1130 samples/s, ETA 2m05s``; an epoch shorter than that prints none.

    ``first``: the batches of the epoch done before this process began it (a resumed run),
    left out of the rates.
    """

    def __init__(self, total: int, prefix: str, enabled: bool = True, first: int = 0,
                 interval: float | None = None) -> None:
        self.total = total
        self.prefix = prefix
        self.enabled = enabled
        # (the launcher of --nproc N pipes stderr; OPZO_PROGRESS_TTY: its own is a terminal)
        self.tty = sys.stderr.isatty() or os.environ.get("OPZO_PROGRESS_TTY") == "1"
        self.start = time.perf_counter()
        self.last = 0.0
        self.first = first
        self.interval = plain_interval() if interval is None else float(interval)
        self.last_plain = self.start

    def update(self, done: int, info: str, samples: int | None = None) -> None:
        """``done`` batches of ``total``; ``samples``: those trained since this began."""
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = (done - self.first) / max(now - self.start, 1e-9)
        eta = (self.total - done) / max(rate, 1e-9)
        if not self.tty:
            if now - self.last_plain < self.interval:
                return
            self.last_plain = now
            speed = (f", {samples / max(now - self.start, 1e-9):.0f} samples/s"
                     if samples is not None else f", {rate:.1f} batches/s")
            sys.stderr.write(f"{self.prefix} batch {done}/{self.total}, {info}{speed}, "
                             f"ETA {_duration(eta)}\n")
            sys.stderr.flush()
            return
        if now - self.last < 0.1 and done < self.total:
            return
        self.last = now
        width = 24
        filled = int(width * done / max(self.total, 1))
        bar = "=" * filled + (">" if filled < width else "") + " " * (width - filled - 1)
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
