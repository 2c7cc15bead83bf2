"""The training run: the epoch loop, evaluation, stop signals, checkpoints and resume.

The pieces come from :mod:`opzo.build` (data, network, learner, optimizer, device), the run
folder's files and lock from :mod:`opzo.rundir`, the progress bar and epoch statistics from
:mod:`opzo.progress`. A run folder holds ``config.json`` (the resolved options),
``metrics.jsonl`` (one JSON line per epoch), ``summary.json`` (written at the end) and
``checkpoint.pt`` (written atomically after every epoch, a minute into the run, every
``checkpoint_minutes`` and on Ctrl-C / SIGTERM). ``resume`` continues from the checkpoint and
yields the same numbers as an uninterrupted run: the data order of each epoch is a function
of (seed, epoch); a stop request (SIGINT, SIGTERM) takes effect at a batch boundary (the end
of the batch in progress, or, for a batch longer than :data:`STOP_GRACE_S` in one process,
the start of it: the partial batch is discarded and what it changed put back); the
checkpoint carries the RNG states (CPU and, on a GPU, CUDA; one per process of a distributed
run), so noise and dropout continue identically, and every row of ``metrics.jsonl`` and
``diagnostics.jsonl`` so far: the checkpoint is written before the epoch's rows are
appended, and a resume rebuilds both files from it, so no kill loses a row. Exactness is
promised on the same device, number of processes and number of CPU threads (a change of
device or threads is warned about).

Devices and processes: ``cfg.device`` (``auto``: CUDA when available) holds the model, the
rule's state and every batch (moved from pinned CPU memory); under ``torchrun`` (or
``opzo train --nproc N``) every process trains on its shard of each global batch and the
gradients are summed (:mod:`opzo.distributed`); process 0 alone writes the run folder.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import chip_nir  # noqa: F401  (registers the chip backend of --chip nir:FILE)
from .batch import BatchAbandoned, BatchStats
from .build import (
    build_learner,
    build_network,
    build_rule,
    is_nir,
    kernels_in_use,
    load_weights,
    make_optimizer,
    make_readout,
    make_source,
    resolve_device,
    to_device,
)
from .chip import ChipBackend, ChipSetup, evaluate_batch_on_chip, setup_chip
from .config import TrainConfig
from .data import Source, epoch_permutation
from .diagnostics import GradientVariance, gradient_cosine
from .distributed import Communicator, Shard, launched_by_torchrun
from .energy import SynOpsCounter
from .hardware import sharded
from .learner import evaluate_batch
from .losses import InstantLoss
from .network import SpikingNet
from .nir import network_from_nir
from .progress import Accumulator, Progress
from .pzo import UNTRUNCATED_METHODS, untruncated_state_sizes
from .rundir import (
    CHECKPOINT,
    Diverged,
    Interrupted,
    RunError,
    WriteError,
    append_jsonl,
    atomic_save,
    atomic_write_text,
    data_fingerprint,
    edited_options,
    git_commit,
    load_checkpoint,
    peak_memory_mb,
    prepare_run_dir,
    read_jsonl,
    rewrite_jsonl,
    rng_state,
    set_rng_state,
    truncate_jsonl,
)
from .tensorboard import TensorBoardLogger
from .version import __version__

#: the first checkpoint of a run is written at the end of the first batch that ends this
#: many seconds after the start (then every ``checkpoint_minutes``), so that a SIGKILL early
#: in the first epoch costs about a minute; tests lower it
FIRST_CHECKPOINT_S = 60.0

#: the largest rule state (OPZO's M, DFA's / DKP's matrices) copied at every batch's start so
#: that a stop can abandon the batch; with a larger one a stop waits for the batch's end
SNAPSHOT_MAX_BYTES = 256 * 2**20


def _tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a (nested) state dict."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


#: a stop request lets the batch in progress finish if it does within this many seconds;
#: a longer batch is abandoned at its next time step (see :class:`StopSignals`)
STOP_GRACE_S = 1.0


def evaluate(net: SpikingNet, source: Source, cfg: TrainConfig, loss: InstantLoss,
             comm: Communicator | None = None, chip: ChipBackend | None = None) -> dict:
    """Test loss, accuracy, firing rates and synaptic operations per sample (per hidden layer
    and in total, :mod:`opzo.energy`) of ``net`` on ``source`` (no noise, no dropout), on the
    network's device. With ``comm`` each process evaluates its contiguous share of the
    samples and the sums are added over the processes; an evaluation that draws random
    numbers (the chip's Gaussian noise, rate-coded inputs) instead shares every batch of the
    one-process evaluation, drawn whole on every process, so that every sample gets the
    numbers it gets in one process. With a ``chip`` (:mod:`opzo.chip`, one process) the
    forward is the chip's."""
    device = next(net.parameters()).device
    acc = Accumulator()
    synops = SynOpsCounter(net, convention=cfg.synops_convention)
    readout = make_readout(cfg)
    hw = net.hardware
    random = (hw is not None and hw.kind == "gaussian" and hw.scale > 0) or cfg.encoding == "rate"
    if chip is not None:
        for x, labels in source.batches(cfg.eval_batch_size, cfg.T):
            acc.add(evaluate_batch_on_chip(chip, net, to_device(x, device),
                                           to_device(labels, device), loss, T=cfg.T,
                                           synops=synops, readout=readout))
    elif comm is not None and random:
        for x, labels in source.batches(cfg.eval_batch_size, cfg.T):
            shard = comm.shard(labels.shape[0])
            mine = shard.size > 0
            if not mine:  # a batch smaller than the processes: drawn for nothing, not counted
                shard = Shard(0, labels.shape[0], labels.shape[0])
            x = shard.rows(x, 0 if x.dim() == 2 else 1)
            with sharded(net, shard):
                stats = evaluate_batch(net, to_device(x, device),
                                       to_device(shard.rows(labels), device), loss, T=cfg.T,
                                       readout=readout, synops=synops if mine else None)
            if mine:
                acc.add(stats)
    else:
        if comm is not None:
            share = comm.shard(len(source))
            source = source.part(share.lo, share.hi)
        if len(source):
            for x, labels in source.batches(cfg.eval_batch_size, cfg.T):
                acc.add(evaluate_batch(net, to_device(x, device), to_device(labels, device),
                                       loss, T=cfg.T, readout=readout, synops=synops))
    if comm is not None:
        acc.all_reduce(comm, len(net.hidden))
        synops.all_reduce(comm)
    energy = synops.result()
    return {**acc.summary(), "synops": [round(v, 1) for v in energy["synops"]],
            "synops_total": round(energy["synops_total"], 1)}


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (``kill``) while training: the first asks the run to stop
    at a batch boundary, so the checkpoint is at one and resume is exact: at the end of the
    batch in progress when it ends within :data:`STOP_GRACE_S`, else (a batch of a huge T or
    a big net, in one process) at the batch's next time step, the partial batch discarded
    and the checkpoint written from the state before it (:meth:`overdue`). A second signal
    stops at once (the last checkpoint written stands).

    Handlers are installed from the main thread only, and put back by :meth:`restore`.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log=print) -> None:
        self.requested = False
        self.requested_at = 0.0  # time.monotonic() of the first request
        self.log = log
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.request()
        self.log(f"\n{signal.Signals(signum).name}: stopping at a batch boundary (send it again "
                 "to stop at once)")

    def request(self) -> None:
        if not self.requested:
            self.requested_at = time.monotonic()
        self.requested = True

    def overdue(self) -> bool:
        """A stop was requested more than :data:`STOP_GRACE_S` ago: the learners abandon the
        batch in progress (they ask this at every time step)."""
        return self.requested and time.monotonic() - self.requested_at > STOP_GRACE_S

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def _to_stderr(log):
    """Where stop and warning lines go: stderr when ``log`` is ``print`` (the command line,
    whose stdout is the run's progress), else ``log`` itself."""
    if log is print:
        return lambda *a, **k: print(*a, **{**k, "file": sys.stderr, "flush": True})
    return log


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in d.items()}


def run_training(cfg: TrainConfig, run_dir: str | Path, resume: bool = False,
                 progress: bool = True, log=print, stop_after_batches: int | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Train as ``cfg`` says, writing the run folder; return the final summary.

    The folder is locked for the run (one writer); a new run refuses a folder that holds
    another run unless ``overwrite``. Under torchrun (``WORLD_SIZE`` > 1) this is one process
    of a data-parallel run: it joins the process group, trains on its shard of every global
    batch, and only process 0 writes the run folder and logs. ``stop_after_batches`` requests
    a stop after that many batches, as SIGINT / SIGTERM would (tests).

    Raises :class:`Interrupted` after a requested stop (checkpoint written), :class:`Diverged`
    on NaN / infinite loss or weights (the last good checkpoint kept), :class:`RunError` for a
    folder that cannot be used as asked.
    """
    cfg.validate()
    run_dir = Path(run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    comm = Communicator.init(device) if launched_by_torchrun() else None
    try:
        return _Run(cfg, run_dir, device, comm, progress, log).train(
            resume, overwrite, stop_after_batches)
    except RuntimeError as exc:
        if comm is not None and "DistBackendError" in type(exc).__name__ + str(type(exc)):
            raise RunError(
                f"process {comm.rank} of {comm.world_size}: lost contact with another process "
                f"of this run (it failed or was killed; its own message says why). "
                f"The last checkpoint in {run_dir} stands: continue with opzo train "
                f"--resume {run_dir} --nproc {comm.world_size}") from None
        raise


@dataclass
class RunState:
    """One record of a run's state: what :meth:`_Run.checkpoint` writes (``to_dict``, the
    checkpoint file's fields, unchanged) and :meth:`_Run.restore` reads (``from_dict``, with
    the defaults of checkpoints written before a field existed)."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    rule: dict[str, Any] | None
    #: the chip's state (:mod:`opzo.chip`: its weight grid), or None
    chip: dict[str, Any] | None
    #: the gradient variance's (count, mean, m2), or None
    variance: Any
    #: torch's CPU generator state of process 0 (older checkpoints have only this)
    rng: Tensor | None
    #: every process's generator states (:func:`~opzo.rundir.rng_state`)
    rng_states: list[dict[str, Tensor | None]]
    device: str
    threads: int | None
    world_size: int
    epoch: int
    batch: int
    #: the epoch's statistics so far (an :class:`~opzo.progress.Accumulator`'s fields)
    partial: dict[str, Any]
    surrogate_stats: Any
    wall_time_s: float
    first_loss: float | None
    data: Any
    config: dict[str, Any]
    #: the rows of metrics.jsonl / diagnostics.jsonl up to this position (None: an older
    #: checkpoint without them)
    metrics_rows: list[dict[str, Any]] | None
    diag_rows: list[dict[str, Any]] | None

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's dict (the fields by name; nothing copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> RunState:
        """From a checkpoint's dict (:func:`~opzo.rundir.load_checkpoint` has checked its
        fields' types); fields an older checkpoint lacks take their defaults."""
        rng = state.get("rng")
        return cls(
            model=state["model"], optimizer=state["optimizer"],
            scheduler=state.get("scheduler"), rule=state.get("rule"), chip=state.get("chip"),
            variance=state.get("variance"), rng=rng,
            rng_states=state.get("rng_states") or [{"cpu": rng, "cuda": None}],
            device=state.get("device", "cpu"), threads=state.get("threads"),
            world_size=int(state.get("world_size", 1)),
            epoch=state["epoch"], batch=state["batch"], partial=state["partial"],
            surrogate_stats=state.get("surrogate_stats"),
            wall_time_s=float(state.get("wall_time_s", 0.0)),
            first_loss=state.get("first_loss"), data=state.get("data"),
            config=state["config"], metrics_rows=state.get("metrics_rows"),
            diag_rows=state.get("diag_rows"))


class _Run:
    """One training run (one process of it): the pieces, the epoch loop, the checkpoints."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, device: torch.device,
                 comm: Communicator | None, progress: bool, log) -> None:
        self.cfg, self.run_dir, self.device, self.comm = cfg, run_dir, device, comm
        self.main = comm is None or comm.is_main
        self.world = 1 if comm is None else comm.world_size
        #: how to continue the run (with the number of processes it needs)
        self.resume_cmd = f"opzo train --resume {run_dir}" + (
            f" --nproc {self.world}" if self.world > 1 else "")
        # process 0 alone speaks and writes
        self.log = log if self.main else (lambda *_a, **_k: None)
        self.alert = _to_stderr(self.log)  # stops, interruptions and warnings
        self.progress = progress and self.main
        self.ckpt_path = run_dir / CHECKPOINT
        self.metrics_path = run_dir / "metrics.jsonl"
        self.diag_path = run_dir / "diagnostics.jsonl"
        #: the CPU threads this process computes with (recorded: the numbers depend on it)
        self.threads = torch.get_num_threads()
        # every row of metrics.jsonl / diagnostics.jsonl so far; the checkpoint carries them,
        # so a resume rebuilds both files whatever moment a kill or a full disk struck
        self.metrics_rows: list[dict] = []
        self.diag_rows: list[dict] = []
        self.has_checkpoint = False  # whether a checkpoint of this run exists

    # ---- building -------------------------------------------------------------------------
    def build(self, resume: bool) -> None:
        cfg, device, comm = self.cfg, self.device, self.comm
        torch.manual_seed(cfg.seed)
        shape, classes = self.train_set.input_shape, self.train_set.classes
        if cfg.init_from and is_nir(cfg.init_from):  # the network itself comes from the file
            net = network_from_nir(cfg, cfg.init_from, shape, classes)
            self.log(f"network from {cfg.init_from}: {net.describe()}, "
                     f"{net.neuron.describe()} (the config's net, hidden and neuron options "
                     "are not used)")
        else:
            net = build_network(cfg, shape, classes)
            if cfg.init_from and not resume:  # a resume takes its weights from the checkpoint
                self.log(f"starting from the weights of {load_weights(net, cfg.init_from)}")
        net = net.to(device)
        self.net = net
        self.loss = InstantLoss.from_config(cfg)
        self.check_rule_memory(net)
        # the chip (opzo.chip): its weight grid rounds the starting weights; None: no chip
        self.chip: ChipSetup | None = setup_chip(net, cfg)
        if self.chip is not None and comm is not None:
            raise ValueError("the chip options run in one process: drop --nproc")
        self.learner = build_learner(cfg, net, self.loss, comm,
                                     self.chip.learner_chip if self.chip is not None else None)
        self.rule = self.learner.rule  # for the diagnostics (None: BPTT measures itself)
        # the model's parameters and the learner's own (local readouts), in one list
        params = self.learner.parameters()
        if comm is not None:  # the same start everywhere, whatever each process computed
            comm.broadcast_([*params, *net.buffers()])
        self.variance = GradientVariance(net) if cfg.diagnostics else None
        self.optimizer = make_optimizer(params, cfg)
        if self.chip is not None:  # every update onto the grid and the chip
            self.chip.attach(self.optimizer, net)
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer,
                                                                     T_max=cfg.epochs)
                          if cfg.schedule == "cosine" else None)

    def check_rule_memory(self, net) -> None:
        """Measure the memory of the rule's state ('rule state: M 10.9 GiB ...', logged under
        the header) and refuse, in one line, a state that does not fit the device's free memory
        (before allocating it)."""
        self.rule_state = None
        if self.cfg.method == "bptt":
            return
        from .rules import mforms

        batch = -(-self.cfg.batch_size // self.world)
        if self.cfg.method in UNTRUNCATED_METHODS:  # opzo.pzo: T feedback matrices, ∝ T
            sizes = untruncated_state_sizes(self.cfg.method, net, batch, self.cfg.T)
        else:
            sizes = mforms.state_sizes(build_rule(self.cfg), net, batch)
        free, where = mforms.available_bytes(self.device)
        #: logged under the run's header line (:meth:`loop`)
        self.rule_state = mforms.describe(sizes) + f" ({where})"
        weights = sum(p.numel() * p.element_size() for p in net.parameters())
        mforms.check_fits(sizes, free, where, net_bytes=weights)

    # ---- the run --------------------------------------------------------------------------
    def train(self, resume: bool, overwrite: bool, stop_after: int | None) -> dict[str, Any]:
        cfg = self.cfg
        # the data first: a missing dataset must not leave an empty run folder behind
        self.train_set = make_source(cfg, "train")
        self.test_set = make_source(cfg, "test")
        if len(self.train_set) < self.world:
            raise ValueError(f"{len(self.train_set)} training samples cannot be shared by "
                             f"{self.world} processes: use fewer processes (--nproc)")
        self.tb = TensorBoardLogger.for_run(  # --tensorboard: a missing package stops here
            cfg, self.run_dir, math.ceil(len(self.train_set) / cfg.batch_size), self.main)
        lock = prepare_run_dir(self.run_dir, resume, overwrite) if self.main else None
        try:
            return self._train(resume, stop_after)
        except WriteError as exc:
            raise self.write_failed(exc) from None
        finally:
            self.tb.close()
            if lock is not None:
                lock.release()

    def write_failed(self, exc: WriteError) -> RunError:
        """The error a file that cannot be written ends the run with: the file, the cause,
        what stands and how to go on."""
        if self.has_checkpoint and self.ckpt_path.is_file():
            return RunError(f"{exc}; the last checkpoint in {self.run_dir} stands: make room "
                            f"(or make the folder writable) and continue with: "
                            f"{self.resume_cmd}")
        return RunError(f"{exc}; no checkpoint was written: make room (or make the folder "
                        "writable) and start the run again with --overwrite")

    def _train(self, resume: bool, stop_after: int | None) -> dict[str, Any]:
        """:meth:`train` with the folder locked: build, restore or start, loop."""
        cfg = self.cfg
        self.build(resume)
        self.data = {"train": data_fingerprint(self.train_set, cfg.dataset),
                     "test": data_fingerprint(self.test_set, cfg.dataset)}
        self.start_epoch, self.start_batch, self.partial = 0, 0, Accumulator()
        self.state_stats = None  # a LocalZO / SparseGrad ψ's sparsity counters, mid-epoch
        self.time_before = 0.0  # training time of earlier processes of this run
        self.first_loss: float | None = None  # the run's first batch loss (divergence)
        if resume:
            self.restore()
        elif self.main:
            atomic_write_text(self.metrics_path, "")
            if cfg.diagnostics:
                atomic_write_text(self.diag_path, "")
        config_path = self.run_dir / "config.json"
        text = json.dumps(cfg.to_dict(), indent=2) + "\n"
        # a finished run's files are left as they are (its --lr would change nothing)
        if self.main and self.start_epoch < cfg.epochs and (
                not config_path.is_file() or config_path.read_text() != text):
            atomic_write_text(config_path, text)
        if self.start_epoch < cfg.epochs:
            self.tb.open(self.start_epoch, self.start_batch, resume)
        return self.loop(stop_after)

    def restore(self) -> None:
        """Continue from the checkpoint (see the module docstring): read it, check that this
        resume may continue it, load the weights and states, apply a new learning rate,
        and put back the position, generators, statistics and rows."""
        cfg, run_dir = self.cfg, self.run_dir
        st = self.read_checkpoint()
        finished = self.check_resumable(st)
        self.load_states(st)
        saved_lr = float(st.config.get("lr", cfg.lr))
        if cfg.lr != saved_lr and not finished:
            self.change_lr(saved_lr)
        self.restore_position(st)
        if finished:
            self.log(f"{run_dir} has finished all {cfg.epochs} epochs: nothing to resume"
                     + (" (its files are left as they are)" if cfg.lr == saved_lr else
                        f"; --lr {cfg.lr:g} is not applied, its files are left as they are"))
        else:
            self.log(f"resuming {run_dir} at epoch {self.start_epoch + 1}, batch "
                     f"{self.start_batch}")

    def read_checkpoint(self) -> RunState:
        """The run's checkpoint; a RunError saying what to do when there is none yet."""
        run_dir = self.run_dir
        if not self.ckpt_path.is_file():
            raise RunError(
                f"cannot resume {run_dir}: it stopped before its first checkpoint "
                f"({self.ckpt_path} does not exist), so there is nothing to continue from; "
                f"start it again with --overwrite, e.g. opzo train --config "
                f"{run_dir / 'config.json'} --overwrite")
        st = RunState.from_dict(load_checkpoint(
            self.ckpt_path, self.device,
            needed=("model", "optimizer", "epoch", "batch", "config", "partial", "rng")))
        self.has_checkpoint = True
        return st

    def check_resumable(self, st: RunState) -> bool:
        """Refuse an edited config or another number of processes; warn where the resume
        will not be exact (another device, another number of threads). Returns whether the
        run has finished all its epochs."""
        cfg, run_dir, device = self.cfg, self.run_dir, self.device
        edited = edited_options(st.config, cfg)
        if edited:
            raise RunError(
                f"{run_dir / 'config.json'} differs from the run's checkpoint in "
                f"{', '.join(edited)}: a resumed run continues with the settings it started "
                "with (only --device, --threads and --lr may change); undo the edit or start "
                "a new run")
        if st.world_size != self.world:
            raise ValueError(
                f"{run_dir} was trained by {st.world_size} process(es) and this resume has "
                f"{self.world}: the shards of every batch, and so the numbers, depend on it. "
                f"Resume with --nproc {st.world_size} (or torchrun --nproc_per_node "
                f"{st.world_size}), or start a new run")
        if st.device != str(device):
            warnings.warn(f"{run_dir} was trained on {st.device} and resumes on {device}: "
                          "it continues, but resume is exact only on the same device "
                          "(other kernels, other random streams)", stacklevel=3)
        finished = int(st.epoch) >= cfg.epochs
        if st.threads is not None and int(st.threads) != self.threads and not finished:
            warnings.warn(f"{run_dir} was trained with {st.threads} CPU thread(s) and "
                          f"resumes with {self.threads}: it continues, but resume is exact "
                          f"only with the same number of threads (sums are split by thread); "
                          f"--threads {st.threads} keeps it exact", stacklevel=3)
        return finished

    def load_states(self, st: RunState) -> None:
        """The weights, the optimizer's, the schedule's and the rule's states; a RunError
        when they do not fit the network and rule of the config."""
        try:
            self.net.load_state_dict(st.model)
            self.optimizer.load_state_dict(st.optimizer)
            if self.scheduler is not None and st.scheduler is not None:
                self.scheduler.load_state_dict(st.scheduler)
            self.learner.load_state_dict(st.rule)
            if self.chip is not None:
                self.chip.load_state_dict(st.chip, self.net)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise RunError(f"{self.ckpt_path} does not fit the network and rule of "
                           f"{self.run_dir / 'config.json'}: {str(exc)[:200]}") from None

    def change_lr(self, saved_lr: float) -> None:
        """Another learning rate from here on, the schedule kept."""
        lr = self.cfg.lr
        ratio = lr / saved_lr if saved_lr else 0.0
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * ratio if saved_lr else lr
            if "initial_lr" in group:
                group["initial_lr"] = lr
        if self.scheduler is not None:
            self.scheduler.base_lrs = [lr for _ in self.scheduler.base_lrs]
        self.log(f"learning rate {saved_lr:g} -> {lr:g} from here on")

    def restore_position(self, st: RunState) -> None:
        """The generators, the epoch and batch to continue at, the epoch's statistics so
        far, the training time, the first loss, the gradient variance and the rows."""
        comm = self.comm
        set_rng_state(st.rng_states[0 if comm is None else comm.rank], self.device)
        self.start_epoch, self.start_batch = st.epoch, st.batch
        self.partial = Accumulator(**st.partial)
        self.state_stats = st.surrogate_stats
        self.time_before = st.wall_time_s
        self.first_loss = st.first_loss
        if self.variance is not None and st.variance:
            v = self.variance
            v.count, v.mean, v.m2 = st.variance
        self.restore_rows(st)

    def restore_rows(self, st: RunState) -> None:
        """The rows of metrics.jsonl and diagnostics.jsonl up to the checkpoint's position:
        from the checkpoint, which carries them, and both files rewritten to hold exactly
        them where they differ (a row lost to a kill or a full disk after the checkpoint was
        written comes back; rows written after it go). An older checkpoint without rows:
        the files' lines before its position are kept."""
        rows = st.metrics_rows
        if rows is None:
            e, b = self.start_epoch, self.start_batch
            if self.main:
                truncate_jsonl(self.metrics_path, lambda r: r["epoch"] <= e, self.log)
                truncate_jsonl(self.diag_path, lambda r: r["epoch"] <= e or (
                    r["epoch"] == e + 1 and "batch" in r and r["batch"] < b), self.log)
                self.metrics_rows = read_jsonl(self.metrics_path, self.log)
                self.diag_rows = read_jsonl(self.diag_path, self.log)
            return
        self.metrics_rows = list(rows)
        self.diag_rows = list(st.diag_rows or [])
        if self.main:
            if rewrite_jsonl(self.metrics_path, self.metrics_rows):
                self.log(f"{self.metrics_path}: rebuilt from the checkpoint's "
                         f"{len(self.metrics_rows)} rows")
            if self.cfg.diagnostics:
                rewrite_jsonl(self.diag_path, self.diag_rows)

    def checkpoint(self, epoch: int, batch: int, acc: Accumulator) -> None:
        """Every process's RNG state, and the rest from process 0 (the same everywhere).
        Weights that are not finite are never saved: the last good checkpoint stands."""
        net, learner, comm = self.net, self.learner, self.comm
        params = learner.parameters()
        if not all(bool(torch.isfinite(p.detach().sum())) for p in params):
            raise FloatingPointError("the weights became NaN/inf")
        rng = rng_state(self.device)
        rng_states = [rng] if comm is None else comm.gather_object(rng)
        self.last_checkpoint = time.monotonic()
        self.has_checkpoint = True
        if not self.main:
            return
        v = self.variance
        atomic_save(RunState(
            model=net.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            rule=learner.state_dict(),
            chip=self.chip.state_dict() if self.chip is not None else None,
            variance=(v.count, v.mean, v.m2) if v is not None else None,
            rng=torch.get_rng_state(),
            rng_states=rng_states,
            device=str(self.device),
            threads=self.threads,
            world_size=self.world,
            epoch=epoch, batch=batch,
            partial=acc.__dict__.copy(),
            surrogate_stats=net.surrogate.stats_state() if batch else None,
            wall_time_s=self.elapsed(),
            first_loss=self.first_loss,
            data=self.data,
            config=self.cfg.to_dict(),
            metrics_rows=self.metrics_rows,
            diag_rows=self.diag_rows,
        ).to_dict(), self.ckpt_path)

    def elapsed(self) -> float:
        """Training time of this run so far, over all the processes that ran it."""
        return round(self.time_before + time.perf_counter() - self.t_start, 2)

    def checkpoint_due(self, batch_index: int) -> bool:
        """A mid-epoch checkpoint after this batch (every ``checkpoint_every`` batches, or
        ``checkpoint_minutes`` after the last one; the run's first one already
        :data:`FIRST_CHECKPOINT_S` after the start)."""
        cfg = self.cfg
        if cfg.checkpoint_every and batch_index % cfg.checkpoint_every == 0:
            return True
        if not cfg.checkpoint_minutes:
            return False
        wait = 60.0 * cfg.checkpoint_minutes
        if not self.has_checkpoint:
            wait = min(wait, FIRST_CHECKPOINT_S)
        return time.monotonic() - self.last_checkpoint > wait

    def loop(self, stop_after: int | None) -> dict[str, Any]:
        """Every remaining epoch; a stop request ends it with :class:`Interrupted` after the
        checkpoint is written."""
        cfg, log, train_set, test_set = self.cfg, self.log, self.train_set, self.test_set
        kernels = kernels_in_use(self.net, self.device, self.learner)
        where = f"{self.device}" + (f" x {self.world} processes" if self.world > 1 else "")
        log(f"opzo: {cfg.method} on {cfg.dataset} ({len(train_set)} train / {len(test_set)} "
            f"test), net {self.net.describe()}, T={cfg.T}, {cfg.epochs} epochs, on {where}, "
            f"{kernels} kernels -> {self.run_dir}")
        if self.rule_state:
            log(self.rule_state)
        if len(test_set) > len(train_set):
            self.alert(f"warning: the test split ({len(test_set)} samples) is larger than the "
                       f"training split ({len(train_set)}): are the train and test files "
                       "swapped?")
        self.seen = self.start_batch
        self.stop_after = stop_after
        self.t_start = time.perf_counter()
        self.last_checkpoint = time.monotonic()
        self.stop = StopSignals(self.alert)
        # one process: a stop abandons a long batch at its next time step; several: the
        # processes agree on a stop once per batch, so it takes effect at the batch's end
        self.abandonable = False  # whether the batch in progress may be given up
        self.last_batch_s = math.inf  # how long the last batch took (unknown: long)
        self.snapshot_fits: bool | None = None  # whether the rule state is small enough
        self.learner.should_stop = ((lambda: self.abandonable and self.stop.overdue())
                                    if self.comm is None else None)
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                self.run_epoch(epoch)
                if epoch + 1 < cfg.epochs and self.agree(self.stop.requested):
                    self.alert(f"stopped after epoch {epoch + 1}; checkpoint saved. "
                               f"Continue with: {self.resume_cmd}")
                    raise Interrupted(str(self.run_dir))
        except KeyboardInterrupt:
            # a second signal: stopped at once, the last checkpoint written stands
            self.alert(f"interrupted; the last checkpoint stands. Continue with: "
                       f"{self.resume_cmd}")
            raise Interrupted(str(self.run_dir), agreed=False) from None
        finally:
            self.stop.restore()
        return self.finish(kernels)

    def agree(self, flag: bool) -> bool:
        """Whether any process raised ``flag`` (a sum over the processes)."""
        return flag if self.comm is None else self.comm.sum([float(flag)])[0] > 0

    def diverged(self, exc: Exception, epoch: int, batch: int) -> Diverged:
        """The error a NaN / infinite loss or weight ends the run with, saying how to go on."""
        where = f"{exc} at epoch {epoch + 1}, batch {batch + 1}."
        if not self.ckpt_path.is_file():
            return Diverged(f"{where} No checkpoint was written yet: start again with a "
                            f"lower learning rate, e.g. --lr {self.cfg.lr / 10:g} --overwrite")
        return Diverged(
            f"{where} The last good checkpoint in {self.run_dir} stands: continue with a "
            f"lower learning rate, e.g. {self.resume_cmd} "
            f"--lr {self.cfg.lr / 10:g}")

    def start_epoch_state(self, epoch: int) -> tuple[int, Accumulator]:
        """The first batch of ``epoch`` and its statistics so far (both nonzero only when a
        resume continues within it); schedules, feedback freezing and the epoch's counters
        set up."""
        cfg, net = self.cfg, self.net
        self.learner.start_epoch(epoch / max(cfg.epochs - 1, 1),
                                 cfg.freeze_m_after is not None and epoch >= cfg.freeze_m_after)
        first = self.start_batch if epoch == self.start_epoch else 0
        if self.variance is not None and not (epoch == self.start_epoch and first > 0):
            self.variance.reset()
        net.surrogate.reset_stats()  # counted per epoch (LocalZO's non-zero fraction)
        if first > 0 and self.state_stats is not None:
            net.surrogate.load_stats_state(self.state_stats)
        return first, self.partial if epoch == self.start_epoch else Accumulator()

    def run_epoch(self, epoch: int) -> None:
        """Train one epoch batch by batch, then evaluate, checkpoint and log it."""
        cfg, train_set = self.cfg, self.train_set
        first, acc = self.start_epoch_state(epoch)
        n_batches = math.ceil(len(train_set) / cfg.batch_size)
        bar = Progress(n_batches, f"epoch {epoch + 1}/{cfg.epochs}", self.progress, first)
        counted = acc.count  # samples of the epoch trained before this process began it
        t0 = time.perf_counter()
        order = epoch_permutation(len(train_set), cfg.seed, epoch)
        batch_index = first
        for x, labels in train_set.batches(cfg.batch_size, cfg.T, permutation=order,
                                           start_batch=first, epoch=epoch):
            batch_index += 1
            self.seen += 1
            before = self.snapshot() if self.comm is None else None
            self.abandonable = before is not None
            started = time.perf_counter()
            try:
                stats = self.train_batch(x, labels, epoch, batch_index - 1)
            except BatchAbandoned:
                bar.close()
                self.abandon(before, epoch, batch_index - 1, acc)
            self.last_batch_s = time.perf_counter() - started
            if stats is None:
                continue
            if self.stop_after is not None and self.seen >= self.stop_after:
                self.stop.request()
            due = batch_index < n_batches and self.checkpoint_due(batch_index)
            if self.comm is not None:  # the global batch's sums; what all agree to do
                total = self.comm.sum([stats.loss_sum, stats.correct, stats.count,
                                       float(self.stop.requested), float(due)])
                stats = BatchStats(total[0], int(total[1]), int(total[2]))
                stopping, due = total[3] > 0, total[4] > 0
            else:
                stopping = self.stop.requested
            if self.first_loss is None:
                self.first_loss = stats.loss_sum / max(stats.count, 1)
            acc.add(stats)
            self.tb.log_batch(epoch, batch_index, stats.loss_sum / max(stats.count, 1),
                              100.0 * stats.correct / max(stats.count, 1))
            s = acc.summary()
            bar.update(batch_index, f"loss {s['loss']:.3f} acc {s['acc']:.1f}%",
                       samples=acc.count - counted)
            if stopping or due:
                self.tb.flush()  # the steps the checkpoint covers are on disk before it
                self.safe_checkpoint(epoch, batch_index, acc, last_batch=batch_index - 1)
            if stopping:
                bar.close()
                self.alert(f"stopped at epoch {epoch + 1}, batch {batch_index}; checkpoint "
                           f"saved. Continue with: {self.resume_cmd}")
                raise Interrupted(str(self.run_dir))
        bar.close()
        self.end_epoch(epoch, acc, time.perf_counter() - t0, batch_index)

    def snapshot(self) -> dict[str, Any] | None:
        """What a batch changes before its end, as it is at the batch's start: the RNG
        states, the rule's state (OPZO's M, updated every time step), the surrogate's
        counters, the network's buffers (batch norm's running averages), and with
        ``update="step"`` the weights and the optimizer. The first are
        small; the weights and the optimizer cost about what one of the batch's T optimizer
        steps does, so they are copied only when the last batch took long enough to be
        abandoned (over half of :data:`STOP_GRACE_S`); without them (None) the batch is not
        abandoned but ends, within about the grace period."""
        net = self.net
        step = self.cfg.update == "step" and self.cfg.method != "bptt"
        if step and self.last_batch_s < STOP_GRACE_S / 2:
            return None
        if self.snapshot_fits is None:  # decided once: copying a huge M every batch costs
            self.snapshot_fits = _tensor_bytes(self.learner.state_dict()) <= SNAPSHOT_MAX_BYTES
        if not self.snapshot_fits:
            return None  # the batch is not abandoned: a stop waits for its end
        snap: dict[str, Any] = {
            "rng": rng_state(self.device),
            "rule": copy.deepcopy(self.learner.state_dict()),
            "stats": copy.deepcopy(net.surrogate.stats_state()),
            # batch norm's running averages move at every training step
            "buffers": {k: b.detach().clone() for k, b in net.named_buffers()},
            "diag_rows": len(self.diag_rows)}
        if step:
            snap["model"] = copy.deepcopy(net.state_dict())
            snap["optimizer"] = copy.deepcopy(self.optimizer.state_dict())
        return snap

    def abandon(self, before: dict[str, Any] | None, epoch: int, batch: int,
                acc: Accumulator) -> None:
        """A stop request cut batch ``batch`` (0-based) short: put back the state of its
        start (``before``, :meth:`snapshot`), write the checkpoint there (the batch boundary,
        so resume is exact) and raise :class:`Interrupted`."""
        assert before is not None  # one process only (see loop)
        set_rng_state(before["rng"], self.device)
        self.learner.load_state_dict(before["rule"])
        if before["stats"] is not None:
            self.net.surrogate.load_stats_state(before["stats"])
        if "model" in before:
            self.net.load_state_dict(before["model"])
            self.optimizer.load_state_dict(before["optimizer"])
        with torch.no_grad():
            for k, b in self.net.named_buffers():
                b.copy_(before["buffers"][k])
        if len(self.diag_rows) > before["diag_rows"]:  # the abandoned batch's cosine row
            del self.diag_rows[before["diag_rows"]:]
            if self.main:
                rewrite_jsonl(self.diag_path, self.diag_rows)
        self.safe_checkpoint(epoch, batch, acc, last_batch=batch - 1)
        self.alert(f"stopped at epoch {epoch + 1} within batch {batch + 1}, which is "
                   f"discarded; checkpoint saved at the batch boundary before it. Continue "
                   f"with: {self.resume_cmd}")
        raise Interrupted(str(self.run_dir))

    def train_batch(self, x: Tensor, labels: Tensor, epoch: int, batch_index: int
                    ) -> BatchStats | None:
        """One batch: this process's rows of it, the diagnostics if due, the learner's
        update. None for a last batch too small to give every process a row (left out)."""
        cfg, comm = self.cfg, self.comm
        shard = None
        if comm is not None:
            if labels.shape[0] < self.world:
                self.log(f"epoch {epoch + 1}: the last batch ({labels.shape[0]} samples) is "
                         f"smaller than the {self.world} processes and is left out")
                return None
            shard = comm.shard(labels.shape[0])  # this process's rows of the global batch
            x = shard.rows(x, 0 if x.dim() == 2 else 1)
            labels = shard.rows(labels)
        x, labels = to_device(x, self.device), to_device(labels, self.device)
        if cfg.diagnostics and batch_index % cfg.diag_every == 0:
            cos = gradient_cosine(self.net, self.rule, x, labels, cfg.T, self.loss,
                                  cfg.diag_reference, trace=cfg.trace, gbar=cfg.otpe_gbar)
            row = {"epoch": epoch + 1, "batch": batch_index, "cosine": _round(cos)}
            self.diag_rows.append(row)
            if self.main:
                append_jsonl(self.diag_path, row)
            self.tb.log_cosine(epoch, batch_index + 1, _round(cos))
        variance = self.variance
        try:
            return self.learner.train_batch(
                x, labels, self.optimizer, T=cfg.T, shard=shard,
                on_grad=variance.update if variance is not None else None)
        except FloatingPointError as exc:
            raise self.diverged(exc, epoch, batch_index) from None

    def safe_checkpoint(self, epoch: int, batch: int, acc: Accumulator, last_batch: int
                        ) -> None:
        """:meth:`checkpoint`; a :class:`Diverged` naming ``last_batch`` (the batch just
        trained) if the weights are no longer finite."""
        try:
            self.checkpoint(epoch, batch, acc)
        except FloatingPointError as exc:
            raise self.diverged(exc, epoch, last_batch) from None

    def end_epoch(self, epoch: int, acc: Accumulator, train_time: float, batches: int
                  ) -> None:
        """The schedule's step, the test evaluation, the checkpoint, the epoch's rows of
        metrics.jsonl / diagnostics.jsonl and its log line."""
        cfg, net = self.cfg, self.net
        if self.scheduler is not None:
            with warnings.catch_warnings():  # resumed exactly at an epoch end
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
                self.scheduler.step()
        test = evaluate(net, self.test_set, cfg, self.loss, self.comm,
                        chip=self.chip.backend if self.chip is not None else None)
        train = acc.summary()
        row = {"epoch": epoch + 1, "train_loss": round(train["loss"], 6),
               "train_acc": round(train["acc"], 4), "test_loss": round(test["loss"], 6),
               "test_acc": round(test["acc"], 4), "firing_rate": test["firing_rate"],
               "synops": test["synops"], "synops_total": test["synops_total"],
               "lr": self.optimizer.param_groups[0]["lr"],
               "epoch_time_s": round(train_time, 3)}
        row.update(self.learner.epoch_metrics())
        row.update(net.surrogate.epoch_metrics())
        # the rows first into the checkpoint, then into the files: whatever stops the run
        # between the two, the resume rebuilds the files from the checkpoint
        self.metrics_rows.append(row)
        diag = None
        if self.variance is not None:
            diag = {"epoch": epoch + 1, "variance": self.variance.result(),
                    "relative_variance": self.variance.relative()}
            self.diag_rows.append(diag)
        self.tb.log_epoch(epoch, row, net, self.rule,
                          diag and {k: v for k, v in diag.items() if k != "epoch"})
        self.tb.flush()  # before the checkpoint: a resume purges what comes after it
        self.safe_checkpoint(epoch + 1, 0, Accumulator(), last_batch=batches - 1)
        if self.main:
            append_jsonl(self.metrics_path, row)
            if diag is not None:
                append_jsonl(self.diag_path, diag)
        sparsity = (f"  ψ≠0 {row['nonzero_grad_fraction']:.1%}"
                    if "nonzero_grad_fraction" in row else "")
        self.log(f"epoch {epoch + 1:3d}/{cfg.epochs}  train loss {train['loss']:.4f} "
                 f"acc {train['acc']:6.2f}%  test acc {test['acc']:6.2f}%  "
                 f"({train_time:.1f}s){sparsity}")
        if (self.first_loss is not None and train["loss"] > 1.5 * self.first_loss
                and train["loss"] > self.first_loss + 0.5):
            self.alert(f"warning: the training loss of epoch {epoch + 1} "
                       f"({train['loss']:.4g}) is far above the first batch's "
                       f"({self.first_loss:.4g}): the learning rate ({cfg.lr:g}) may be too high")

    def finish(self, kernels: str) -> dict[str, Any]:
        """summary.json (process 0), with every process's peak memory."""
        cfg, comm = self.cfg, self.comm
        peak = peak_memory_mb(self.device)
        peaks = [peak] if comm is None else comm.gather_object(peak)
        summary: dict[str, Any] = {}
        finished_before = self.start_epoch >= cfg.epochs
        summary_path = self.run_dir / "summary.json"
        if self.main and finished_before and summary_path.is_file():
            try:
                summary = json.loads(summary_path.read_text())
            except ValueError:
                summary = {}
        if self.main and not summary:
            rows = self.metrics_rows
            summary = {
                "method": cfg.method, "dataset": cfg.dataset, "epochs": cfg.epochs,
                "final_test_acc": rows[-1]["test_acc"] if rows else None,
                "best_test_acc": max(r["test_acc"] for r in rows) if rows else None,
                "final_train_acc": rows[-1]["train_acc"] if rows else None,
                "firing_rate": rows[-1]["firing_rate"] if rows else None,
                "synops_total": rows[-1].get("synops_total") if rows else None,
                "wall_time_s": self.elapsed() if not finished_before else self.time_before,
                "run_dir": str(self.run_dir),
                "opzo_version": __version__,
                "git_commit": git_commit(),
                "torch": torch.__version__,
                "device": str(self.device),
                "world_size": self.world,
                "kernels": kernels,
                "peak_memory_mb": peaks,
                "data": self.data,
            }
            atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
            if rows:
                self.log(f"final test accuracy {summary['final_test_acc']:.2f}% "
                         f"(best {summary['best_test_acc']:.2f}%); run folder: {self.run_dir}")
        if comm is not None:
            summary = comm.broadcast_object(summary)  # type: ignore[assignment]
        return summary


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.dataset}-{cfg.method}-{stamp}"
