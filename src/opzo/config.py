"""Training configuration: one dataclass whose fields are the CLI options and config-file keys.

Every field carries its help text and allowed values, so ``opzo train --help``, config-file
validation and the run folder's ``config.json`` all come from this one place. The options of
the run itself are written here; the options of the parts (a neuron's leak, a rule's noise, a
surrogate's width, ...) are declared by the parts next to their code
(:class:`~opzo.registry.Option`) and merged in from the registries: as fields of
:class:`TrainConfig` for the parts registered when this module is imported, and, for a part
registered later (a plugin, a test), as options that the CLI, the config files,
``config.json`` and ``cfg.<name>`` take all the same.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .chip import BITS_RANGE, GRAD_FROM, ROUNDINGS, SIMULATOR_NAMES, ChipConfig
from .data import DATASETS, ENCODER_NAMES
from .diagnostics import REFERENCES
from .hardware import HW_KINDS
from .learner import UPDATE_MODES
from .losses import LOSS_KINDS
from .network import KERNELS
from .neurons import NEURONS
from .norm import NORMS, SEQUENCE_NORMS
from .pzo import UNTRUNCATED_METHODS
from .registry import Option, Registry, merge_options
from .rules import RULES
from .surrogate import SURROGATES
from .traces import TRACES, trace_names


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


#: the spatial rules of :data:`opzo.rules.RULES`, the exact offline reference, and the
#: untruncated offline methods of :mod:`opzo.pzo` (Table 13)
METHODS = _Names(lambda: (*RULES, "bptt", *UNTRUNCATED_METHODS))


def _described(registry: Registry) -> str:
    """'name: what it is; ...' of every entry of a registry, for an option's help."""
    return "; ".join(f"{name}: {registry[name].help}" if registry[name].help else name
                     for name in registry)


#: the option that picks a part of each kind -> the registry of that kind; the options the
#: parts of a kind declare join the config right after it (and ``--help``'s topic of it)
PART_KINDS: dict[str, Registry] = {"dataset": DATASETS, "neuron": NEURONS, "method": RULES,
                                   "trace": TRACES, "surrogate": SURROGATES}


def part_options() -> tuple[Option, ...]:
    """The options declared by the parts registered now, every kind, each name once."""
    return merge_options(*(registry.options() for registry in PART_KINDS.values()))


def _option_field(opt: Option) -> Any:
    """The dataclass field of a part's option (its metadata keeps the option)."""
    meta = {"help": opt.help, "choices": opt.choices, "option": opt}
    if isinstance(opt.default, list):
        return field(default_factory=lambda: list(opt.default), metadata=meta)
    return field(default=opt.default, metadata=meta)


def _with_part_options(cls: type) -> type:
    """Add a field per option of the parts registered now, after the option of its kind
    (applied before ``@dataclass``)."""
    own = dict(cls.__annotations__)
    annotations: dict[str, Any] = {}
    for name, annotation in own.items():
        annotations[name] = annotation
        registry = PART_KINDS.get(name)
        for opt in registry.options() if registry is not None else ():
            if opt.name in own:
                raise ValueError(f"option {opt.name!r} of a {registry.kind} is an option of "
                                 "the run itself: give it another name")
            if opt.name not in annotations:  # an option of two kinds joins the first
                annotations[opt.name] = opt.annotation
                setattr(cls, opt.name, _option_field(opt))
    cls.__annotations__ = annotations
    return cls


@dataclass
@_with_part_options
class TrainConfig:
    """All options of ``opzo train`` (defaults: OPZO on the embedded MNIST subset): the run's
    own, written below, and the options of the parts (see the module docstring); the options
    of a part registered after this class was made are read as ``cfg.<name>`` too (their
    default until set), and taken by the constructor, :meth:`from_dict` and :meth:`to_dict`.
    ``leak`` is another name of ``lif_lambda`` (every alias a part declares works so)."""

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
    limit_train: int | None = _opt(None, "use only the first N training samples", min=1)
    limit_test: int | None = _opt(None, "use only the first N test samples", min=1)
    # network
    hidden: list[int] = _opt([800, 800], "hidden layer sizes of the fully connected net, e.g. "
                             "800 800 (ignored when 'net' is given)", min=1)
    net: str | None = _opt(
        None, 'network string as in the OPZO paper, e.g. 128C3-AP2-256C3-AP2-512C3-FC (<n>C<k>: '
        'conv with n channels and a k x k kernel, scaled weight standardization; '
        '<n>C<k>s<s>p<p>: with stride s and padding p, e.g. 64C7s2; AP<k>: average pooling, '
        'AP<k>s<s>p<p> strided and padded, e.g. AP3s2p1; MP<k>: max pooling; AAP<n>: adaptive'
        ' average pooling to n x n; GAP: global average pooling; <n>: fully connected hidden '
        'layer; FC: the readout, last; a hidden token ending in + or +k adds the spikes of k '
        "layers back to its current: residual), or a name: conv5, conv9 (the paper's 5- and "
        '9-layer conv nets), conv9r, resnet18, resnet34 (residual, appendix D.5); unset = '
        "fully connected from 'hidden'")
    width: float = _opt(1.0, "multiplies the channels (and neurons) of every hidden layer of "
                        "'net' (e.g. 0.25 for a CPU-sized conv5)", min=1e-6)
    T: int = _opt(6, "number of time steps per sample (event datasets: the number of frames "
                  "or time bins each sample is cut into)", min=1)
    dropout: float = _opt(0.2, "dropout rate (mask fixed over the T steps)", min=0.0, max=0.99)
    init_scale: float = _opt(1.0, "hidden weights are torch's default initialisation times this "
                             "(sparse spike inputs need > 1 for the neurons to fire)", min=0.0)
    neuron: str = _opt("lif", "neuron model of the hidden layers. " + _described(NEURONS),
                       _Names(NEURONS.names))
    kernels: str = _opt("native", "how each step's neuron update, noise, dropout and local "
                        "derivative run: native (one fused C pass per layer, dropout masks "
                        "from the Philox generator; compiled on first use) or torch (torch "
                        "ops and torch's generator; with --noise-rng torch, the streams of "
                        "the results recorded before the native kernels)",
                        KERNELS)
    norm: str = _opt("none", "batch norm of every convolution's current before its neurons "
                     "(opzo.norm): bn (per-step batch statistics over batch and space, one "
                     "module shared by all steps, running averages for evaluation; every "
                     "method), tdbn (threshold-dependent BN, Zheng et al. 2021: statistics "
                     "over batch, time and space, scaled by alpha·V_th) or bn-all-t (BN along "
                     "all time steps, OPZO paper Table 13); tdbn and bn-all-t see the future "
                     "of a step: methods bptt, pzo and dfa-time only", NORMS)
    surrogate: str = _opt("sigmoid", "local derivative ψ. " + _described(SURROGATES),
                          _Names(SURROGATES.names))
    # learning rule
    method: str = _opt("opzo", "spatial credit assignment rule. " + _described(RULES)
                       + "; bptt: exact backpropagation through time, the offline reference; "
                       + "; ".join(f"{k}: {v}" for k, v in UNTRUNCATED_METHODS.items()),
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
    grad_steps: int = _opt(1, "trace ottt: write the weight gradients of this many time steps "
                           "in one product (0: all T) instead of one product per step; faster, "
                           "equal up to float rounding, 2·k·batch·n floats more per layer",
                           min=0)
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
    hw_seed: int = _opt(0, "seed of the fixed offsets of hw_noise_kind fixed, of the "
                        "per-neuron mismatch and of the stochastic update rounding (one chip)",
                        min=0)
    weight_bits: int | None = _opt(
        None, "the chip stores its weights in this many bits (opzo.chip): per layer a "
        "symmetric fixed-point grid, step max|W_l| / (2^(B-1) - 1) from the starting weights, "
        "biases on the same grid; the forward always uses them and every update is rounded "
        "onto the grid (update_rounding); unset: float weights. Fully connected nets",
        min=BITS_RANGE[0], max=BITS_RANGE[1])
    update_rounding: str = _opt("nearest", "how an update lands on the weight_bits grid: "
                                "nearest (an update below half a step is lost) or stochastic "
                                "(unbiased: small updates survive in expectation)", ROUNDINGS)
    state_bits: int | None = _opt(
        None, "the chip's membrane potential in this many bits: saturating fixed point, step "
        "V_th 2^(2-B), range [-2 V_th, 2 V_th), after the membrane update and before the "
        "threshold (LIF, fully connected nets); unset: float", min=BITS_RANGE[0],
        max=BITS_RANGE[1])
    hw_threshold_noise: float = _opt(
        0.0, "the chip's threshold mismatch: V_th,i = V_th (1 + s eps_i), eps ~ N(0, 1) drawn "
        "once per neuron from hw_seed (the learner keeps the nominal V_th)", min=0.0)
    hw_leak_noise: float = _opt(
        0.0, "the chip's leak mismatch: lambda_i = clip(lambda (1 + s eta_i), 0, 1), eta ~ "
        "N(0, 1) drawn once per neuron from hw_seed", min=0.0)
    chip: str = _opt(
        "none", "where the forward runs (opzo.chip): none (opzo's network; with state_bits or "
        "mismatch as 'opzo'), opzo (opzo's network as a chip behind the chip interface, the "
        "reference: equal to none bit for bit), or nir:FILE.nir (a NIR graph run by "
        "chip_sim); the rules learn from the chip's spikes, potentials and outputs alone")
    chip_sim: str = _opt("snntorch", "the simulator that runs --chip nir:FILE.nir",
                         SIMULATOR_NAMES)
    chip_variant: str = _opt("same", "the neuron the NIR chip runs: same (the graph's own "
                             "LIF) or a variant of opzo.chip_nir.VARIANTS")
    chip_grad_from: str = _opt(
        "chip", "where the rule's gradient comes from: chip (the chip's forward) or model "
        "(the host's nominal model: float neuron, no mismatch; only the update is applied "
        "to the chip, rounded onto its grid)", GRAD_FROM)
    init_from: str | None = _opt(
        None, "start from trained weights: a run folder or its checkpoint.pt (the weights "
        "only: a fresh optimizer, schedule and rule state; the network must match), or a NIR "
        "file (.nir; the network, its neurons and weights come from the file, the net, "
        "hidden and neuron options are not used; needs pip install 'opzo[nir]')")
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
    threads: int | None = _opt(
        None, "CPU threads of torch's ops and of the native kernels (default: torch's choice, "
        "one per usable core; 1 per process under torchrun / --nproc). The opzo command makes "
        "idle threads sleep, not spin (OMP_WAIT_POLICY=PASSIVE unless set), so a busy "
        "neighbour costs about 2x, not 40x; on a shared, busy machine --threads 1 is the "
        "steadiest. A run resumes exactly only on its recorded thread count", min=1)
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
    synops_convention: str = _opt(
        "exact", "how the SynOps of every evaluation (metrics.jsonl) count a spike's synapses: "
        "exact (every synapse inside the padded map: fewer at a convolution's borders) or "
        "paper (the OPZO paper's Table 7: firing rate x the dense fan-out C_out k^2/s^2 of "
        "an interior neuron for every neuron); equal for fully connected nets",
        ("exact", "paper"))
    # output
    out: str | None = _opt(None, "run folder (default: runs/<dataset>-<method>-<time>)")

    def __getattr__(self, name: str) -> Any:
        # only for a name that is no field: another name of an option, or the option of a
        # part registered after this class was made (its default until set)
        if name.startswith("__"):
            raise AttributeError(name)
        canonical = _aliases().get(name)
        if canonical is not None:
            return getattr(self, canonical)
        opt = _late_options().get(name)
        if opt is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return list(opt.default) if isinstance(opt.default, list) else opt.default

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _FIELD_NAMES:
            name = _aliases().get(name, name)
        object.__setattr__(self, name, value)

    def validate(self, complete: bool = True) -> TrainConfig:
        """Check every value against its option's choices, bounds and check; return self.

        With ``complete`` (the final, merged config) also check the options that depend on
        each other (a dataset needs its data_root, ...); a config file alone may leave those
        to the command line. Raises :class:`ConfigError` saying what is allowed.
        """
        for opt in config_options():
            wrong = opt.problem(getattr(self, opt.name))
            if wrong:
                raise ConfigError(f"option {opt.name!r} {wrong}")
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
            self._check_norm(tokens)
            self._check_chip(tokens)
            self._check_speed_options()
        return self

    def _check_speed_options(self) -> None:
        """``grad_steps`` and ``sparse_backward``: refused where they would change nothing."""
        steps = self.grad_steps
        if steps != 1:
            where = None
            if self.method == "bptt" or self.method in UNTRUNCATED_METHODS:
                where = f"method {self.method!r} (it has no online trace)"
            elif self.trace not in ("ottt", "f_ottt"):
                where = f"trace {self.trace!r} (only ottt and f_ottt stack their products)"
            elif self.update == "step":
                where = "update 'step' (the weights move after every step: one product a step)"
            if where:
                raise ConfigError(f"grad_steps {steps}: the weight gradient of several steps "
                                  f"in one product needs the ottt trace with update 'batch'; "
                                  f"not {where}: drop --grad-steps")
        sparse = getattr(self, "sparse_backward", "auto")
        entry = SURROGATES[self.surrogate] if self.surrogate in SURROGATES else None
        if sparse == "on" and entry is not None and not getattr(entry.factory, "sparse_psi",
                                                                  False):
            raise ConfigError(f"sparse_backward 'on': surrogate {self.surrogate!r} gives a "
                              "non-zero ψ almost everywhere, so there is nothing to skip; it "
                              "works with localzo and sparsegrad (or drop --sparse-backward)")

    def _check_chip(self, tokens: list | None) -> None:
        """The chip's options (:mod:`opzo.chip`): an online rule, a fully connected net."""
        chip = ChipConfig.from_options(self)
        if not chip.active:
            return
        problem = chip.problem()
        if problem:
            raise ConfigError(problem)
        if self.method == "bptt" or self.method in UNTRUNCATED_METHODS:
            raise ConfigError(f"the chip options (weight_bits, state_bits, hw_threshold_noise, "
                              f"hw_leak_noise, chip) train with an online rule; method "
                              f"{self.method!r} is not one: use opzo, dfa, dkp, zo or bp")
        if tokens is not None and any(t.kind != "dense" and t.kind != "readout"
                                      for t in tokens):
            raise ConfigError("the chip options take a fully connected network: use --hidden "
                              f"(or a net of <n> layers; got net {self.net!r})")
        if self.dropout:
            raise ConfigError("the chip options take no dropout: set dropout 0")
        if (chip.backend != "none" or chip.neuron_props) and chip.grad_from == "chip":
            if self.method in ("opzo", "zo") and not self.hw_noise and \
                    self.noise_position != "before":
                raise ConfigError("a chip takes the rule's perturbation on the synaptic "
                                  "current: set --noise-position before")

    def _check_norm(self, tokens: list | None) -> None:
        """Batch norm needs convolutions; statistics over all steps need the whole sequence."""
        if self.norm == "none":
            return
        if self.net is not None and self.net.strip().lower() == "nfresnet34":
            raise ConfigError("net 'nfresnet34' is normaliser-free by design: use norm 'none'")
        if tokens is None or not any(t.kind == "conv" for t in tokens):
            raise ConfigError(f"norm {self.norm!r} normalises convolutions; this network has "
                              "none: give a convolutional 'net' or norm 'none'")
        offline = self.method == "bptt" or self.method in UNTRUNCATED_METHODS
        if self.norm in SEQUENCE_NORMS and not offline:
            raise ConfigError(f"norm {self.norm!r} normalises over all time steps, so step t "
                              f"would use statistics of later steps: method {self.method!r} "
                              "learns online, one step at a time; use method 'bptt' (or pzo, "
                              "dfa-time), or norm 'bn' (per-step statistics)")
        if self.norm in SEQUENCE_NORMS and self.diagnostics and self.diag_reference != "bptt":
            raise ConfigError(f"norm {self.norm!r} normalises over all time steps, and the "
                              "diagnostics' reference gradient (diag_reference 'bp') is taken "
                              "online, one step at a time: use --diag-reference bptt")
        if self.norm == "bn" and self.method in UNTRUNCATED_METHODS:
            raise ConfigError(f"method {self.method!r} takes batch norm along all time steps "
                              "(norm 'bn-all-t' or 'tdbn', OPZO paper Table 13), not per-step "
                              "statistics (norm 'bn')")

    def _net_tokens(self) -> list | None:
        """The parsed network string, or None for the fully connected net of 'hidden'."""
        if self.net is None:
            return None
        from .nets import is_named, named_tokens  # the networks built by name (issue 26)
        from .netstring import parse_net

        if is_named(self.net):
            return named_tokens(self.net)
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
        elif self.method in UNTRUNCATED_METHODS:
            self._check_untruncated()
        if self.method != "bptt" and (self.readout != "sum" or self.detach_reset):
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

    def _check_untruncated(self) -> None:
        """What the untruncated methods of :mod:`opzo.pzo` (pzo, dfa-time) take: one
        process's offline batch update, no trace, no local learning, a LIF neuron; pzo's own
        noise after the neuron without antithetic pairs."""
        m = self.method
        if self.update == "step":
            raise ConfigError(f"method {m!r} is offline (every step's error reaches every "
                              "earlier step): it needs update 'batch'")
        if self.local_learning or self.igl_layer is not None:
            raise ConfigError("local learning and IGL add to an online spatial rule; "
                              f"method {m!r} takes neither")
        if self.trace != "ottt":
            raise ConfigError(f"method {m!r} takes each layer's temporal credit exactly "
                              f"(layer-local BPTT): it takes no trace (got trace {self.trace!r})")
        neuron = NEURONS[self.neuron].factory.from_options(
            **NEURONS.option_values(self.neuron, self))
        if not neuron.supports_untruncated_pzo():
            raise ConfigError(f"method {m!r} takes the error back through each layer's LIF "
                              f"neuron (leak and reset); neuron {self.neuron!r} is not LIF: "
                              "use neuron 'lif'")
        if self.hw_noise:
            raise ConfigError(f"option 'hw_noise' is not wired for method {m!r} (its feedback "
                              "would not see the chip's noise); train it without, or use "
                              "opzo / dfa / zo")
        if self.diagnostics:
            raise ConfigError(f"diagnostics compare an online rule's gradient with a "
                              f"reference; method {m!r} has no spatial rule: drop diagnostics")
        if self.freeze_m_after is not None:
            raise ConfigError(f"option 'freeze_m_after' freezes an online rule's feedback; "
                              f"method {m!r} does not offer it")
        if m == "pzo":
            if self.noise_position != "after":
                raise ConfigError("method 'pzo' injects its noise after the neuron only (before "
                                  "it, ψ would be counted twice; see opzo.pzo): set "
                                  "noise_position 'after'")
            if self.antithetic:
                raise ConfigError("method 'pzo' draws z afresh at every step (antithetic pairs "
                                  "correlate neighbouring steps and bias the lagged feedback): "
                                  "drop antithetic")

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
        """Every option by its name (``config.json``): the fields, then the options of the
        parts registered after this class was made."""
        return {**asdict(self), **{name: getattr(self, name) for name in _late_options()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config",
                  complete: bool = True) -> TrainConfig:
        """Build from a mapping (keys may use '-' or '_', and any name of an option);
        unknown keys are an error."""
        known = {opt.name: opt for opt in config_options()}
        aliases = _aliases()
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            name = aliases.get(name, name)
            if name not in known:
                raise ConfigError(
                    f"{source}: unknown key {key!r}; allowed keys: {sorted(known)}")
            if name in kwargs:
                raise ConfigError(f"{source}: key {key!r} names option {name!r}, which is "
                                  "given twice; give it once")
            kwargs[name] = _coerce(known[name], value, source)
        return cls(**kwargs).validate(complete)


_FIELD_NAMES = frozenset(f.name for f in fields(TrainConfig))
_dataclass_init = TrainConfig.__init__


def _init(self: TrainConfig, **options: Any) -> None:
    """The dataclass's constructor, which also takes any name of an option and the options
    of parts registered after the class was made."""
    aliases, late = _aliases(), _late_options()
    own = {}
    for key, value in options.items():
        name = key if key in _FIELD_NAMES else aliases.get(key, key)
        if name in own:
            raise TypeError(f"option {name!r} is given twice (as {key!r})")
        if name not in _FIELD_NAMES and name not in late:
            raise TypeError(f"TrainConfig got an unknown option {key!r}")
        own[name] = value
    _dataclass_init(self, **{k: v for k, v in own.items() if k in _FIELD_NAMES})
    for name, value in own.items():
        if name not in _FIELD_NAMES:
            object.__setattr__(self, name, value)


TrainConfig.__init__ = _init  # type: ignore[method-assign]


def _field_option(f: Any) -> Option:
    """The :class:`~opzo.registry.Option` that a field of the run's own describes."""
    meta = f.metadata
    if "option" in meta:
        return meta["option"]
    default = f.default if f.default is not MISSING else f.default_factory()
    kind = _field_kind(f)
    typ = {"list": list, "bool": bool, "int": int, "float": float, "str": str}[kind]
    return Option(f.name, default, meta["help"], type=typ, choices=meta.get("choices"),
                  min=meta.get("min"), max=meta.get("max"))


def _late_options() -> dict[str, Option]:
    """The options of parts registered after :class:`TrainConfig` was made, by name."""
    return {opt.name: opt for opt in part_options() if opt.name not in _FIELD_NAMES}


def config_options() -> tuple[Option, ...]:
    """Every option of ``opzo train``: the fields of :class:`TrainConfig` (the run's own and
    the parts'), then the options of the parts registered since."""
    late = _late_options()
    own = {f.name for f in fields(TrainConfig) if "option" not in f.metadata}
    taken = sorted((set(late) & {a for o in _FIELD_OPTIONS for a in o.aliases})
                   | ({o.name for o in part_options()} & own))
    if taken:
        raise ValueError(f"option {taken[0]!r} of a part is (another name of) an option of "
                         "the run itself: give it another name")
    return (*_FIELD_OPTIONS, *late.values())


def _aliases() -> dict[str, str]:
    """Every other name of an option -> the option's name (``leak`` -> ``lif_lambda``)."""
    return {alias: opt.name for opt in (*_FIELD_OPTIONS, *_late_options().values())
            for alias in opt.aliases}


#: the topics of ``opzo train --help``: every field of :class:`TrainConfig` in one of them, in
#: this order (a new option of the run must be added here too: ``tests/test_cli_help.py``
#: checks it). The options of the parts join the topic of their kind's option (``neuron``,
#: ``method``, ...) after it, or the topic their :class:`~opzo.registry.Option` names (those
#: of the parts registered when this module is imported are added below; a later part's
#: are placed by :func:`option_topic`); the options of the command line alone (--config,
#: --resume, ...) join them in ``opzo.cli``
OPTION_TOPICS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "data_root", "encoding", "latency_tau", "latency_theta",
             "limit_train", "limit_test"),
    "network and neuron": ("net", "hidden", "width", "T", "dropout", "init_scale", "neuron",
                           "kernels", "norm", "init_from"),
    "method: spatial rule and loss": ("method", "loss", "gamma", "tet_lambda", "tet_phi",
                                      "readout", "readout_leak", "detach_reset", "update",
                                      "local_learning", "ll_scale", "igl_layer", "igl_scale"),
    "method: temporal trace": ("trace", "grad_steps"),
    "method: local derivative": ("surrogate",),
    "method: noise (opzo, zo)": (),
    "optimisation": ("epochs", "batch_size", "eval_batch_size", "optimizer", "lr",
                     "weight_decay", "schedule", "seed"),
    "chip (OPZO paper section 5.4)": ("hw_noise", "hw_noise_kind", "hw_seed", "weight_bits",
                                      "update_rounding", "state_bits", "hw_threshold_noise",
                                      "hw_leak_noise", "chip", "chip_sim", "chip_variant",
                                      "chip_grad_from"),
    "run folder and checkpoints": ("out", "checkpoint_every", "checkpoint_minutes"),
    "devices and processes": ("device", "threads"),
    "diagnostics and logging": ("diagnostics", "diag_every", "diag_reference", "tensorboard",
                                "tensorboard_every", "synops_convention"),
}


def _part_topics() -> dict[str, str]:
    """Every option of a part registered now -> its topic of ``opzo train --help``."""
    topics: dict[str, str] = {}
    for kind, registry in PART_KINDS.items():
        for opt in registry.options():
            topic = opt.topic or _own_topic(kind)
            if topic not in OPTION_TOPICS:
                raise KeyError(f"option {opt.name!r} names the topic {topic!r}; topics: "
                               f"{list(OPTION_TOPICS)}")
            topics.setdefault(opt.name, topic)
    return topics


def _own_topic(name: str) -> str:
    for topic, names in _OWN_TOPICS.items():
        if name in names:
            return topic
    raise KeyError(f"config field {name!r} has no topic: add it to opzo.config.OPTION_TOPICS")


def option_topic(name: str) -> str:
    """The topic of ``opzo train --help`` that lists the option ``name``."""
    for topic, names in OPTION_TOPICS.items():
        if name in names:
            return topic
    topic = _part_topics().get(name)
    if topic is None:
        raise KeyError(f"config field {name!r} has no topic: add it to "
                       "opzo.config.OPTION_TOPICS")
    return topic


def _place_part_options() -> None:
    """Add the options of the parts registered now to :data:`OPTION_TOPICS`: after the
    option of their kind when in its topic, else at the end of theirs."""
    for name, topic in _part_topics().items():
        names = list(OPTION_TOPICS[topic])
        kind = next(k for k, r in PART_KINDS.items() if name in {o.name for o in r.options()})
        after = [i for i, n in enumerate(names) if n == kind or n in _PLACED.get(kind, ())]
        names.insert(after[-1] + 1 if after else len(names), name)
        _PLACED.setdefault(kind, []).append(name)
        OPTION_TOPICS[topic] = tuple(names)


_OWN_TOPICS = dict(OPTION_TOPICS)
_PLACED: dict[str, list[str]] = {}
_place_part_options()


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


def _coerce(opt: Option, value: Any, source: str) -> Any:
    kind = opt.kind
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
            f"{source}: option {opt.name!r} expects {kind}, got {value!r}") from None


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
    """Add one ``--option`` per option (defaults left as None = not given; an option's other
    names are flags too: ``--leak``), each in the argument group of its topic (``groups``:
    from :func:`add_argument_groups`, made here when not given)."""
    if groups is None:
        groups = add_argument_groups(parser)
    for opt in config_options():
        group = groups[option_topic(opt.name)]
        flags = ["--" + n.replace("_", "-") for n in (opt.name, *opt.aliases)]
        help_text = f"{opt.help} (default: {opt.default})"
        if opt.name in PART_KINDS:  # the parts registered now, with their descriptions
            help_text = help_text.replace(_DESCRIBED_AT_IMPORT[opt.name],
                                          _described(PART_KINDS[opt.name]))
        if opt.kind == "bool":
            group.add_argument(*flags, dest=opt.name, default=None,
                               action=argparse.BooleanOptionalAction, help=help_text)
        elif opt.kind == "list":
            group.add_argument(*flags, dest=opt.name, default=None, nargs="+", type=int,
                               metavar="N", help=help_text)
        else:
            typ = {"int": int, "float": float, "str": str}[opt.kind]
            group.add_argument(*flags, dest=opt.name, default=None, type=typ,
                               choices=opt.choices, help=help_text)


def config_from_args(args: argparse.Namespace, config_file: str | None) -> TrainConfig:
    """Defaults < config file < explicit command-line options."""
    data: dict[str, Any] = {}
    if config_file:
        data.update(load_config_file(config_file))
    source = config_file or "command line"
    merged = (TrainConfig.from_dict(data, source=source, complete=False).to_dict()
              if data else {})
    for opt in config_options():
        value = getattr(args, opt.name, None)
        if value is not None:
            merged[opt.name] = value
    cfg = TrainConfig.from_dict(merged, source="options")
    if cfg.data_root and DATASETS[cfg.dataset].builtin:  # it would be recorded, never read
        raise ConfigError(f"dataset {cfg.dataset!r} ships with the package and reads no "
                          f"data_root ({cfg.data_root}): drop --data-root (or data_root from "
                          "the config file), or name the dataset that folder holds with "
                          "--dataset")
    return cfg


_FIELD_OPTIONS: tuple[Option, ...] = tuple(_field_option(f) for f in fields(TrainConfig))

#: the parts' descriptions as the help texts above were written (at import): ``--help``
#: replaces them by the registries' descriptions at the time it is asked (a part registered
#: later, by a plugin or a test, is described too)
_DESCRIBED_AT_IMPORT: dict[str, str] = {k: _described(r) for k, r in PART_KINDS.items()}
