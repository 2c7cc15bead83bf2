"""Building a run's pieces from a :class:`~opzo.config.TrainConfig`: the data source, the
network, the learner with its rule and trace, the optimizer, the device.

Every kind of part is looked up in its registry (:mod:`opzo.registry`): the neuron in
:data:`opzo.neurons.NEURONS`, the rule in :data:`opzo.rules.RULES`, the surrogate in
:data:`opzo.surrogate.SURROGATES`, the dataset in :data:`opzo.data.DATASETS`; nothing here
lists their names or their options (a part reads the options it declares from the config).
A network read from a NIR file is built by :func:`opzo.nir.network_from_nir` (NIR sits above
this module: its export rebuilds a run's network here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from . import native
from .bptt import BPTTLearner
from .chip import ChipBackend
from .config import TrainConfig
from .data import DATASETS, Source
from .distributed import Communicator, launched_by_torchrun, local_rank
from .learner import OnlineLearner
from .losses import InstantLoss, MaxOverTime
from .network import SpikingMLP, SpikingNet
from .neurons import NEURONS, make_neuron
from .pzo import UNTRUNCATED_METHODS, UntruncatedLearner, feedback_from_config
from .rules import RULES, LocalLearning, SpatialRule
from .rundir import CHECKPOINT
from .surrogate import SURROGATES, Surrogate


def make_source(cfg: TrainConfig, split: str) -> Source:
    """The config's dataset split as a source of network inputs, limits applied (the reader
    registered in :data:`opzo.data.DATASETS`; never downloaded: a missing file raises
    :class:`~opzo.data.DatasetError` naming it)."""
    source = DATASETS[cfg.dataset].factory(cfg, split)
    limit = cfg.limit_train if split == "train" else cfg.limit_test
    return source.head(limit) if limit else source


def build_surrogate(cfg: TrainConfig) -> Surrogate:
    """The local derivative ψ of the config, with its parameters."""
    return SURROGATES[cfg.surrogate].factory.from_config(cfg)


def build_network(cfg: TrainConfig, input_shape: int | Sequence[int], num_classes: int
                  ) -> SpikingNet:
    """The SNN of the config: inputs → hidden layers of the config's neuron model → readout.

    ``input_shape``: the source's ``input_shape`` ((1, H, W) for images, (C, H, W) for
    frames, (F,) for vectors; a bare int is (F,)). With ``cfg.net`` the network of that string
    (scaled by ``cfg.width``), else the fully connected net of ``cfg.hidden``.
    """
    surrogate = build_surrogate(cfg)
    shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(input_shape)
    neuron = make_neuron(cfg.neuron, **NEURONS.option_values(cfg.neuron, cfg))
    net: SpikingNet
    from .nets import build_named, is_named

    if is_named(cfg.net):  # resnet19, nfresnet34 (opzo.nets)
        assert cfg.net is not None
        net = build_named(cfg.net, shape, num_classes, width=cfg.width, neuron=neuron,
                          surrogate=surrogate, dropout=cfg.dropout, kernels=cfg.kernels)
    elif cfg.net is not None:
        net = SpikingNet(cfg.net, shape, num_classes, width=cfg.width, neuron=neuron,
                         surrogate=surrogate, dropout=cfg.dropout, kernels=cfg.kernels)
    else:
        net = SpikingMLP([math.prod(shape), *cfg.hidden, num_classes], neuron=neuron,
                         surrogate=surrogate, dropout=cfg.dropout, kernels=cfg.kernels)
    norm = getattr(cfg, "norm", "none")
    if norm != "none":  # batch norm after every convolution (opzo.norm)
        from .norm import apply_norm

        apply_norm(net, norm)
    attach_chip_noise(cfg, net)  # the deployed chip's noise on every current (opzo.hardware)
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
    if isinstance(state, dict) and isinstance(state.get("net"), dict):  # OTTT's checkpoints
        from .ottt import load_ottt_state

        return load_ottt_state(net, state["net"], str(file))
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


def is_nir(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".nir"


def attach_chip_noise(cfg: TrainConfig, net: SpikingNet) -> None:
    """The config's chip noise (``hw_noise``) on every hidden layer of ``net``, if any."""
    if cfg.hw_noise:
        from .hardware import attach

        attach(net, cfg.hw_noise, cfg.hw_noise_kind, cfg.hw_seed)


def build_learner(cfg: TrainConfig, net: SpikingNet, loss: InstantLoss,
                  comm: Communicator | None = None, chip: ChipBackend | None = None
                  ) -> OnlineLearner | BPTTLearner | UntruncatedLearner:
    """The online learner with the config's rule, the BPTT learner for ``bptt`` (with
    ``comm``: data parallel, gradients summed over the processes), or for ``pzo`` /
    ``dfa-time`` :mod:`opzo.pzo`'s untruncated learner (one process; its feedback bound for
    ``cfg.T`` steps). Build it after moving ``net`` to its device: the rule's state is made
    where the network's weights are. ``chip``: the online learner's forward comes from this
    chip backend (:mod:`opzo.chip`)."""
    if cfg.method in UNTRUNCATED_METHODS:
        if comm is not None:
            raise ValueError(f"method {cfg.method!r} runs in one process: drop --nproc (its "
                             "feedback sees the whole batch's noise and outputs)")
        return UntruncatedLearner(net, feedback_from_config(cfg.method, cfg), steps=cfg.T,
                                  loss=loss)
    if cfg.method == "bptt":
        return BPTTLearner(net, loss, readout=make_readout(cfg), detach_reset=cfg.detach_reset,
                           comm=comm)
    return OnlineLearner(net, build_rule(cfg), loss, trace=cfg.trace, update=cfg.update,
                         gbar=cfg.otpe_gbar, comm=comm, chip=chip, grad_steps=cfg.grad_steps)


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
    rule = RULES[cfg.method].factory.from_config(cfg)
    if cfg.local_learning or cfg.igl_layer is not None:
        igl = None if cfg.igl_layer is None else cfg.igl_layer - 1  # the option counts from 1
        return LocalLearning(rule, cfg.ll_scale, local=cfg.local_learning, igl_layer=igl,
                             igl_scale=cfg.igl_scale)
    return rule


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


def kernels_in_use(net: SpikingNet, device: torch.device | None = None,
                   learner: OnlineLearner | BPTTLearner | UntruncatedLearner | None = None
                   ) -> str:
    """"native" or "torch ...": what the built network's neuron step and dropout actually run
    on, with the reason when it is not the native kernels: asked for torch
    (``kernels="torch"``), a neuron model the fused LIF kernel does not compute
    (:meth:`~opzo.neurons.Neuron.uses_native_kernel`), off the CPU or not float32, the
    library unavailable, or (``learner`` a :class:`~opzo.bptt.BPTTLearner`) training that
    differentiates the step with autograd. The noise's generator is the separate
    ``noise_rng``."""
    weight = next(net.parameters())
    device = weight.device if device is None else device
    if device.type != "cpu":
        return f"torch ({device.type}; the native kernels are the CPU path)"
    if net.kernels == "torch":
        return "torch"
    if not net.neuron.uses_native_kernel():
        return (f"torch (the {net.neuron.name} neuron ({type(net.neuron).__name__}) has no "
                "native kernel)")
    if weight.dtype != torch.float32:
        return f"torch ({weight.dtype}; the native kernels are float32)"
    if not native.available():
        return f"torch (native unavailable: {native.error()})"
    if isinstance(learner, BPTTLearner):
        how = ("the sparse backward over the active neurons" if learner.uses_sparse_backward()
               else "autograd through the step")
        return f"torch (training: {how}; evaluation: native)"
    return "native"
