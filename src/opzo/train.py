"""The training run: data, network, rule, optimizer, epochs, evaluation, run folder, resume.

A run folder holds ``config.json`` (the resolved options), ``metrics.jsonl`` (one JSON line
per epoch), ``summary.json`` (written at the end) and ``checkpoint.pt`` (written atomically
after every epoch and on Ctrl-C / SIGTERM). ``resume`` continues from the checkpoint and
yields the same numbers as an uninterrupted run: the data order of each epoch is a function
of (seed, epoch), a stop request (SIGINT, SIGTERM) takes effect at the end of the batch in
progress, so the checkpoint is always at a batch boundary, and it carries the RNG states
(CPU and, on a GPU, CUDA; one per process of a distributed run), so noise and dropout
continue identically. Exactness is promised on the same device (and number of processes).

Devices and processes: ``cfg.device`` (``auto``: CUDA when available) holds the model, the
rule's state and every batch (moved from pinned CPU memory); under ``torchrun`` (or
``opzo train --nproc N``) every process trains on its shard of each global batch and the
gradients are summed (:mod:`opzo.distributed`); process 0 alone writes the run folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import __version__, native
from .bptt import BPTTLearner
from .config import TrainConfig
from .data import DatasetError, Encoder, epoch_permutation, load_dataset, make_encoder
from .data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CUTOUT_SIZE,
    load_cifar,
)
from .data.neuromorphic import (
    CIFAR10DVS,
    DVSGESTURE_CLASSES,
    DVSGesture,
    NMNISTFolder,
    SpikingHeidelbergDigits,
    SpikingSpeechCommands,
    cached_mean_std,
)
from .data.randman import otpe_preset
from .data.sources import ColorImageSource, FrameSource, ImageSource, SequenceSource
from .diagnostics import GradientVariance, gradient_cosine
from .distributed import Communicator, launched_by_torchrun, local_rank
from .energy import SynOpsCounter
from .learner import BatchStats, OnlineLearner, evaluate_batch
from .localzo import SparsityStats
from .losses import InstantLoss, MaxOverTime
from .network import SpikingMLP, SpikingNet
from .neurons import make_neuron
from .rules import DFA, DKP, OPZO, ZO, LocalLearning, NoiseSampler, SpatialBP, SpatialRule
from .surrogate import Surrogate, make_surrogate

CHECKPOINT = "checkpoint.pt"


def build_surrogate(cfg: TrainConfig) -> Surrogate:
    """The local derivative ψ of the config, with its parameters."""
    if cfg.surrogate == "sigmoid":
        return make_surrogate("sigmoid", a=cfg.sigmoid_a)
    if cfg.surrogate == "fast-sigmoid":
        return make_surrogate("fast-sigmoid", k=cfg.fast_sigmoid_k)
    # localzo, or sparsegrad (the same distribution's expected surrogate, thresholded)
    return make_surrogate(cfg.surrogate, delta=cfg.localzo_delta, m=cfg.localzo_m,
                          distribution=cfg.localzo_dist)


def build_network(cfg: TrainConfig, input_shape: int | Sequence[int], num_classes: int
                  ) -> SpikingNet:
    """The SNN of the config: inputs → hidden layers of the config's neuron model → readout.

    ``input_shape``: the source's ``input_shape`` ((1, H, W) for images, (C, H, W) for
    frames, (F,) for vectors; a bare int is (F,)). With ``cfg.net`` the network of that string
    (scaled by ``cfg.width``), else the fully connected net of ``cfg.hidden``.
    """
    surrogate = build_surrogate(cfg)
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(input_shape)
    neuron = make_neuron(cfg.neuron, lam=cfg.lif_lambda, v_th=cfg.v_th, reset=cfg.reset,
                         syn_lambda=cfg.syn_lambda, adapt_beta=cfg.adapt_beta,
                         adapt_lambda=cfg.adapt_lambda)
    net: SpikingNet
    if cfg.net is not None:
        net = SpikingNet(cfg.net, shape, num_classes, width=cfg.width, neuron=neuron,
                         surrogate=surrogate, dropout=cfg.dropout, kernels=cfg.kernels)
    else:
        net = SpikingMLP([math.prod(shape), *cfg.hidden, num_classes], neuron=neuron,
                         surrogate=surrogate, dropout=cfg.dropout, kernels=cfg.kernels)
    if cfg.hw_noise:  # the deployed chip's noise on every current (opzo.hardware)
        from .hardware import attach

        attach(net, cfg.hw_noise, cfg.hw_noise_kind, cfg.hw_seed)
    if cfg.init_scale != 1.0:
        with torch.no_grad():
            for layer in net.hidden:
                # a standardized conv weight ignores its scale: scale its gain instead
                gain = getattr(layer, "gain", None)
                (gain if gain is not None else layer.weight).mul_(cfg.init_scale)
    return net


def load_weights(net: SpikingNet, path: str | Path) -> str:
    """Copy trained weights into ``net``: from a run folder, its ``checkpoint.pt`` (the
    ``model`` entry) or a file holding a bare state dict. Only the weights: no optimizer,
    schedule or rule state. Raises ValueError naming the first layer whose shape (or
    presence) differs, with both shapes. Returns a description of what was loaded."""
    source = Path(path)
    file = source / CHECKPOINT if source.is_dir() else source
    if not file.is_file():
        raise FileNotFoundError(f"cannot start from {source}: {file} does not exist (give a "
                                "run folder of 'opzo train', its checkpoint.pt, or a .nir file)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:  # damaged or not a torch file
        raise ValueError(f"{file} cannot be read as a checkpoint ({type(exc).__name__}: "
                         f"{str(exc)[:120]})") from None
    weights = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise ValueError(f"{file} holds no network weights (expected an opzo checkpoint or a "
                         "state dict)")
    own = net.state_dict()
    for name, value in own.items():
        if name not in weights:
            raise ValueError(f"{file} does not fit this network: it has no {name} (this "
                             f"network: {net.describe()}); give the --net / --hidden of the "
                             "run it comes from")
        if tuple(weights[name].shape) != tuple(value.shape):
            raise ValueError(f"{file} does not fit this network: {name} has shape "
                             f"{tuple(weights[name].shape)} there and {tuple(value.shape)} "
                             f"here ({net.describe()}); give the --net / --hidden of the run "
                             "it comes from")
    extra = [k for k in weights if k not in own]
    if extra:
        raise ValueError(f"{file} does not fit this network: it has {extra[0]}, which this "
                         f"network ({net.describe()}) does not; give the --net / --hidden of "
                         "the run it comes from")
    net.load_state_dict(weights)
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return f"{file}" + (f" (epoch {epoch})" if epoch is not None else "")


def _is_nir(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".nir"


def _network_from_nir(cfg: TrainConfig, path: str, input_shape: Sequence[int],
                      classes: int) -> SpikingNet:
    """The network of a NIR file, with the config's training-time options (surrogate,
    dropout, kernels); its input and outputs must fit the dataset."""
    from .nir import load_nir_network

    net = load_nir_network(path, kernels=cfg.kernels)
    net.surrogate = build_surrogate(cfg)
    net.dropout = float(cfg.dropout)
    if math.prod(net.input_shape) != math.prod(input_shape) or net.num_outputs != classes:
        raise ValueError(f"the network of {path} ({net.describe()}, {net.num_outputs} outputs) "
                         f"does not fit {cfg.dataset}: inputs {tuple(input_shape)}, {classes} "
                         "classes")
    if tuple(net.input_shape) != tuple(input_shape) and len(net.input_shape) > 1:
        raise ValueError(f"the network of {path} takes inputs of shape {net.input_shape}; "
                         f"{cfg.dataset} gives {tuple(input_shape)}")
    if cfg.hw_noise:
        from .hardware import attach

        attach(net, cfg.hw_noise, cfg.hw_noise_kind, cfg.hw_seed)
    return net


def build_learner(cfg: TrainConfig, net: SpikingNet, loss: InstantLoss,
                  comm: Communicator | None = None) -> OnlineLearner | BPTTLearner:
    """The online learner with the config's rule, or the BPTT learner for ``bptt`` (with
    ``comm``: data parallel, gradients summed over the processes). Build it after moving
    ``net`` to its device: the rule's state is made where the network's weights are."""
    if cfg.method == "bptt":
        return BPTTLearner(net, loss, readout=make_readout(cfg), detach_reset=cfg.detach_reset,
                           comm=comm)
    return OnlineLearner(net, build_rule(cfg), loss, trace=cfg.trace, update=cfg.update,
                         gbar=cfg.otpe_gbar, comm=comm)


def resolve_device(name: str) -> torch.device:
    """The torch device of the ``device`` option. ``auto``: CUDA when available, else the
    CPU; under torchrun ``auto`` and ``cuda`` mean this process's GPU (``LOCAL_RANK``).
    Raises ValueError, saying what is available, for a device this machine does not have."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: torch {torch.__version__} sees no CUDA GPU "
                             "here (a CPU-only build, or no driver); use --device cpu or auto")
        if name == "cuda":
            name = f"cuda:{local_rank() if launched_by_torchrun() else 0}"
        index = int(name.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} "
                             f"CUDA GPU(s), cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if name == "mps" and not (hasattr(torch.backends, "mps")
                              and torch.backends.mps.is_available()):
        raise ValueError("device 'mps': the Apple GPU backend is not available here; use "
                         "--device cpu or auto")
    return torch.device(name)


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A batch tensor on ``device``: on CUDA copied from pinned (page-locked) CPU memory
    without blocking the host; on the CPU unchanged."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def make_readout(cfg: TrainConfig) -> MaxOverTime | None:
    """The max-over-time readout of ``readout = "max"``; None for the Σ_t o[t] readout."""
    return MaxOverTime(cfg.readout_leak) if cfg.readout == "max" else None


def build_rule(cfg: TrainConfig) -> SpatialRule:
    """The spatial credit rule of the config, with its options (wrapped in
    :class:`~opzo.rules.LocalLearning` for ``local_learning`` / ``igl_layer``)."""
    rule = _global_rule(cfg)
    if cfg.local_learning or cfg.igl_layer is not None:
        igl = None if cfg.igl_layer is None else cfg.igl_layer - 1  # the option counts from 1
        return LocalLearning(rule, cfg.ll_scale, local=cfg.local_learning, igl_layer=igl,
                             igl_scale=cfg.igl_scale)
    return rule


def _global_rule(cfg: TrainConfig) -> SpatialRule:
    chip = bool(cfg.hw_noise) and cfg.hw_noise_kind == "gaussian"

    def noise() -> NoiseSampler:
        if chip:  # the chip's noise is the perturbation (OPZO paper Table 4's setting)
            return NoiseSampler(alpha=cfg.hw_noise, distribution="gaussian",
                                position="before", antithetic=False, rng=cfg.noise_rng)
        return NoiseSampler(alpha=cfg.alpha, alpha_final=cfg.alpha_final,
                            distribution=cfg.noise, position=cfg.noise_position,
                            antithetic=cfg.antithetic, rng=cfg.noise_rng)

    if cfg.method == "opzo":
        factor = False if chip else (bool(cfg.alpha_factor) if cfg.alpha_factor is not None
                                     else False)
        return OPZO(noise(), lambda_m=cfg.lambda_m, alpha_factor=factor)
    if cfg.method == "zo":
        return ZO(noise(), alpha_factor=True if cfg.alpha_factor is None else cfg.alpha_factor)
    if cfg.method == "dfa":
        return DFA()
    if cfg.method == "dkp":
        return DKP(lr=cfg.feedback_lr, weight_decay=cfg.weight_decay, lam=cfg.lif_lambda)
    if cfg.method == "bp":
        return SpatialBP()
    raise ValueError(f"unknown method {cfg.method!r}")


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The config's optimizer; AdamW uses the fused kernel on CPU where available (~10x faster
    than the per-tensor loop)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamax":
        return torch.optim.Adamax(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int, prefix: str, enabled: bool = True) -> None:
        self.total = total
        self.prefix = prefix
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
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


#: Randman (the OTPE paper's task) is generated from this seed, 1000 samples per class; the
#: shuffled draw is split into the first 8000 samples for training and the last 2000 for
#: testing. (A second draw with another sample seed is not a test set of the same task: each
#: class is min-max standardised over its own draw, which moves its spike times.)
RANDMAN_SEED, RANDMAN_TRAIN = 0, 8000


@functools.lru_cache(maxsize=2)
def _randman(time_code: bool) -> tuple[Tensor, Tensor]:
    return otpe_preset(time_code=time_code, seed=RANDMAN_SEED)


#: frame size of DVS128 Gesture and CIFAR10-DVS (OPZO paper appendix C.3.1: 48x48)
EVENT_FRAME_SIZE = 48
#: CIFAR10-DVS samples per class in the training split (the common 9000/1000 split); tests
#: lower it to split a handful of files
CIFAR10DVS_TRAIN_PER_CLASS = 900
#: SHD / SSC: the T time bins cover the first second of each recording (later spikes dropped)
HEIDELBERG_DURATION_S = 1.0
#: per-channel normalisation of the colour image datasets
CIFAR_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}

Source = ImageSource | ColorImageSource | FrameSource | SequenceSource


def _cifar10dvs(cfg: TrainConfig, split: str) -> FrameSource:
    """CIFAR10-DVS as the OPZO paper preprocesses it (appendix C.3.1): T frames of equal event
    counts, 48x48, the 9000/1000 split, normalised by the global mean and std of all frames of
    the training split, random crop (4 pixels of padding) on the training split."""
    assert cfg.data_root is not None
    common = dict(n_frames=cfg.T, size=EVENT_FRAME_SIZE,
                  train_per_class=CIFAR10DVS_TRAIN_PER_CLASS)
    mean, std = cached_mean_std(CIFAR10DVS(cfg.data_root, "train", **common))
    if not std > 0:
        raise DatasetError(f"CIFAR10-DVS training frames in {cfg.data_root} are all equal "
                           f"(mean {mean}, std 0): cannot normalise them")
    augment = split == "train" and cfg.augment
    # the reader's own generator is replaced per batch by FrameSource (augment_seed); a fixed
    # one here keeps the first read (the frame shape) off torch's global generator
    data = CIFAR10DVS(cfg.data_root, split, augment=augment, mean=mean, std=std,
                      generator=torch.Generator().manual_seed(cfg.seed), **common)
    return FrameSource(data, classes=10, augment_seed=cfg.seed if augment else None)


def _heidelberg(cfg: TrainConfig, split: str) -> FrameSource:
    """SHD / SSC: the 700 input units' spike counts in T bins over the first second."""
    assert cfg.data_root is not None
    cls = SpikingHeidelbergDigits if cfg.dataset == "shd" else SpikingSpeechCommands
    if Path(cfg.data_root).expanduser().is_file():
        raise DatasetError(
            f"{cls.pretty} data_root must be the folder holding {cls.prefix}_train.h5 and "
            f"{cls.prefix}_test.h5, not the file {cfg.data_root}")
    data = cls(cfg.data_root, n_bins=cfg.T, duration_s=HEIDELBERG_DURATION_S, split=split)
    return FrameSource(data, classes=cls.n_classes)


def make_source(cfg: TrainConfig, split: str) -> Source:
    """The config's dataset split as a source of network inputs (limits applied).

    Preprocessing as in the OPZO paper, appendix C.3.1 (N-MNIST, DVS Gesture, CIFAR10-DVS,
    CIFAR-10/100) and the OTPE paper, appendix A.1 (SHD binned in time steps); event datasets
    are cut into ``cfg.T`` frames or bins. Datasets are read from ``cfg.data_root`` and never
    downloaded: a missing file raises :class:`~opzo.data.DatasetError` naming it.
    """
    source: Source
    if cfg.dataset.startswith("randman"):
        spikes, labels = _randman(cfg.dataset == "randman-time")
        part = slice(None, RANDMAN_TRAIN) if split == "train" else slice(RANDMAN_TRAIN, None)
        source = SequenceSource(spikes[:, part], labels[part], classes=10)
    elif cfg.dataset == "nmnist":
        assert cfg.data_root is not None
        # the paper's preprocessing (appendix C.3.1): 3 ms frames, the first T of them
        source = FrameSource(
            NMNISTFolder(cfg.data_root, split, bin_us=3000, n_frames=cfg.T), classes=10)
    elif cfg.dataset == "dvs-gesture":
        assert cfg.data_root is not None
        # appendix C.3.1: the recording integrated into T (paper: 20) frames, 48x48
        source = FrameSource(DVSGesture(cfg.data_root, split, n_frames=cfg.T,
                                        size=EVENT_FRAME_SIZE), classes=DVSGESTURE_CLASSES)
    elif cfg.dataset == "cifar10-dvs":
        source = _cifar10dvs(cfg, split)
    elif cfg.dataset in ("shd", "ssc"):
        source = _heidelberg(cfg, split)
    elif cfg.dataset in CIFAR_STATS:
        assert cfg.data_root is not None
        images, labels = load_cifar(cfg.dataset, cfg.data_root, split)
        mean, std = CIFAR_STATS[cfg.dataset]
        augment = split == "train" and cfg.augment
        source = ColorImageSource(
            images, labels, classes=10 if cfg.dataset == "cifar10" else 100,
            encoder=Encoder(cfg.encoding, tau=cfg.latency_tau, theta=cfg.latency_theta),
            mean=mean, std=std, augment_seed=cfg.seed if augment else None,
            crop_padding=4, cutout_size=CUTOUT_SIZE[cfg.dataset])
    else:
        source = ImageSource(load_dataset(cfg.dataset, cfg.data_root, split),
                             make_encoder(cfg.encoding, cfg.dataset, cfg.latency_tau,
                                          cfg.latency_theta))
    limit = cfg.limit_train if split == "train" else cfg.limit_test
    return source.head(limit) if limit else source


def evaluate(net: SpikingNet, source: Source, cfg: TrainConfig, loss: InstantLoss,
             comm: Communicator | None = None) -> dict:
    """Test loss, accuracy, firing rates and synaptic operations per sample (per hidden layer
    and in total, :mod:`opzo.energy`) of ``net`` on ``source`` (no noise, no dropout), on the
    network's device. With ``comm`` each process evaluates its contiguous share of the
    samples and the sums are added over the processes."""
    device = next(net.parameters()).device
    acc = Accumulator()
    synops = SynOpsCounter(net)
    if comm is not None:
        share = comm.shard(len(source))
        source = source.part(share.lo, share.hi)
    if len(source):
        for x, labels in source.batches(cfg.eval_batch_size, cfg.T):
            acc.add(evaluate_batch(net, to_device(x, device), to_device(labels, device), loss,
                                   T=cfg.T, readout=make_readout(cfg), synops=synops))
    if comm is not None:
        acc.all_reduce(comm, len(net.hidden))
        synops.all_reduce(comm)
    energy = synops.result()
    return {**acc.summary(), "synops": [round(v, 1) for v in energy["synops"]],
            "synops_total": round(energy["synops_total"], 1)}


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (``kill``) while training: the first asks the run to stop
    at the end of the batch in progress (so the checkpoint is at a batch boundary and resume
    is exact); a second one stops at once (the last checkpoint written stands).

    Handlers are installed from the main thread only, and put back by :meth:`restore`.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log=print) -> None:
        self.requested = False
        self.log = log
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log(f"\n{signal.Signals(signum).name}: stopping at the end of this batch (send "
                 "it again to stop at once)")

    def request(self) -> None:
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def _kernels_in_use(cfg: TrainConfig, device: torch.device | None = None) -> str:
    """"native" or "torch": what the network's step and dropout actually run on (the native
    library may be asked for and unavailable; the reason is then given; off the CPU the
    step runs on torch's ops). The noise's generator is the separate ``noise_rng``."""
    if device is not None and device.type != "cpu":
        return f"torch ({device.type}; the native kernels are the CPU path)"
    if cfg.kernels == "torch":
        return "torch"
    if native.available():
        return "native"
    return f"torch (native unavailable: {native.error()})"


def _git_commit() -> str | None:
    """The commit of the source tree opzo runs from, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _append_jsonl(path: Path, row: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_jsonl(path: Path, log=print) -> list[dict]:
    """The rows of a JSON-lines file of a run folder. A torn last line (an append cut short by
    a kill) is dropped and the file repaired; any other unreadable line is a RunError naming
    the file and the line."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows: list[dict] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if i == len(lines) - 1:
                log(f"{path}: dropped a torn last line (an append cut short): {line[:60]!r}")
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
                break
            raise RunError(f"{path}, line {i + 1}: not a JSON row ({exc}); repair or remove "
                           "that line") from None
        rows.append(row)
    return rows


def _truncate_jsonl(path: Path, keep, log=print) -> None:
    """Keep only the rows ``keep`` accepts (after repairing a torn last line)."""
    if path.exists():
        rows = [r for r in read_jsonl(path, log) if keep(r)]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in d.items()}


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """This process's peak resident memory (MiB; Linux's ru_maxrss) and, on CUDA, the peak
    of torch's allocations on the device."""
    out: dict[str, float] = {}
    try:
        import resource

        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["rss"] = round(rss_kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
    except (ImportError, OSError):
        pass
    if device.type == "cuda":
        out["cuda"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


class Interrupted(Exception):
    """Raised after Ctrl-C / SIGTERM once the checkpoint is safely on disk."""


class RunError(RuntimeError):
    """A run folder cannot be used as asked (taken by another process, holding another run,
    damaged files); the message names the file and says what to do."""


class Diverged(FloatingPointError):
    """The loss or the weights became NaN / infinite; the last good checkpoint stands."""


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``RUN/.lock``, which holds the
    writer's PID. The lock dies with its process (a SIGKILL leaves no stale lock). Where
    ``fcntl`` does not exist (Windows) no lock is taken."""

    NAME = ".lock"

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / self.NAME
        self.fh = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the life of the run
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RunError(f"{run_dir} is in use by another opzo process (PID {holder}); wait "
                           "for it to finish (or stop it), or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self.fh = fh

    def release(self) -> None:
        if self.fh is not None:
            self.fh.close()  # closing the file releases the lock
            self.fh = None


#: the files that make a folder a run folder: a new run never reuses one without overwrite
RUN_FILES = ("config.json", "metrics.jsonl", CHECKPOINT, "summary.json", "diagnostics.jsonl")


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> RunLock:
    """Create ``run_dir``, take its lock, and refuse to start a new run over an old one."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunError(f"cannot use {run_dir} as the run folder: it is a file; choose another "
                       "--out") from None
    except OSError as exc:
        raise RunError(f"cannot create the run folder {run_dir}: {exc.strerror or exc}; "
                       "choose another --out") from None
    try:
        lock = RunLock(run_dir)
    except OSError as exc:
        raise RunError(f"cannot write to the run folder {run_dir}: {exc.strerror or exc}; "
                       "choose another --out") from None
    if not resume:
        present = [f for f in RUN_FILES if (run_dir / f).exists()]
        if present and not overwrite:
            lock.release()
            raise RunError(f"{run_dir} already holds a run ({', '.join(present)}); continue it "
                           f"with --resume {run_dir}, replace it with --overwrite, or choose "
                           "another --out")
        for name in present:  # --overwrite: nothing of the old run may be resumed later
            (run_dir / name).unlink()
    return lock


def data_fingerprint(source: Source, name: str) -> dict[str, Any]:
    """What identifies a dataset split: its name, size, input shape and a hash of its first
    1000 labels (MNIST and Fashion-MNIST share file names and shapes, not labels)."""
    labels = source.labels_head(1000)
    digest = hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
    return {"dataset": name, "samples": len(source),
            "input_shape": list(source.input_shape), "labels_sha": digest}


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """The checkpoint's dict with its tensors on ``device``; a RunError naming the file if it
    is empty, truncated, damaged or not an opzo checkpoint."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # EOFError, UnpicklingError, RuntimeError (zip), ...
        size = path.stat().st_size if path.exists() else 0
        raise RunError(f"{path} cannot be read ({size} bytes; {type(exc).__name__}: "
                       f"{str(exc)[:120]}): the file is damaged or not a checkpoint") from None
    needed = ("model", "optimizer", "epoch", "batch", "config")
    missing = [k for k in needed if not isinstance(state, dict) or k not in state]
    if missing:
        raise RunError(f"{path} is not an opzo checkpoint (it lacks {', '.join(missing)})")
    return state


#: options that may differ between a run's checkpoint and its resume: where it continues
#: (device, threads) and the learning rate (to continue a diverged run more gently)
RESUME_CHANGES = ("device", "threads", "lr", "out")


def _edited_options(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    now = cfg.to_dict()
    return [f"{k} ({saved[k]!r} -> {now[k]!r})" for k in now
            if k in saved and k not in RESUME_CHANGES and saved[k] != now[k]]


def _rng_state(device: torch.device) -> dict[str, Tensor | None]:
    """This process's generator states: torch's CPU generator and, on CUDA, the device's."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict[str, Tensor | None], device: torch.device) -> None:
    cpu = state["cpu"]
    assert cpu is not None
    torch.set_rng_state(cpu.cpu())
    cuda = state.get("cuda")
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda.cpu(), device)


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
                f"of this run (it failed or was killed; its own message says why): {exc}. "
                f"The last checkpoint in {run_dir} stands: continue with opzo train "
                f"--resume {run_dir} --nproc {comm.world_size}") from None
        raise


class _Run:
    """One training run (one process of it): the pieces, the epoch loop, the checkpoints."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, device: torch.device,
                 comm: Communicator | None, progress: bool, log) -> None:
        self.cfg, self.run_dir, self.device, self.comm = cfg, run_dir, device, comm
        self.main = comm is None or comm.is_main
        self.world = 1 if comm is None else comm.world_size
        # process 0 alone speaks and writes
        self.log = log if self.main else (lambda *_a, **_k: None)
        self.progress = progress and self.main
        self.ckpt_path = run_dir / CHECKPOINT
        self.metrics_path = run_dir / "metrics.jsonl"
        self.diag_path = run_dir / "diagnostics.jsonl"

    # ---- building -------------------------------------------------------------------------
    def build(self, resume: bool) -> None:
        cfg, device, comm = self.cfg, self.device, self.comm
        torch.manual_seed(cfg.seed)
        shape, classes = self.train_set.input_shape, self.train_set.classes
        if cfg.init_from and _is_nir(cfg.init_from):  # the network itself comes from the file
            net = _network_from_nir(cfg, cfg.init_from, shape, classes)
            self.log(f"network from {cfg.init_from}: {net.describe()}, "
                     f"{net.neuron.describe()} (the config's net, hidden and neuron options "
                     "are not used)")
        else:
            net = build_network(cfg, shape, classes)
            if cfg.init_from and not resume:  # a resume takes its weights from the checkpoint
                self.log(f"starting from the weights of {load_weights(net, cfg.init_from)}")
        net = net.to(device)
        self.net = net
        self.loss = InstantLoss(cfg.loss, cfg.gamma)
        self.learner = build_learner(cfg, net, self.loss, comm)
        self.rule = rule = self.learner.rule
        if comm is not None:  # the same start everywhere, whatever each process computed
            comm.broadcast_([*net.parameters(), *net.buffers(),
                             *(rule.parameters() if rule is not None else [])])
        self.variance = GradientVariance(net) if cfg.diagnostics else None
        # the rule's own parameters (local readouts) learn with the model's optimizer
        extra = rule.parameters() if rule is not None else []
        self.optimizer = make_optimizer([*net.parameters(), *extra], cfg)
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer,
                                                                     T_max=cfg.epochs)
                          if cfg.schedule == "cosine" else None)

    # ---- the run --------------------------------------------------------------------------
    def train(self, resume: bool, overwrite: bool, stop_after: int | None) -> dict[str, Any]:
        cfg = self.cfg
        # the data first: a missing dataset must not leave an empty run folder behind
        self.train_set = make_source(cfg, "train")
        self.test_set = make_source(cfg, "test")
        if len(self.train_set) < self.world:
            raise ValueError(f"{len(self.train_set)} training samples cannot be shared by "
                             f"{self.world} processes: use fewer processes (--nproc)")
        lock = _prepare_run_dir(self.run_dir, resume, overwrite) if self.main else None
        try:
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
                self.metrics_path.write_text("")
                if cfg.diagnostics:
                    self.diag_path.write_text("")
            if self.main:
                atomic_write_text(self.run_dir / "config.json",
                                  json.dumps(cfg.to_dict(), indent=2) + "\n")
            return self.loop(stop_after)
        finally:
            if lock is not None:
                lock.release()

    def restore(self) -> None:
        """Continue from the checkpoint (see the module docstring)."""
        cfg, run_dir, comm, device = self.cfg, self.run_dir, self.comm, self.device
        if not self.ckpt_path.is_file():
            raise FileNotFoundError(
                f"cannot resume: {self.ckpt_path} does not exist (no epoch finished yet?). "
                "Start the run again without --resume.")
        state = _load_checkpoint(self.ckpt_path, device)
        edited = _edited_options(state["config"], cfg)
        if edited:
            raise RunError(
                f"{run_dir / 'config.json'} differs from the run's checkpoint in "
                f"{', '.join(edited)}: a resumed run continues with the settings it started "
                "with (only --device, --threads and --lr may change); undo the edit or start "
                "a new run")
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world:
            raise ValueError(
                f"{run_dir} was trained by {saved_world} process(es) and this resume has "
                f"{self.world}: the shards of every batch, and so the numbers, depend on it. "
                f"Resume with --nproc {saved_world} (or torchrun --nproc_per_node "
                f"{saved_world}), or start a new run")
        saved_device = state.get("device", "cpu")
        if saved_device != str(device):
            warnings.warn(f"{run_dir} was trained on {saved_device} and resumes on {device}: "
                          "it continues, but resume is exact only on the same device "
                          "(other kernels, other random streams)", stacklevel=2)
        try:
            self.net.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if self.rule is not None:
                self.rule.load_state_dict(state["rule"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise RunError(f"{self.ckpt_path} does not fit the network and rule of "
                           f"{run_dir / 'config.json'}: {str(exc)[:200]}") from None
        saved_lr = float(state["config"].get("lr", cfg.lr))
        if cfg.lr != saved_lr:  # continue with another learning rate, schedule kept
            ratio = cfg.lr / saved_lr if saved_lr else 0.0
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * ratio if saved_lr else cfg.lr
                if "initial_lr" in group:
                    group["initial_lr"] = cfg.lr
            if self.scheduler is not None:
                self.scheduler.base_lrs = [cfg.lr for _ in self.scheduler.base_lrs]
            self.log(f"learning rate {saved_lr:g} -> {cfg.lr:g} from here on")
        rng = state.get("rng_states") or [{"cpu": state["rng"], "cuda": None}]
        _set_rng_state(rng[0 if comm is None else comm.rank], device)
        self.start_epoch, self.start_batch = state["epoch"], state["batch"]
        self.partial = Accumulator(**state["partial"])
        self.state_stats = state.get("surrogate_stats")
        self.time_before = float(state.get("wall_time_s", 0.0))
        self.first_loss = state.get("first_loss")
        if self.variance is not None and state.get("variance"):
            v = self.variance
            v.count, v.mean, v.m2 = state["variance"]
        if self.main:  # keep only the lines written before the checkpoint's position
            e, b = self.start_epoch, self.start_batch
            _truncate_jsonl(self.metrics_path, lambda r: r["epoch"] <= e, self.log)
            _truncate_jsonl(self.diag_path, lambda r: r["epoch"] <= e or (
                r["epoch"] == e + 1 and "batch" in r and r["batch"] < b), self.log)
        if self.start_epoch >= cfg.epochs:
            self.log(f"{run_dir} has finished all {cfg.epochs} epochs: nothing to resume")
        else:
            self.log(f"resuming {run_dir} at epoch {self.start_epoch + 1}, batch "
                     f"{self.start_batch}")

    def checkpoint(self, epoch: int, batch: int, acc: Accumulator) -> None:
        """Every process's RNG state, and the rest from process 0 (the same everywhere).
        Weights that are not finite are never saved: the last good checkpoint stands."""
        net, rule, comm = self.net, self.rule, self.comm
        params = [*net.parameters(), *(rule.parameters() if rule is not None else [])]
        if not all(bool(torch.isfinite(p.detach().sum())) for p in params):
            raise FloatingPointError("the weights became NaN/inf")
        rng = _rng_state(self.device)
        rng_states = [rng] if comm is None else comm.gather_object(rng)
        self.last_checkpoint = time.monotonic()
        if not self.main:
            return
        v = self.variance
        try:
            atomic_save({
                "model": net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None
                else None,
                "rule": rule.state_dict() if rule is not None else None,
                "variance": (v.count, v.mean, v.m2) if v is not None else None,
                "rng": torch.get_rng_state(),
                "rng_states": rng_states,
                "device": str(self.device),
                "world_size": self.world,
                "epoch": epoch, "batch": batch,
                "partial": acc.__dict__.copy(),
                "surrogate_stats": (net.surrogate.stats_state() if batch and isinstance(
                    net.surrogate, SparsityStats) else None),
                "wall_time_s": self.elapsed(),
                "first_loss": self.first_loss,
                "data": self.data,
                "config": self.cfg.to_dict(),
            }, self.ckpt_path)
        except OSError as exc:
            raise RunError(f"cannot write the checkpoint {self.ckpt_path}: "
                           f"{exc.strerror or exc}; the last checkpoint written stands") from None

    def elapsed(self) -> float:
        """Training time of this run so far, over all the processes that ran it."""
        return round(self.time_before + time.perf_counter() - self.t_start, 2)

    def checkpoint_due(self, batch_index: int) -> bool:
        """A mid-epoch checkpoint after this batch (every ``checkpoint_every`` batches, or
        ``checkpoint_minutes`` after the last one)."""
        cfg = self.cfg
        if cfg.checkpoint_every and batch_index % cfg.checkpoint_every == 0:
            return True
        return bool(cfg.checkpoint_minutes) and (
            time.monotonic() - self.last_checkpoint > 60.0 * cfg.checkpoint_minutes)

    def loop(self, stop_after: int | None) -> dict[str, Any]:
        cfg, comm, log, net, rule = self.cfg, self.comm, self.log, self.net, self.rule
        train_set, test_set, device = self.train_set, self.test_set, self.device
        variance, optimizer, scheduler = self.variance, self.optimizer, self.scheduler
        n_batches = math.ceil(len(train_set) / cfg.batch_size)
        kernels = _kernels_in_use(cfg, device)
        where = f"{device}" + (f" x {self.world} processes" if self.world > 1 else "")
        log(f"opzo: {cfg.method} on {cfg.dataset} ({len(train_set)} train / {len(test_set)} "
            f"test), net {net.describe()}, T={cfg.T}, {cfg.epochs} epochs, on {where}, "
            f"{kernels} kernels -> {self.run_dir}")
        if len(test_set) > len(train_set):
            log(f"warning: the test split ({len(test_set)} samples) is larger than the "
                f"training split ({len(train_set)}): are the train and test files swapped?")
        seen = self.start_batch
        self.t_start = time.perf_counter()
        self.last_checkpoint = time.monotonic()
        stop = StopSignals(log)

        def agree(*flags: bool) -> list[bool]:
            """Whether any process raised each flag (a sum over the processes)."""
            if comm is None:
                return list(flags)
            return [v > 0 for v in comm.sum([float(f) for f in flags])]

        def diverged(exc: Exception, epoch: int, batch: int) -> Diverged:
            where = f"{exc} at epoch {epoch + 1}, batch {batch + 1}."
            if not self.ckpt_path.is_file():
                return Diverged(f"{where} No checkpoint was written yet: start again with a "
                                f"lower learning rate, e.g. --lr {cfg.lr / 10:g} --overwrite")
            return Diverged(
                f"{where} The last good checkpoint in {self.run_dir} stands: continue with a "
                f"lower learning rate, e.g. opzo train --resume {self.run_dir} "
                f"--lr {cfg.lr / 10:g}")

        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                if rule is not None:
                    rule.set_progress(epoch / max(cfg.epochs - 1, 1))
                    rule.freeze_feedback(cfg.freeze_m_after is not None
                                         and epoch >= cfg.freeze_m_after)
                first = self.start_batch if epoch == self.start_epoch else 0
                if variance is not None and not (epoch == self.start_epoch and first > 0):
                    variance.reset()
                acc = self.partial if epoch == self.start_epoch else Accumulator()
                if isinstance(net.surrogate, SparsityStats):  # LocalZO / SparseGrad, per epoch
                    net.surrogate.reset_stats()
                    if first > 0 and self.state_stats is not None:
                        net.surrogate.load_stats_state(self.state_stats)
                bar = Progress(n_batches, f"epoch {epoch + 1}/{cfg.epochs}", self.progress)
                t0 = time.perf_counter()
                order = epoch_permutation(len(train_set), cfg.seed, epoch)
                batch_index = first
                for x, labels in train_set.batches(cfg.batch_size, cfg.T, permutation=order,
                                                   start_batch=first, epoch=epoch):
                    shard = None
                    if comm is not None and labels.shape[0] < self.world:
                        # a last batch too small to give every process a row: left out
                        log(f"epoch {epoch + 1}: the last batch ({labels.shape[0]} samples) "
                            f"is smaller than the {self.world} processes and is left out")
                        batch_index += 1
                        seen += 1
                        continue
                    if comm is not None:  # this process's rows of the global batch
                        shard = comm.shard(labels.shape[0])
                        x = shard.rows(x, 0 if x.dim() == 2 else 1)
                        labels = shard.rows(labels)
                    x, labels = to_device(x, device), to_device(labels, device)
                    if cfg.diagnostics and batch_index % cfg.diag_every == 0:
                        cos = gradient_cosine(net, rule, x, labels, cfg.T, self.loss,
                                              cfg.diag_reference, trace=cfg.trace,
                                              gbar=cfg.otpe_gbar)
                        if self.main:
                            _append_jsonl(self.diag_path, {"epoch": epoch + 1,
                                                           "batch": batch_index,
                                                           "cosine": _round(cos)})
                    try:
                        stats = self.learner.train_batch(
                            x, labels, optimizer, T=cfg.T, shard=shard,
                            on_grad=variance.update if variance is not None else None)
                    except FloatingPointError as exc:
                        raise diverged(exc, epoch, batch_index) from None
                    batch_index += 1
                    seen += 1
                    if stop_after is not None and seen >= stop_after:
                        stop.request()
                    due = batch_index < n_batches and self.checkpoint_due(batch_index)
                    if comm is not None:  # the global batch's sums; what all agree to do
                        total = comm.sum([stats.loss_sum, stats.correct, stats.count,
                                          float(stop.requested), float(due)])
                        stats = BatchStats(total[0], int(total[1]), int(total[2]))
                        stopping, due = total[3] > 0, total[4] > 0
                    else:
                        stopping = stop.requested
                    if self.first_loss is None:
                        self.first_loss = stats.loss_sum / max(stats.count, 1)
                    acc.add(stats)
                    s = acc.summary()
                    bar.update(batch_index, f"loss {s['loss']:.3f} acc {s['acc']:.1f}%")
                    if stopping or due:
                        try:
                            self.checkpoint(epoch, batch_index, acc)
                        except FloatingPointError as exc:
                            raise diverged(exc, epoch, batch_index - 1) from None
                    if stopping:
                        bar.close()
                        log(f"stopped at epoch {epoch + 1}, batch {batch_index}; checkpoint "
                            f"saved. Continue with: opzo train --resume {self.run_dir}")
                        raise Interrupted(str(self.run_dir))
                bar.close()
                train_time = time.perf_counter() - t0
                if scheduler is not None:
                    with warnings.catch_warnings():  # resumed exactly at an epoch end
                        warnings.filterwarnings("ignore",
                                                message="Detected call of `lr_scheduler")
                        scheduler.step()
                test = evaluate(net, test_set, cfg, self.loss, comm)
                train = acc.summary()
                row = {"epoch": epoch + 1, "train_loss": round(train["loss"], 6),
                       "train_acc": round(train["acc"], 4), "test_loss": round(test["loss"], 6),
                       "test_acc": round(test["acc"], 4), "firing_rate": test["firing_rate"],
                       "synops": test["synops"], "synops_total": test["synops_total"],
                       "lr": optimizer.param_groups[0]["lr"],
                       "epoch_time_s": round(train_time, 3)}
                if rule is not None and rule.noise is not None:
                    row["alpha"] = rule.noise.alpha
                if isinstance(net.surrogate, SparsityStats) and net.surrogate.track_stats:
                    # LocalZO paper section 5.2: the fraction of neurons with a non-zero local
                    # derivative in training (1 − the backward sparsity SparseGrad exploits)
                    row["nonzero_grad_fraction"] = round(net.surrogate.nonzero_fraction, 6)
                try:
                    self.checkpoint(epoch + 1, 0, Accumulator())
                except FloatingPointError as exc:
                    raise diverged(exc, epoch, batch_index - 1) from None
                if self.main:
                    _append_jsonl(self.metrics_path, row)
                    if variance is not None:
                        _append_jsonl(self.diag_path, {
                            "epoch": epoch + 1, "variance": variance.result(),
                            "relative_variance": variance.relative()})
                sparsity = (f"  ψ≠0 {row['nonzero_grad_fraction']:.1%}"
                            if "nonzero_grad_fraction" in row else "")
                log(f"epoch {epoch + 1:3d}/{cfg.epochs}  train loss {train['loss']:.4f} "
                    f"acc {train['acc']:6.2f}%  test acc {test['acc']:6.2f}%  "
                    f"({train_time:.1f}s){sparsity}")
                if (self.first_loss is not None and train["loss"] > 1.5 * self.first_loss
                        and train["loss"] > self.first_loss + 0.5):
                    log(f"warning: the training loss of epoch {epoch + 1} ({train['loss']:.4g}) "
                        f"is far above the first batch's ({self.first_loss:.4g}): the "
                        f"learning rate ({cfg.lr:g}) may be too high")
                if epoch + 1 < cfg.epochs and agree(stop.requested)[0]:
                    log(f"stopped after epoch {epoch + 1}; checkpoint saved. Continue with: "
                        f"opzo train --resume {self.run_dir}")
                    raise Interrupted(str(self.run_dir))
        except KeyboardInterrupt:
            # a second signal: stopped at once, the last checkpoint written stands
            log(f"interrupted; the last checkpoint stands. Continue with: "
                f"opzo train --resume {self.run_dir}")
            raise Interrupted(str(self.run_dir)) from None
        finally:
            stop.restore()
        return self.finish(kernels)

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
            rows = read_jsonl(self.metrics_path, self.log)
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
                "git_commit": _git_commit(),
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
