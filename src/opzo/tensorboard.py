"""TensorBoard logging of a run (``opzo train --tensorboard``), written to ``RUN/tensorboard/``.

View it live with ``tensorboard --logdir RUN/tensorboard`` (or the parent folder of several
runs). Needs the ``tensorboard`` package: ``pip install "opzo[tensorboard]"``; it is imported
only when the option is on.

Every event has one step axis: the **global step**, the number of training batches since the
run began (``epoch · batches_per_epoch + batch``; a resumed run counts the batches before the
stop). What is written, by tag:

========================================  ==================================================
per epoch (at the epoch's last batch)      ``epoch`` (1, 2, ...), ``loss/train``,
                                           ``loss/test``, ``accuracy/train``,
                                           ``accuracy/test`` (%), ``firing_rate/layerL``
                                           (test set, hidden layer L from 1),
                                           ``synops/layerL`` and ``synops/total`` (synaptic
                                           operations per test sample), ``optim/lr``,
                                           ``noise/alpha`` (rules with a perturbation:
                                           opzo, zo), ``localzo/nonzero_grad_fraction``
                                           (LocalZO / SparseGrad ψ), ``time/epoch_s``: the
                                           values of the epoch's ``metrics.jsonl`` row
every ``tensorboard_every`` batches        ``batch/loss`` and ``batch/acc`` (%) of the batch
                                           just trained (the global batch under torchrun);
                                           written when the global step is a multiple of it
with ``--diagnostics``                     ``cosine/<weight>`` (the rule's gradient against
                                           the reference's, every ``diag_every`` batches, as
                                           ``diagnostics.jsonl``), per epoch
                                           ``variance/<weight>`` and
                                           ``relative_variance/<weight>``
histograms, per epoch                      ``weights/<parameter>`` (every parameter of the
                                           network) and the rule's feedback matrices per
                                           hidden layer: ``M/layerL`` for OPZO (its momentum
                                           feedback M_l), ``feedback/layerL`` for DFA / DKP
========================================  ==================================================

Only process 0 of a distributed run writes. A resumed run continues the same curves: its
writer is opened with ``purge_step`` = the checkpoint's global step + 1, so TensorBoard drops
whatever the stopped process had written after its last checkpoint and every step holds one
value, the one the uninterrupted run has. The events are flushed before every checkpoint,
so a step that the checkpoint covers is never lost by a kill.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import TrainConfig
    from .network import SpikingNet
    from .rules.base import SpatialRule

#: the folder of the run folder that holds the event files
TENSORBOARD_DIR = "tensorboard"

#: metrics.jsonl key -> TensorBoard tag of the per-epoch scalars (a list value becomes one
#: tag per hidden layer, ``<tag>/layer1``, ...); any other numeric key of the row is written
#: as ``epoch/<key>``
EPOCH_TAGS = {
    "epoch": "epoch",
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "train_acc": "accuracy/train",
    "test_acc": "accuracy/test",
    "firing_rate": "firing_rate",
    "synops": "synops",
    "synops_total": "synops/total",
    "lr": "optim/lr",
    "alpha": "noise/alpha",
    "nonzero_grad_fraction": "localzo/nonzero_grad_fraction",
    "epoch_time_s": "time/epoch_s",
}

INSTALL_HINT = 'pip install "opzo[tensorboard]"'


class TensorBoardMissing(RuntimeError):
    """``--tensorboard`` without the tensorboard package installed."""


def summary_writer_class() -> Any:
    """torch's ``SummaryWriter``, or :class:`TensorBoardMissing` saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TensorBoardMissing(
            "--tensorboard needs the tensorboard package, which is not installed: "
            f"{INSTALL_HINT} (or turn the option off)") from None
    return SummaryWriter


class TensorBoardLogger:
    """Writes one run's scalars and histograms (see the module docstring for the tags).

    ``batches_per_epoch`` fixes the global step of (epoch, batch); ``every``: the per-batch
    scalars are written when the global step is a multiple of it. Call :meth:`open` once the
    run knows where it starts, then the ``log_*`` methods; :meth:`flush` before a checkpoint;
    :meth:`close` at the end.
    """

    def __init__(self, run_dir: Path, batches_per_epoch: int, every: int = 50,
                 enabled: bool = True) -> None:
        #: torch's SummaryWriter (None when logging is off: every method does nothing)
        self.writer_class = summary_writer_class() if enabled else None
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.batches_per_epoch = int(batches_per_epoch)
        self.every = int(every)
        self.writer: Any = None

    @classmethod
    def for_run(cls, cfg: TrainConfig, run_dir: Path, batches_per_epoch: int, main: bool
                ) -> TensorBoardLogger:
        """The logger of a run: writing for process 0 (``main``) when ``cfg.tensorboard``
        is on, doing nothing otherwise. Every process of a run with the option on checks
        that the package is there, so that a missing one stops all of them alike."""
        if cfg.tensorboard:
            summary_writer_class()
        return cls(run_dir, batches_per_epoch, cfg.tensorboard_every,
                   enabled=cfg.tensorboard and main)

    def step(self, epoch: int, batch: int) -> int:
        """The global step after ``batch`` batches of ``epoch`` (both counted from 0)."""
        return epoch * self.batches_per_epoch + batch

    def open(self, epoch: int, batch: int, resume: bool) -> None:
        """Start writing at the position (epoch, batch) the run continues from. A new run
        removes the event files an overwritten run left; a resumed one purges the events
        after that position (TensorBoard's ``purge_step``)."""
        if self.writer_class is None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        old = sorted(self.log_dir.glob("events.out.tfevents.*"))
        if not resume:
            for path in old:
                path.unlink()
            old = []
        # TensorBoard reads the files in the order of their names, which start with the
        # second they were made: the new one must not share the last one's second (a stamp
        # further ahead, another machine's clock, is not waited for)
        stamps = [int(m.group(1)) for p in old
                  if (m := re.match(r"events\.out\.tfevents\.(\d+)\.", p.name))]
        deadline = time.monotonic() + 2.0
        while stamps and int(time.time()) <= max(stamps) and time.monotonic() < deadline:
            time.sleep(0.05)
        purge = self.step(epoch, batch) + 1 if resume else None
        self.writer = self.writer_class(log_dir=str(self.log_dir), purge_step=purge)

    def log_batch(self, epoch: int, batch: int, loss: float, acc: float) -> None:
        """The batch just trained (``batch`` counted from 1 within ``epoch``), when due."""
        step = self.step(epoch, batch)
        if self.writer is None or step % self.every:
            return
        self.writer.add_scalar("batch/loss", loss, step)
        self.writer.add_scalar("batch/acc", acc, step)

    def log_cosine(self, epoch: int, batch: int, cosine: dict[str, float]) -> None:
        """The diagnostics' gradient alignment measured on batch ``batch`` (from 1)."""
        if self.writer is None:
            return
        step = self.step(epoch, batch)
        for name, value in cosine.items():
            self.writer.add_scalar(f"cosine/{name}", value, step)

    def log_epoch(self, epoch: int, row: dict[str, Any], net: SpikingNet,
                  rule: SpatialRule | None, variance: dict[str, dict[str, float]] | None = None
                  ) -> None:
        """Epoch ``epoch``'s (from 0) metrics.jsonl row, the diagnostics' gradient variances
        (``{"variance": {...}, "relative_variance": {...}}``) and the histograms, at the
        step of the epoch's last batch."""
        if self.writer is None:
            return
        w, step = self.writer, self.step(epoch + 1, 0)
        for key, value in row.items():
            tag = EPOCH_TAGS.get(key, f"epoch/{key}")
            if isinstance(value, list):
                for i, v in enumerate(value):
                    if _is_number(v):
                        w.add_scalar(f"{tag}/layer{i + 1}", v, step)
            elif _is_number(value):
                w.add_scalar(tag, value, step)
        for kind, values in (variance or {}).items():
            for name, value in values.items():
                w.add_scalar(f"{kind}/{name}", value, step)
        for name, param in net.named_parameters():
            w.add_histogram(f"weights/{name}", param.detach().float().cpu(), step)
        inner = getattr(rule, "inner", rule)  # local learning / IGL wrap the spatial rule
        blocks = getattr(inner, "feedback_blocks", None)
        if blocks is not None:
            prefix = "M" if hasattr(inner, "M") else "feedback"
            for i, block in enumerate(blocks()):
                w.add_histogram(f"{prefix}/layer{i + 1}", block.detach().float().cpu(), step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
