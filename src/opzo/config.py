"""Training configuration: one dataclass whose fields are the CLI options and config-file keys.

Every field carries its help text and allowed values, so ``opzo train --help``, config-file
validation and the run folder's ``config.json`` all come from this one place.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .data import DATASETS, ENCODER_NAMES
from .diagnostics import REFERENCES
from .hardware import HW_KINDS
from .learner import UPDATE_MODES
from .losses import LOSS_KINDS
from .network import KERNELS, NOISE_POSITIONS
from .neurons import NEURONS, RESET_MODES
from .registry import Registry
from .rules import RULES
from .rules.mforms import M_FORMS
from .rules.noise import NOISE_DISTRIBUTIONS, NOISE_RNGS
from .surrogate import SURROGATES
from .surrogate.localzo import DISTRIBUTIONS as LOCALZO_DISTRIBUTIONS
from .traces import GBAR_MODES, TRACES, trace_names


class ConfigError(ValueError):
    """A configuration value or key is not allowed; the message says what is."""


class OptionParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``opzo: error: ...``, with a pointer to
    the command's ``--help`` (argparse's own prints the whole usage block first); exit 2."""

    def error(self, message: str) -> Any:  # argparse's signature: NoReturn
        self.exit(2, f"opzo: error: {message} (see '{self.prog} --help')\n")


def _opt(default: Any, help: str, choices: Iterable[str] | None = None, **extra: Any) -> Any:
    meta = {"help": help, "choices": choices, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


OPTIMIZERS = ("adamw", "adam", "adamax", "sgd")


class _Names:
    """The names an option accepts, read from their registry at every use (a part registered
    after this module was imported is accepted too): ``in``, iteration and ``len``."""

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        self._names = names

    def __contains__(self, name: object) -> bool:
        return name in tuple(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._names()))

    def __len__(self) -> int:
        return len(tuple(self._names()))

    def __repr__(self) -> str:
        return repr(list(self))


#: the spatial rules of :data:`opzo.rules.RULES`, and the exact offline reference
METHODS = _Names(lambda: (*RULES, "bptt"))


def _described(registry: Registry) -> str:
    """'name: what it is; ...' of every entry of a registry, for an option's help."""
    return "; ".join(f"{name}: {registry[name].help}" if registry[name].help else name
                     for name in registry)


@dataclass
class TrainConfig:
    """All options of ``opzo train`` (defaults: OPZO on the embedded MNIST subset)."""

    # data
    dataset: str = _opt(
        "embedded-mnist", "dataset to train on. " + _described(DATASETS) + ". Event datasets "
        "are cut into T frames or bins (papers: N-MNIST 30, DVS Gesture 20, CIFAR10-DVS 10, "
        "SHD 50); shd, ssc and randman give vectors: fully connected nets only",
        _Names(DATASETS.names))
    data_root: str | None = _opt(
        None, "dataset folder (never downloaded). mnist / fashion-mnist: the four idx files "
        "(optionally .gz). cifar10: cifar-10-batches-py/ (data_batch_1..5, test_batch) or "
        "that folder itself; cifar100: cifar-100-python/ (train, test). nmnist: Train/ and "
        "Test/ with <digit>/*.bin (3 ms frames, the first T). dvs-gesture: tonic's "
        "DVSGesture/ibmGestureTrain|ibmGestureTest/<session>/<label>.npy (the recording cut "
        "into T frames of equal event counts, 48x48). cifar10-dvs: SpikingJelly's "
        "<class>/<index>.npz for the 10 classes (or events_np/<class>/; T frames of equal "
        "event counts, 48x48, the first 900 per class train, the last 100 test). shd / ssc: "
        "shd_train.h5 and shd_test.h5 (ssc_train.h5, ssc_test.h5), decompressed; needs "
        "h5py (pip install 'opzo[h5]')")
    encoding: str = _opt("direct", "image encoding: direct current at every step, Bernoulli "
                         "rate spikes, or one spike per pixel at a latency (image datasets "
                         "only; event datasets are fed as frames)",
                         ENCODER_NAMES)
    latency_tau: float = _opt(20.0, "latency encoding: time constant τ_eff in steps (spike at "
                              "τ_eff·ln(x/(x−θ)))", min=1e-9)
    latency_theta: float = _opt(0.2, "latency encoding: pixels x ≤ θ (in [0, 1]) never spike",
                                min=0.0, max=0.999)
    augment: bool = _opt(True, "training-split augmentation of cifar10 / cifar100 (random "
                         "crop with 4 pixels of padding, horizontal flip, cutout) and "
                         "cifar10-dvs (random crop), drawn per batch from (seed, epoch, batch) "
                         "(OPZO paper appendix C.3.1)")
    limit_train: int | None = _opt(None, "use only the first N training samples", min=1)
    limit_test: int | None = _opt(None, "use only the first N test samples", min=1)
    # network
    hidden: list[int] = _opt([800, 800], "hidden layer sizes of the fully connected net, e.g. "
                             "800 800 (ignored when 'net' is given)", min=1)
    net: str | None = _opt(
        None, "network string as in the OPZO paper, e.g. 128C3-AP2-256C3-AP2-512C3-FC "
        "(<n>C<k>: conv with n channels and a k x k kernel, scaled weight standardization; "
        "AP<k>: average pooling; GAP: global average pooling; <n>: fully connected hidden "
        "layer; FC: the readout, last; a hidden token ending in + or +k adds the spikes of k "
        "layers back to its current: residual), or a name: conv5, conv9 (the paper's 5- and "
        "9-layer conv nets), conv9r, resnet18, resnet34 (residual, appendix D.5); unset = "
        "fully connected from 'hidden'")
    width: float = _opt(1.0, "multiplies the channels (and neurons) of every hidden layer of "
                        "'net' (e.g. 0.25 for a CPU-sized conv5)", min=1e-6)
    T: int = _opt(6, "number of time steps per sample (event datasets: the number of frames "
                  "or time bins each sample is cut into)", min=1)
    dropout: float = _opt(0.2, "dropout rate (mask fixed over the T steps)", min=0.0, max=0.99)
    init_scale: float = _opt(1.0, "hidden weights are torch's default initialisation times this "
                             "(sparse spike inputs need > 1 for the neurons to fire)", min=0.0)
    lif_lambda: float = _opt(0.5, "membrane leak λ of the neuron (every model)", min=0.0,
                             max=1.0)
    v_th: float = _opt(1.0, "firing threshold V_th", min=1e-9)
    reset: str = _opt("subtract", "reset after a spike", RESET_MODES)
    neuron: str = _opt("lif", "neuron model of the hidden layers. " + _described(NEURONS),
                       _Names(NEURONS.names))
    syn_lambda: float = _opt(0.5, "neuron cuba: leak λ_s of the synaptic current",
                             min=0.0, max=1.0)
    adapt_beta: float = _opt(0.2, "neuron alif: threshold increase β per unit of adaptation",
                             min=0.0)
    adapt_lambda: float = _opt(0.9, "neuron alif: leak λ_a of the adaptation",
                               min=0.0, max=1.0)
    kernels: str = _opt("native", "how each step's neuron update, noise, dropout and local "
                        "derivative run: native (one fused C pass per layer, dropout masks "
                        "from the Philox generator; compiled on first use) or torch (torch "
                        "ops and torch's generator; with --noise-rng torch, the streams of "
                        "the results recorded before the native kernels)",
                        KERNELS)
    surrogate: str = _opt("sigmoid", "local derivative ψ. " + _described(SURROGATES),
                          _Names(SURROGATES.names))
    sigmoid_a: float = _opt(0.25, "width a of the sigmoid surrogate", min=1e-9)
    fast_sigmoid_k: float = _opt(25.0, "slope k of the fast-sigmoid surrogate", min=1e-9)
    localzo_delta: float = _opt(0.05, "LocalZO smoothing δ", min=1e-9)
    localzo_m: int = _opt(1, "LocalZO samples m per neuron and step", min=1)
    localzo_dist: str = _opt("normal", "LocalZO distribution of z",
                             LOCALZO_DISTRIBUTIONS)
    # learning rule
    method: str = _opt("opzo", "spatial credit assignment rule. " + _described(RULES)
                       + "; bptt: exact backpropagation through time, the offline reference",
                       METHODS)
    loss: str = _opt("mix", "instantaneous loss: (1-γ)CE + γMSE, or pure CE / MSE, or tet "
                     "(TET, Deng et al. 2022, as in LocalZO + TET: (1/T)Σ_t [(1-λ)CE(o[t], y) "
                     "+ λ MSE(o[t], φ)], the MSE towards the constant φ)", LOSS_KINDS)
    gamma: float = _opt(0.05, "MSE weight γ of the mixed loss", min=0.0, max=1.0)
    tet_lambda: float = _opt(0.05, "loss tet: weight λ of the MSE regulariser (LocalZO paper "
                             "Table 7: 0.05 CIFAR / DVS-Gesture / N-Caltech-101 / N-CARS, 0.001 "
                             "ImageNet-100, 0.0001 DVS-CIFAR10)", min=0.0, max=1.0)
    tet_phi: float = _opt(1.0, "loss tet: the constant φ the outputs are pulled towards (TET: "
                          "V_th = 1)")
    readout: str = _opt("sum", "how the readout becomes class scores: sum (Σ_t o[t], a loss "
                        "at every step: OTTT / OPZO) or max (leaky-integrator outputs "
                        "Y[t] = λ_o Y[t−1] + o[t], one loss on max_t Y[t]: the "
                        "SparseGrad framework of the LocalZO paper; method bptt only)",
                        ("sum", "max"))
    readout_leak: float = _opt(0.0, "readout max: the leak λ_o of the output integrators "
                               "(SparseGrad: exp(−Δt/τ) = 0.905 for τ = 10 steps)",
                               min=0.0, max=0.999)
    detach_reset: bool = _opt(False, "method bptt: treat the reset as a constant in the "
                              "gradient, as SparseGrad does (the online rules always do)")
    update: str = _opt("batch", "one optimizer step per batch (OTTT_A) or per time step "
                       "(OTTT_O)", UPDATE_MODES)
    trace: str = _opt("ottt", "temporal credit. " + _described(TRACES) + "; f_<name>: the "
                      "same with the loss on the leaky sum of the outputs (F-OTPE)",
                      _Names(trace_names))
    otpe_gbar: str = _opt("paper", "OTPE / approx_otpe: the leaky mean ḡ of surrogate "
                          "derivatives as printed in the paper ((1/t) Σ λ^(t−t') ψ) or "
                          "normalised to a weighted mean", GBAR_MODES)
    alpha: float = _opt(0.2, "noise scale α (opzo, zo)", min=1e-9)
    alpha_final: float | None = _opt(
        None, "decay α linearly to this value over the epochs (paper: 0.01); unset = fixed",
        min=1e-9)
    noise: str = _opt("gaussian", "noise distribution z (opzo, zo)",
                      NOISE_DISTRIBUTIONS)
    noise_position: str = _opt("after", "inject noise after the neuron (spikes) or before it "
                               "(membrane potential)", NOISE_POSITIONS)
    antithetic: bool = _opt(False, "use z and -z on alternate time steps (opzo, zo)")
    noise_rng: str = _opt("philox", "generator of the noise (opzo, zo): the native Philox "
                          "kernels (compiled on first use with the machine's C compiler; "
                          "about three times as fast) or torch's normal_/randint (the streams of "
                          "the results recorded before the kernels existed)",
                          NOISE_RNGS)
    alpha_factor: bool | None = _opt(
        None, "keep the 1/α factor (default: off for opzo as in the paper, on for zo)")
    lambda_m: float = _opt(0.99999, "momentum λ_M of OPZO's feedback matrices",
                           min=0.0, max=0.999999999)
    m_form: str = _opt("dense", "opzo: the form of the momentum feedback M. dense: one row "
                       "per neuron (C·H·W·m numbers per conv layer, OPZO paper eq. 6); "
                       "shared-space: one row per channel, shared by the layer's positions "
                       "(memory / H·W); lowrank: M = K Qᵀ with a fixed random orthonormal Q "
                       "of m_rank columns (memory × m_rank/m). 'rule state:' in the log gives "
                       "the memory of each", M_FORMS)
    m_rank: int = _opt(8, "m_form lowrank: the rank R of M", min=1)
    freeze_m_after: int | None = _opt(
        None, "opzo: stop updating the momentum feedback M after this many epochs (OPZO paper "
        "Table 9's ablation); unset = never", min=0)
    feedback_lr: float = _opt(2e-4, "learning rate of DKP's feedback matrices", min=0.0)
    local_learning: bool = _opt(False, "local learning (LL, OPZO paper appendix C.1): a linear "
                                "readout per hidden layer with its own loss, its error fed back "
                                "through the readout and added to the rule's signal")
    ll_scale: float = _opt(0.01, "weight of each local loss (paper: 0.01)", min=0.0)
    igl_layer: int | None = _opt(
        None, "intermediate global learning (IGL): this hidden layer (counted from 1; the "
        "paper uses 4, the 4th conv of conv9) acts as an output for the layers below it, "
        "which get the rule's feedback from its readout; unset = off", min=2)
    igl_scale: float = _opt(1.0, "weight of the IGL layer's readout loss", min=0.0)
    hw_noise: float = _opt(
        0.0, "train on a noisy chip (OPZO paper section 5.4): noise of this scale on every "
        "hidden layer's synaptic current, seen by every rule; for opzo and zo (gaussian) it "
        "is their perturbation: alpha = hw_noise, before the neuron, no antithetic pairs, no "
        "1/alpha in M's update; 0: none", min=0.0)
    hw_noise_kind: str = _opt("gaussian", "the chip's noise: fresh Gaussian noise at every "
                              "step, or a fixed per-neuron offset drawn once from hw_seed "
                              "(device mismatch)", HW_KINDS)
    hw_seed: int = _opt(0, "seed of the fixed offsets of hw_noise_kind fixed (one chip)",
                        min=0)
    init_from: str | None = _opt(
        None, "start from trained weights: a run folder or its checkpoint.pt (the weights "
        "only: a fresh optimizer, schedule and rule state; the network must match), or a NIR "
        "file (.nir; the network, its neurons and weights come from the file, the net, "
        "hidden and LIF options are not used; needs pip install 'opzo[nir]')")
    # optimisation
    epochs: int = _opt(20, "number of epochs", min=1)
    batch_size: int = _opt(128, "training batch size", min=1)
    eval_batch_size: int = _opt(1000, "evaluation batch size", min=1)
    optimizer: str = _opt("adamw", "optimizer of the weights (the OPZO paper: AdamW; the OTPE "
                          "paper: Adamax)", OPTIMIZERS)
    lr: float = _opt(2e-4, "learning rate (paper: 2e-4; 2e-5 for zo)", min=0.0)
    weight_decay: float = _opt(2e-4, "weight decay (decoupled for adamw)", min=0.0)
    schedule: str = _opt("cosine", "learning-rate schedule over epochs", ("cosine", "constant"))
    seed: int = _opt(0, "random seed (data order, initialisation, noise, dropout)", min=0,
                     max=2**63 - 1)
    threads: int | None = _opt(None, "torch CPU threads (default: torch's choice; under "
                               "torchrun / --nproc torch's choice is 1 per process)", min=1)
    device: str = _opt("auto", "where to train: auto (CUDA when available, else the CPU), cpu, "
                       "cuda, cuda:N or mps; under torchrun each process takes the GPU of its "
                       "LOCAL_RANK (the native kernels are the CPU path; on a GPU the step "
                       "runs on torch's ops)")
    checkpoint_every: int | None = _opt(
        None, "also write the checkpoint every N batches within an epoch (it is always written "
        "at the end of an epoch and on Ctrl-C / SIGTERM)", min=1)
    checkpoint_minutes: float = _opt(
        10.0, "also write the checkpoint when this many minutes have passed since the last one "
        "(the run's first one after at most a minute), at the end of a batch (so a SIGKILL "
        "loses minutes, not an epoch; 0: off)", min=0.0)
    # diagnostics
    diagnostics: bool = _opt(False, "record per-layer gradient variance per epoch and cosine "
                             "similarity with a reference gradient (diagnostics.jsonl)")
    diag_every: int = _opt(50, "batches between two cosine-similarity measurements", min=1)
    diag_reference: str = _opt("bp", "reference gradient for the cosine similarity",
                               REFERENCES)
    tensorboard: bool = _opt(
        False, "also write TensorBoard logs to RUN/tensorboard/ (view them live with "
        "tensorboard --logdir RUN/tensorboard): per epoch the metrics.jsonl values (train and "
        "test loss and accuracy, firing rate and SynOps per layer, lr, alpha, LocalZO's "
        "non-zero fraction), the gradient cosines and variances with --diagnostics, and "
        "histograms of the weights and of the rule's feedback matrices (OPZO's M); every "
        "--tensorboard-every batches the batch's loss and accuracy. The x axis is the number "
        "of batches since the run began; a resumed run continues the same curves. Process 0 "
        "alone writes. Needs pip install 'opzo[tensorboard]'")
    tensorboard_every: int = _opt(50, "with --tensorboard: write the batch loss and accuracy "
                                  "every N batches (at the batches whose number since the run "
                                  "began is a multiple of N)", min=1)
    # output
    out: str | None = _opt(None, "run folder (default: runs/<dataset>-<method>-<time>)")

    def validate(self, complete: bool = True) -> TrainConfig:
        """Check every value against its field's choices and bounds; return self.

        With ``complete`` (the final, merged config) also check the options that depend on
        each other (a dataset needs its data_root, ...); a config file alone may leave those
        to the command line. Raises :class:`ConfigError` saying what is allowed.
        """
        for f in fields(self):
            _check_field(f, getattr(self, f.name))
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"option 'device' = {self.device!r} is not allowed; use auto, cpu, "
                              "cuda, cuda:N (N = 0, 1, ...) or mps")
        tokens = self._net_tokens()
        if complete:  # in this order: the first error found is the one to fix first
            if self.net is None and self.width != 1.0:
                raise ConfigError("option 'width' scales the layers of 'net'; for the fully "
                                  "connected net give the sizes with 'hidden' directly")
            self._check_trace(tokens)
            self._check_data(tokens)
            self._check_method()
            self._check_igl(tokens)
        return self

    def _net_tokens(self) -> list | None:
        """The parsed network string, or None for the fully connected net of 'hidden'."""
        if self.net is None:
            return None
        from .netstring import parse_net

        try:
            return parse_net(self.net, self.width)
        except ValueError as exc:
            raise ConfigError(f"option 'net': {exc}") from None

    def _check_igl(self, tokens: list | None) -> None:
        if self.igl_layer is None:
            return
        n_hidden = (len(self.hidden) if tokens is None
                    else sum(t.kind in ("conv", "dense") for t in tokens))
        if n_hidden < 2:
            raise ConfigError(f"option 'igl_layer' = {self.igl_layer}: intermediate global "
                              "learning needs a network of at least 2 hidden layers (an "
                              f"IGL layer and one below it); this one has {n_hidden}")
        if self.igl_layer > n_hidden:
            raise ConfigError(f"option 'igl_layer' = {self.igl_layer}: the network has "
                              f"{n_hidden} hidden layers; choose 2..{n_hidden}")

    def _check_data(self, tokens: list | None) -> None:
        data = DATASETS[self.dataset]
        if not data.builtin and not self.data_root:
            raise ConfigError(
                f"dataset {self.dataset!r} needs data_root (--data-root DIR): the folder with "
                "its files; opzo never downloads data. For a quick start use "
                "dataset 'embedded-mnist', which ships with the package.")
        if data.events and self.encoding != "direct":
            raise ConfigError(f"{self.dataset} is fed as spike frames; the {self.encoding!r} "
                              "encoding applies to image datasets only")
        if data.steps is not None and self.T != data.steps:
            what = f" ({data.help})" if data.help else ""
            raise ConfigError(f"{self.dataset}{what} has {data.steps} time steps: set "
                              f"T={data.steps} (got {self.T})")
        if data.vectors and tokens is not None and any(t.kind == "conv" for t in tokens):
            raise ConfigError(f"{self.dataset} gives vectors of input neurons, not images: "
                              "a convolutional 'net' needs image or frame datasets; use a "
                              "fully connected net ('hidden', or a 'net' of <n> layers)")

    def _check_method(self) -> None:
        if self.method == "bptt":
            if self.update == "step":
                raise ConfigError("method 'bptt' is offline: it needs update 'batch'")
            if self.local_learning or self.igl_layer is not None:
                raise ConfigError("local learning and IGL add to an online spatial rule; "
                                  "method 'bptt' takes neither")
            if self.trace != "ottt":
                raise ConfigError("method 'bptt' is exact through time: it takes no trace "
                                  f"(got trace {self.trace!r})")
        elif self.readout != "sum" or self.detach_reset:
            option = "readout 'max'" if self.readout != "sum" else "detach_reset"
            raise ConfigError(f"{option} needs the whole sequence in the gradient: use "
                              f"method 'bptt' (got {self.method!r}); the online rules train "
                              "on the per-step loss of readout 'sum'")
        if self.m_form != "dense" and self.method != "opzo":
            raise ConfigError(f"option 'm_form' = {self.m_form!r} is a form of OPZO's M: use "
                              f"method 'opzo' (got {self.method!r}) or m_form 'dense'")
        if self.readout == "max" and self.loss == "tet":
            raise ConfigError("loss 'tet' is a loss at every time step: use readout 'sum' "
                              "(readout 'max' takes one loss on the max-over-time scores)")
        if self.readout == "sum" and self.readout_leak:
            raise ConfigError("option 'readout_leak' applies to readout 'max' only")
        if self.readout == "max" and self.diagnostics:
            raise ConfigError("diagnostics compare gradients of the per-step loss: use "
                              "readout 'sum' with diagnostics")

    def _check_trace(self, tokens: list | None) -> None:
        trace = TRACES[self.trace.removeprefix("f_")].factory
        if not trace.per_synapse:
            return
        if tokens is not None and any(t.kind == "conv" for t in tokens):
            raise ConfigError(
                f"trace {self.trace!r} keeps one eligibility per synapse and is implemented "
                "for fully connected layers only; use 'ottt' or 'approx_otpe' (or their f_ "
                "variants) with a convolutional 'net'")
        if NEURONS[self.neuron].factory.own_path_unsupported is not None:
            raise ConfigError(
                f"trace {self.trace!r} keeps one eligibility per synapse, derived for a neuron "
                f"whose membrane potential is its only state; neuron {self.neuron!r} has a "
                "second one on that path: use 'ottt' or 'approx_otpe' (or their f_ variants)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config",
                  complete: bool = True) -> TrainConfig:
        """Build from a mapping (keys may use '-' or '_'); unknown keys are an error."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ConfigError(
                    f"{source}: unknown key {key!r}; allowed keys: {sorted(known)}")
            kwargs[name] = _coerce(known[name], value, source)
        return cls(**kwargs).validate(complete)


#: the topics of ``opzo train --help``: every field of :class:`TrainConfig` in one of them, in
#: this order (a new field must be added here too: ``tests/test_cli_help.py`` checks it); the
#: options of the command line alone (--config, --resume, ...) join them in ``opzo.cli``
OPTION_TOPICS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "data_root", "encoding", "latency_tau", "latency_theta", "augment",
             "limit_train", "limit_test"),
    "network and neuron": ("net", "hidden", "width", "T", "dropout", "init_scale", "neuron",
                           "lif_lambda", "v_th", "reset", "syn_lambda", "adapt_beta",
                           "adapt_lambda", "kernels", "init_from"),
    "method: spatial rule and loss": ("method", "loss", "gamma", "tet_lambda", "tet_phi",
                                      "readout", "readout_leak",
                                      "detach_reset", "update", "lambda_m", "m_form", "m_rank",
                                      "freeze_m_after",
                                      "feedback_lr", "local_learning", "ll_scale",
                                      "igl_layer", "igl_scale"),
    "method: temporal trace": ("trace", "otpe_gbar"),
    "method: local derivative": ("surrogate", "sigmoid_a", "fast_sigmoid_k", "localzo_delta",
                                 "localzo_m", "localzo_dist"),
    "method: noise (opzo, zo)": ("alpha", "alpha_final", "noise", "noise_position",
                                 "antithetic", "noise_rng", "alpha_factor"),
    "optimisation": ("epochs", "batch_size", "eval_batch_size", "optimizer", "lr",
                     "weight_decay", "schedule", "seed"),
    "chip (OPZO paper section 5.4)": ("hw_noise", "hw_noise_kind", "hw_seed"),
    "run folder and checkpoints": ("out", "checkpoint_every", "checkpoint_minutes"),
    "devices and processes": ("device", "threads"),
    "diagnostics and logging": ("diagnostics", "diag_every", "diag_reference", "tensorboard",
                                "tensorboard_every"),
}


def option_topic(name: str) -> str:
    """The topic of ``opzo train --help`` that lists the config field ``name``."""
    for topic, names in OPTION_TOPICS.items():
        if name in names:
            return topic
    raise KeyError(f"config field {name!r} has no topic: add it to opzo.config.OPTION_TOPICS")


def _check_field(f: Any, value: Any) -> None:
    """One option against its field's choices and bounds (ConfigError saying what is)."""
    meta = f.metadata
    if value is None:
        if f.default is not None and f.default is not MISSING:
            raise ConfigError(f"option {f.name!r} may not be empty")
        return
    if isinstance(value, list) and not value:
        raise ConfigError(f"option {f.name!r} needs at least one value")
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"option {f.name!r} = {item!r} must be a finite number")
        if meta.get("choices") and item not in meta["choices"]:
            raise ConfigError(f"option {f.name!r} = {item!r} is not allowed; choose one of "
                              f"{list(meta['choices'])}")
        if "min" in meta and item < meta["min"]:
            raise ConfigError(f"option {f.name!r} = {item!r} must be >= {meta['min']}")
        if "max" in meta and item > meta["max"]:
            raise ConfigError(f"option {f.name!r} = {item!r} must be <= {meta['max']}")


def _field_kind(f) -> str:
    text = str(f.type)
    if "list" in text:
        return "list"
    if "bool" in text:
        return "bool"
    if "int" in text:
        return "int"
    if "float" in text:
        return "float"
    return "str"


def _coerce(f, value: Any, source: str) -> Any:
    kind = _field_kind(f)
    if value is None:
        return None
    try:
        if kind == "list":
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, (list, tuple)):
                value = [value]
            return [int(v) for v in value]
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{source}: option {f.name!r} expects {kind}, got {value!r}") from None


def _not_text(path: Path, exc: UnicodeDecodeError) -> ConfigError:
    """The error for a config file that is not UTF-8 text (a binary or a mis-encoded file)."""
    return ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte "
                       f"{exc.object[exc.start:exc.start + 1]!r} at offset {exc.start}): is it "
                       "the right file? Save it as UTF-8")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (.toml) or YAML (.yaml/.yml) config file into a flat mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib  # type: ignore[import-not-found]
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError:
                raise ConfigError(
                    "reading TOML on Python 3.10 needs 'tomli': pip install tomli") from None
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except UnicodeDecodeError as exc:
            raise _not_text(path, exc) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ModuleNotFoundError:
            raise ConfigError(
                "reading YAML config files needs PyYAML: pip install 'opzo[yaml]'") from None
        try:
            with path.open(encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except UnicodeDecodeError as exc:
            raise _not_text(path, exc) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise _not_text(path, exc) from None
        except ValueError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid JSON: {exc}") from None
    else:
        raise ConfigError(
            f"config file {str(path)!r}: unknown format {suffix!r}; use .toml, .yaml or .json")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table of options")
    if "train" in data and isinstance(data["train"], dict) and len(data) == 1:
        data = data["train"]
    return data


def add_argument_groups(parser: argparse.ArgumentParser
                        ) -> dict[str, argparse._ArgumentGroup]:
    """One argument group per topic of :data:`OPTION_TOPICS`, in its order (``--help``
    lists the options by topic)."""
    return {topic: parser.add_argument_group(topic) for topic in OPTION_TOPICS}


def add_arguments(parser: argparse.ArgumentParser,
                  groups: dict[str, argparse._ArgumentGroup] | None = None) -> None:
    """Add one ``--option`` per config field (defaults left as None = not given), each in
    the argument group of its topic (``groups``: from :func:`add_argument_groups`, made
    here when not given)."""
    if groups is None:
        groups = add_argument_groups(parser)
    for f in fields(TrainConfig):
        group = groups[option_topic(f.name)]
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{meta['help']} (default: {default})"
        kind = _field_kind(f)
        if kind == "bool":
            group.add_argument(flag, dest=f.name, default=None,
                               action=argparse.BooleanOptionalAction, help=help_text)
        elif kind == "list":
            group.add_argument(flag, dest=f.name, default=None, nargs="+", type=int,
                               metavar="N", help=help_text)
        else:
            typ = {"int": int, "float": float, "str": str}[kind]
            group.add_argument(flag, dest=f.name, default=None, type=typ,
                               choices=meta.get("choices"), help=help_text)


def config_from_args(args: argparse.Namespace, config_file: str | None) -> TrainConfig:
    """Defaults < config file < explicit command-line options."""
    data: dict[str, Any] = {}
    if config_file:
        data.update(load_config_file(config_file))
    source = config_file or "command line"
    merged = (TrainConfig.from_dict(data, source=source, complete=False).to_dict()
              if data else {})
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            merged[f.name] = value
    cfg = TrainConfig.from_dict(merged, source="options")
    if cfg.data_root and DATASETS[cfg.dataset].builtin:  # it would be recorded, never read
        raise ConfigError(f"dataset {cfg.dataset!r} ships with the package and reads no "
                          f"data_root ({cfg.data_root}): drop --data-root (or data_root from "
                          "the config file), or name the dataset that folder holds with "
                          "--dataset")
    return cfg
