"""On-chip learning: a low-precision chip, and a chip behind a forward-only interface.

OPZO exists for on-chip learning: it needs only a forward pass with noise and a direct
feedback, so it applies to black-box or non-differentiable hardware (OPZO paper, section 1;
its section 4.4 puts the perturbation on the synaptic current, "before the neuron"). This
module makes opzo's chip a chip rather than its own float32 model.

**A low-precision chip** (:class:`ChipConfig`; the options ``weight_bits``,
``update_rounding``, ``state_bits``, ``hw_threshold_noise``, ``hw_leak_noise``, ``hw_seed``):

* weights on a B-bit grid (:class:`WeightGrid`): per layer l (every hidden layer and the
  readout) one scale s_l = max|W_l| / (2^(B−1) − 1), fixed when the chip is set up from the
  starting weights (checkpointed, so a resume is exact); the stored weights are
  W_l = s_l q with integers q ∈ [−(2^(B−1) − 1), 2^(B−1) − 1]. The bias b_l is one more
  synapse, from an input that is always 1, so it lies on the same grid (same s_l, same
  saturation). The host's parameters ARE the chip's weights: they are put on the grid when
  the chip is set up (nearest rounding), and after every optimizer step the float value the
  optimizer wrote, W' = s_l (q + Δ), goes back on it, q ← clip(q + R(Δ)), R the
  ``update_rounding``: ``nearest`` (round half to even: an update below half a step is lost)
  or ``stochastic`` (⌊Δ⌋ + Bernoulli(Δ − ⌊Δ⌋), unbiased, E[R(Δ)] = Δ, so small updates
  survive in expectation; the Bernoulli draws come from a generator seeded by ``hw_seed``,
  checkpointed). The optimizer's float state (AdamW's moments) is the host's.
* a saturating fixed-point membrane (``state_bits`` B): u on the grid Δ_u = V_th · 2^(2−B),
  u = k Δ_u, k ∈ [−2^(B−1), 2^(B−1) − 1], i.e. the range [−2 V_th, 2 V_th − Δ_u] (B = 8:
  steps of V_th/64). Applied after the membrane update of eq. 1 and before the threshold
  compare: u[t+1] = Q(λ_i (u[t] − V_th,i s[t]) + I[t+1]), Q rounding to the nearest grid
  point (half to even) and saturating.
* per-neuron mismatch, drawn once from ``hw_seed`` (one chip), for every hidden neuron i:
  V_th,i = max(0, V_th (1 + σ_th ε_i)), λ_i = clip(λ (1 + σ_λ η_i), 0, 1), ε, η ~ N(0, 1)
  (per layer: ε_l then η_l, n_l values each). The host's learner does not know the chip: it
  keeps computing ψ(u − V_th) with the NOMINAL V_th from the potentials the chip reports.

Membrane quantization and mismatch are properties of the chip's LIF neuron on fully
connected networks (:class:`OpzoChip` runs them on torch ops; the fused native LIF kernel
cannot). The weight grid needs a fully connected network too (a standardized conv weight is
not the weight the chip would store).

**A chip behind an interface** (:class:`ChipBackend`): given the weights
(:meth:`~ChipBackend.write_weights`) and an input chunk, a forward-only backend runs T steps
and returns only what on-chip learning can read: each hidden layer's spikes and membrane
potentials and the outputs (:class:`ChipStep`). The online learner (:class:`opzo.learner
.OnlineLearner` with ``chip=``) takes every step's forward from the chip, with the rule's
perturbation passed as current noise, rebuilds the step record the rules read (FC: the
input of layer l is the spikes of layer l − 1, or x; the readout's is the last spikes) and
writes its gradient to ``.grad``; the optimizer step and the grid give the new weights, which
go back to the chip. Backends:

* :class:`OpzoChip` (``--chip opzo``, name ``"opzo"``): opzo's own network, the reference.
  Without chip properties it runs :meth:`opzo.network.SpikingNet.step` on a copy of the
  network, so training through it equals today's training bit for bit
  (``tests/test_chip.py``); with them, the quantized, mismatched LIF above.
* ``opzo.chip_nir.NirChip`` (``--chip nir:FILE.nir --chip-sim snntorch``): a NIR graph run
  by another simulator (imported here lazily).

Without ``--chip`` but with ``state_bits`` or mismatch, the chip is :class:`OpzoChip` (those
are properties of opzo's own network); with ``weight_bits`` alone the host's network, its
weights on the grid, is the chip (the learner's usual path). ``chip_grad_from = "model"``:
the rule's gradient comes from the host's nominal model (float neuron, no mismatch, the
chip's weights) and only the update lands on the chip (the study's "BP on the model, applied
to the chip" baseline); the test accuracy is the chip's.

Python API for a study script::

    from opzo.chip import ChipConfig, setup_chip, evaluate_on_chip
    chip = setup_chip(net, ChipConfig(weight_bits=4, state_bits=8, threshold_noise=0.1))
    learner = OnlineLearner(net, rule, chip=chip.backend)
    chip.attach(optimizer, net)      # after every optimizer step: onto the grid, to the chip
    acc = evaluate_on_chip(chip.backend, net, x, y, T)

``make_chip(net, options)`` gives the backend alone (or None); ``options`` is any object
with the config's option names as attributes (a :class:`~opzo.config.TrainConfig`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from .batch import BatchStats, check_labels, score_steps
from .energy import SynOpsCounter
from .layers import DenseLayer
from .losses import InstantLoss
from .network import NetState, SpikingNet, StepRecord
from .neurons import LIF

#: the bounds of ``weight_bits`` and ``state_bits``
BITS_RANGE = (2, 16)
ROUNDINGS = ("nearest", "stochastic")
GRAD_FROM = ("chip", "model")
#: the simulators of ``--chip nir:`` (``opzo.chip_nir.SIMULATORS`` is the list that counts)
SIMULATOR_NAMES = ("snntorch", "spikingjelly", "norse")


@dataclass
class ChipStep:
    """What on-chip learning can read at one time step (host float32 tensors)."""

    #: membrane potential u_l[t] of every hidden layer, (B, n_l) flattened
    u: list[Tensor]
    #: spikes s_l[t] of every hidden layer, (B, n_l)
    spikes: list[Tensor]
    #: the readout o[t], (B, C)
    output: Tensor
    #: optional: the chip's own local-derivative readout m_l ⊙ ψ(u_l[t] − V_th) per hidden
    #: layer (None, or None entries: the host computes ψ from ``u`` with the nominal V_th)
    dpsi: list[Tensor | None] | None = None
    #: optional: per hidden layer the threshold the spikes were compared with (a float, or a
    #: (B, n_l) tensor for a neuron whose threshold moves, e.g. ALIF; None: the nominal V_th)
    thresholds: list[float | Tensor] | None = None


@runtime_checkable
class ChipBackend(Protocol):
    """A forward-only chip: weights in, T steps run, spikes / potentials / outputs out."""

    name: str

    def write_weights(self, net: SpikingNet) -> None:
        """Copy the host network's current parameters (every hidden layer's op weight/bias
        and the readout's) onto the chip. Called once at start and after every optimizer
        step."""
        ...

    def reset(self, batch: int) -> None:
        """All neuron states to rest for a new batch of ``batch`` samples."""
        ...

    def run(self, x: Tensor, noise: list[list[Tensor]] | None = None,
            noise_scale: float = 1.0) -> list[ChipStep]:
        """Advance ``x.shape[0]`` time steps from the state the last run (or reset) left.
        ``x``: (Tc, B, F) flattened per-step input. ``noise``: per step, per hidden layer a
        (B, n_l) tensor z, added as noise_scale * z to that layer's synaptic current before
        the neuron (None: none). Returns one ChipStep per step."""
        ...


@dataclass
class ChipConfig:
    """The chip's properties (see the module docstring); every default is "no property"."""

    weight_bits: int | None = None
    update_rounding: str = "nearest"
    state_bits: int | None = None
    threshold_noise: float = 0.0
    leak_noise: float = 0.0
    seed: int = 0
    #: "none", "opzo" or "nir:FILE.nir"
    backend: str = "none"
    sim: str = "snntorch"
    variant: str = "same"
    grad_from: str = "chip"

    @classmethod
    def from_options(cls, o: Any) -> ChipConfig:
        """From any object with the config's option names as attributes."""
        return cls(weight_bits=getattr(o, "weight_bits", None),
                   update_rounding=getattr(o, "update_rounding", "nearest"),
                   state_bits=getattr(o, "state_bits", None),
                   threshold_noise=float(getattr(o, "hw_threshold_noise", 0.0)),
                   leak_noise=float(getattr(o, "hw_leak_noise", 0.0)),
                   seed=int(getattr(o, "hw_seed", 0)),
                   backend=getattr(o, "chip", "none") or "none",
                   sim=getattr(o, "chip_sim", "snntorch"),
                   variant=getattr(o, "chip_variant", "same"),
                   grad_from=getattr(o, "chip_grad_from", "chip"))

    @property
    def neuron_props(self) -> bool:
        """Whether the chip's neuron differs from opzo's (membrane bits or mismatch)."""
        return self.state_bits is not None or bool(self.threshold_noise or self.leak_noise)

    @property
    def active(self) -> bool:
        """Whether there is a chip at all (any property, or a backend)."""
        return (self.backend != "none" or self.weight_bits is not None or self.neuron_props)

    def problem(self) -> str | None:
        """What is wrong with the values, in words (None: nothing)."""
        lo, hi = BITS_RANGE
        for name, bits in (("weight_bits", self.weight_bits), ("state_bits", self.state_bits)):
            if bits is not None and not (isinstance(bits, int) and lo <= bits <= hi):
                return f"{name} = {bits}: a chip stores {lo} to {hi} bits"
        if self.update_rounding not in ROUNDINGS:
            return f"update_rounding {self.update_rounding!r}: choose one of {ROUNDINGS}"
        if self.grad_from not in GRAD_FROM:
            return f"chip_grad_from {self.grad_from!r}: choose one of {GRAD_FROM}"
        for name, v in (("hw_threshold_noise", self.threshold_noise),
                        ("hw_leak_noise", self.leak_noise)):
            if not (math.isfinite(v) and v >= 0):
                return f"{name} = {v}: a mismatch scale is a finite number >= 0"
        b = self.backend
        if b not in ("none", "opzo") and not (b.startswith("nir:") and len(b) > 4):
            return (f"chip {b!r}: use none, opzo (opzo's own network) or nir:FILE.nir "
                    "(a NIR graph run by --chip-sim)")
        if self.variant != "same" and not b.startswith("nir:"):
            return (f"chip_variant {self.variant!r} is the neuron of a NIR chip run by "
                    f"--chip-sim; chip {b!r} has none: use --chip nir:FILE.nir or drop it")
        if b.startswith("nir:") and self.neuron_props:
            return ("state_bits and the hw_threshold_noise / hw_leak_noise mismatch are "
                    f"properties of opzo's own chip; chip {b!r} runs its graph's own neurons: "
                    "drop them or use --chip opzo")
        return None


def fc_problem(net: SpikingNet) -> str | None:
    """Why ``net`` cannot be a chip here (None: it can): the chip path is fully connected,
    without pooling, shortcuts, dropout or batch norm."""
    layers = [*net.hidden, net.readout]
    if any(type(layer) is not DenseLayer or layer.pool is not None for layer in layers):
        return (f"the chip path takes fully connected networks only (dense layers without "
                f"pooling); this one is {net.spec}: use --hidden or a net of <n> layers")
    if any(j is not None for j in net.skips) or any(a is not None for a in net.adds):
        return f"the chip path takes no residual shortcuts ({net.spec})"
    return None


def check_fc(net: SpikingNet) -> None:
    """ValueError when ``net`` cannot be a chip (:func:`fc_problem`)."""
    problem = fc_problem(net)
    if problem:
        raise ValueError(problem)


def _layers(net: SpikingNet) -> list[DenseLayer]:
    return [*net.hidden, net.readout]  # type: ignore[list-item]


def round_to_grid(v: Tensor, rounding: str, generator: torch.Generator | None = None
                  ) -> Tensor:
    """``v`` (in grid steps) rounded to whole steps: ``nearest`` (half to even) or
    ``stochastic`` (⌊v⌋ + Bernoulli(v − ⌊v⌋), E = v; uniforms from ``generator`` on the CPU).
    Same dtype and device as ``v``."""
    if rounding == "nearest":
        return torch.round(v)
    if rounding != "stochastic":
        raise ValueError(f"unknown rounding {rounding!r}; choose one of {ROUNDINGS}")
    low = torch.floor(v)
    r = torch.rand(v.shape, generator=generator, dtype=torch.float64, device="cpu")
    return low + (r.to(v.device) < (v - low).double()).to(v.dtype)


class WeightGrid:
    """The chip's B-bit weight grid, per layer (see the module docstring). The host's
    parameters stay on it: :meth:`setup_` puts them there, :meth:`apply_` after every
    optimizer step."""

    def __init__(self, bits: int, rounding: str = "nearest", seed: int = 0) -> None:
        lo, hi = BITS_RANGE
        if not lo <= bits <= hi:
            raise ValueError(f"weight_bits = {bits}: a chip stores {lo} to {hi} bits")
        if rounding not in ROUNDINGS:
            raise ValueError(f"unknown update rounding {rounding!r}; choose one of {ROUNDINGS}")
        self.bits = int(bits)
        self.rounding = rounding
        #: the largest code, 2^(B−1) − 1
        self.qmax = 2 ** (self.bits - 1) - 1
        #: per layer (hidden layers, then the readout) the step s_l
        self.scales: list[float] = []
        #: the integer codes q of every parameter, as the layers' dtype (exact below 2^24)
        self.codes: list[list[Tensor]] = []
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed) + 104729)

    @staticmethod
    def _params(layer: DenseLayer) -> list[Tensor]:
        return [p for p in (layer.weight, layer.bias) if p is not None]

    @torch.no_grad()
    def setup_(self, net: SpikingNet) -> None:
        """The scales from the current weights, and every weight and bias to its nearest
        grid point."""
        check_fc(net)
        self.scales = []
        for layer in _layers(net):
            top = float(layer.weight.detach().abs().max())
            self.scales.append((top if top > 0 and math.isfinite(top) else 1.0) / self.qmax)
        self.codes = [[self._clip(torch.round(p / s)) for p in self._params(layer)]
                      for layer, s in zip(_layers(net), self.scales)]
        self._write(net)

    def _clip(self, q: Tensor) -> Tensor:
        return q.clamp_(-self.qmax, self.qmax)

    def _write(self, net: SpikingNet) -> None:
        for layer, s, codes in zip(_layers(net), self.scales, self.codes):
            for p, q in zip(self._params(layer), codes):
                p.copy_(q * s)

    @torch.no_grad()
    def apply_(self, net: SpikingNet) -> None:
        """After an optimizer step: q ← clip(q + R(Δ)), Δ = (W' − s q)/s the update in grid
        steps (exactly 0 where the optimizer changed nothing), and W = s q."""
        for layer, s, codes in zip(_layers(net), self.scales, self.codes):
            for p, q in zip(self._params(layer), codes):
                delta = (p - q * s).double().div_(s)
                q.add_(round_to_grid(delta, self.rounding, self.generator).to(q.dtype))
                self._clip(q)
                p.copy_(q * s)

    def state_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "scales": list(self.scales),
                "generator": self.generator.get_state()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any], net: SpikingNet) -> None:
        """The checkpoint's scales and generator; the codes from ``net``'s (loaded) weights."""
        if int(state["bits"]) != self.bits or len(state["scales"]) != len(_layers(net)):
            raise ValueError(f"the checkpoint's weight grid ({state['bits']} bits, "
                             f"{len(state['scales'])} layers) does not fit this chip")
        self.scales = [float(s) for s in state["scales"]]
        self.generator.set_state(state["generator"])
        self.codes = [[self._clip(torch.round(p / s)) for p in self._params(layer)]
                      for layer, s in zip(_layers(net), self.scales)]


def state_grid(v_th: float, bits: int) -> tuple[float, int, int]:
    """The fixed-point membrane: (Δ_u, k_min, k_max) = (V_th 2^(2−B), −2^(B−1), 2^(B−1) − 1)."""
    return v_th * 2.0 ** (2 - bits), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def mismatch(net: SpikingNet, threshold_noise: float, leak_noise: float, seed: int
             ) -> tuple[list[Tensor], list[Tensor]]:
    """Per hidden layer the chip's thresholds V_th,i and leaks λ_i (module docstring), drawn
    from ``seed`` on the CPU (ε_l then η_l per layer), on the network's device and dtype."""
    neuron = net.neuron
    weight = net.readout.weight
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    v_ths, lams = [], []
    for n in net.hidden_sizes:
        eps = torch.randn(n, generator=g, dtype=torch.float64)
        eta = torch.randn(n, generator=g, dtype=torch.float64)
        v_th = (neuron.v_th * (1.0 + threshold_noise * eps)).clamp_min(0.0)
        lam = (neuron.lam * (1.0 + leak_noise * eta)).clamp(0.0, 1.0)
        v_ths.append(v_th.to(weight.device, weight.dtype))
        lams.append(lam.to(weight.device, weight.dtype))
    return v_ths, lams


class OpzoChip:
    """opzo's own network as a chip (the reference backend, name ``"opzo"``): a copy of the
    host network, its weights written from the host's. Without ``state_bits`` and mismatch
    every step is :meth:`SpikingNet.step` (the chip's Gaussian noise ``net.hardware``
    included), so results equal the host's bit for bit; with them, a LIF step on torch ops
    with per-neuron V_th,i, λ_i and the fixed-point membrane (module docstring)."""

    name = "opzo"

    def __init__(self, net: SpikingNet, state_bits: int | None = None,
                 threshold_noise: float = 0.0, leak_noise: float = 0.0, seed: int = 0) -> None:
        check_fc(net)
        self.custom = state_bits is not None or bool(threshold_noise or leak_noise)
        if self.custom:
            n = net.neuron
            if not (isinstance(n, LIF) and n.uses_native_kernel()):
                raise ValueError(f"state_bits and the mismatch options model the chip's LIF "
                                 f"neuron; neuron {n.name!r} is not LIF: use --neuron lif")
            lo, hi = BITS_RANGE
            if state_bits is not None and not lo <= state_bits <= hi:
                raise ValueError(f"state_bits = {state_bits}: a chip stores {lo} to {hi} bits")
        chip = copy.deepcopy(net)
        for p in chip.parameters():
            p.grad = None
            p.requires_grad_(False)
        self.net = chip
        self.state_bits = state_bits
        self.v_th, self.lam = mismatch(net, threshold_noise, leak_noise, seed)
        self.state: NetState | None = None

    def write_weights(self, net: SpikingNet) -> None:
        with torch.no_grad():
            for dst, src in zip(self.net.parameters(), net.parameters()):
                dst.copy_(src)

    def reset(self, batch: int) -> None:
        like = self.net.readout.weight
        self.state = self.net.initial_state(batch, like)

    def run(self, x: Tensor, noise: list[list[Tensor]] | None = None,
            noise_scale: float = 1.0) -> list[ChipStep]:
        if self.state is None:
            raise RuntimeError("chip.run before chip.reset(batch)")
        steps = []
        with torch.no_grad():
            for t in range(x.shape[0]):
                z = None if noise is None else noise[t]
                if not self.custom:
                    o, rec = self.net.step(self.state, x[t], noise=z, noise_scale=noise_scale,
                                           noise_position="before", local_derivative=True)
                    steps.append(ChipStep(list(rec.u), list(rec.spikes), o, dpsi=rec.dpsi,
                                          thresholds=rec.thresholds))
                else:
                    steps.append(self._step(x[t], z, noise_scale))
        return steps

    def _step(self, x_t: Tensor, z: list[Tensor] | None, alpha: float) -> ChipStep:
        """One step of the quantized, mismatched LIF chip (module docstring)."""
        net, state = self.net, self.state
        assert state is not None
        hardware = net._chip_noise(z, after=False)
        zero_reset = net.neuron.reset == "zero"
        grid = (None if self.state_bits is None
                else state_grid(net.neuron.v_th, self.state_bits))
        inp = x_t
        us, spikes = [], []
        for l, layer in enumerate(net.hidden):
            current = layer.op(layer.op_input(inp))
            if hardware is not None:
                current = hardware.perturb_(current, l, True)
            if z is not None:
                current = current.add_(z[l], alpha=alpha)
            u, s = state.u[l], state.s[l]
            lam, v_th = self.lam[l], self.v_th[l]
            kept = u * (1.0 - s) if zero_reset else u - v_th * s
            u = current.add_(lam * kept)
            if grid is not None:
                step, k_lo, k_hi = grid
                u = torch.round(u / step).clamp_(k_lo, k_hi).mul_(step)
            s = (u > v_th).to(u.dtype)
            state.u[l], state.s[l] = u, s
            us.append(u)
            spikes.append(s)
            inp = s
        o = net.readout.op(net.readout.op_input(inp))
        return ChipStep(us, spikes, o)


#: chip backends named ``SCHEME:ARGUMENT`` on the command line (``--chip nir:FILE.nir``):
#: scheme -> factory ``(ChipConfig, host net) -> ChipBackend``, ValueError (one line) for what
#: it cannot run. ``opzo.chip_nir`` registers ``nir`` when it is imported (the runs layer,
#: ``opzo.train`` and the command line, import it; ARCHITECTURE.md).
BACKENDS: dict[str, Callable[[ChipConfig, SpikingNet], ChipBackend]] = {}


def register_backend(scheme: str, factory: Callable[[ChipConfig, SpikingNet], ChipBackend]
                     ) -> None:
    """Make ``--chip SCHEME:ARGUMENT`` build its backend with ``factory(cfg, net)``."""
    BACKENDS[scheme] = factory


def _foreign_chip(cfg: ChipConfig, net: SpikingNet) -> ChipBackend:
    """The registered backend of ``cfg.backend`` = ``SCHEME:ARGUMENT``."""
    scheme = cfg.backend.split(":", 1)[0]
    factory = BACKENDS.get(scheme)
    if factory is None:
        raise ValueError(f"--chip {cfg.backend}: no chip backend {scheme!r} is loaded (the "
                         f"NIR backend registers itself on 'import opzo.chip_nir')")
    return factory(cfg, net)


def make_chip(net: SpikingNet, options: Any) -> ChipBackend | None:
    """The chip backend of ``options`` (a :class:`ChipConfig` or any object with the
    config's option names) for the host network ``net``: :class:`OpzoChip` for ``opzo`` or
    when the chip's neuron has properties, ``NirChip`` for ``nir:FILE``, else None. Its
    weights are written from ``net``. ValueError (one line) for what cannot be run; the
    backend's shapes are checked on one step (:func:`check_shapes`)."""
    cfg = options if isinstance(options, ChipConfig) else ChipConfig.from_options(options)
    problem = cfg.problem()
    if problem:
        raise ValueError(problem)
    backend: ChipBackend
    if cfg.backend.startswith("nir:"):
        check_fc(net)
        like = net.readout.weight
        # a simulator's modules may draw their own initial weights: the run's random
        # stream (the rule's feedback, the data order) stays what it is without a chip
        with torch.random.fork_rng(devices=[like.device] if like.device.type == "cuda" else []):
            backend = _foreign_chip(cfg, net)
    elif cfg.backend == "opzo" or cfg.neuron_props:
        backend = OpzoChip(net, cfg.state_bits, cfg.threshold_noise, cfg.leak_noise, cfg.seed)
    else:
        return None
    backend.write_weights(net)
    check_shapes(backend, net)
    return backend


def check_shapes(chip: ChipBackend, net: SpikingNet) -> None:
    """One step of one zero input on the chip (the random generators put back as they were):
    ValueError naming what does not fit when it reports other shapes than ``net``'s."""
    like = net.readout.weight
    devices = [like.device] if like.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        chip.reset(1)
        run_step(chip, net, torch.zeros(1, net.num_inputs, dtype=like.dtype, device=like.device))


def run_step(chip: ChipBackend, net: SpikingNet, x_t: Tensor, noise: list[Tensor] | None = None,
             noise_scale: float = 1.0) -> ChipStep:
    """One step of the chip on the (B, F) input ``x_t`` (``noise``: per hidden layer, on the
    currents), checked against ``net``'s shapes (:func:`check_step`)."""
    steps = chip.run(x_t.unsqueeze(0), noise=None if noise is None else [noise],
                     noise_scale=noise_scale)
    if len(steps) != 1:
        raise ValueError(f"chip {chip.name!r} returned {len(steps)} steps for 1")
    check_step(chip, net, steps[0], x_t.shape[0])
    return steps[0]


def check_step(chip: ChipBackend, net: SpikingNet, step: ChipStep, batch: int) -> None:
    """ValueError (one line) when a chip's step does not have the network's shapes."""
    sizes = list(net.hidden_sizes)
    want = [(batch, n) for n in sizes]
    for what, got in (("potentials", step.u), ("spikes", step.spikes)):
        shapes = [tuple(t.shape) for t in got]
        if shapes != want:
            raise ValueError(f"chip {chip.name!r} returns {what} of shapes {shapes}; the "
                             f"network {net.describe()} has hidden layers {want}: export the "
                             "graph from this network")
    if tuple(step.output.shape) != (batch, net.num_outputs):
        raise ValueError(f"chip {chip.name!r} returns outputs of shape "
                         f"{tuple(step.output.shape)}; the network has "
                         f"{(batch, net.num_outputs)}")


def chip_record(net: SpikingNet, x_t: Tensor, step: ChipStep) -> StepRecord:
    """The step record the rules and traces read, rebuilt from what the chip reported (FC:
    layer l's input is the spikes of layer l − 1, or x; the readout's the last spikes; the
    local derivative ψ(u − V_th) at the NOMINAL V_th unless the chip reads it out)."""
    spikes = list(step.spikes)
    dpsi = getattr(step, "dpsi", None)
    thresholds = getattr(step, "thresholds", None)
    return StepRecord(list(step.u), spikes, spikes, None, net.surrogate, net.neuron.v_th,
                      None, inputs=[x_t, *spikes[:-1]], readout_in=spikes[-1],
                      dpsi=None if dpsi is None else list(dpsi),
                      thresholds=None if thresholds is None else list(thresholds))


class ChipSetup:
    """A run's chip: its :class:`ChipConfig`, its backend (None: the host's network is the
    chip) and its weight grid (None: float weights)."""

    def __init__(self, config: ChipConfig, backend: ChipBackend | None,
                 grid: WeightGrid | None) -> None:
        self.config = config
        self.backend = backend
        self.grid = grid

    @property
    def learner_chip(self) -> ChipBackend | None:
        """The backend the learner takes its forward from (None with grad_from "model")."""
        return self.backend if self.config.grad_from == "chip" else None

    def after_update(self, net: SpikingNet) -> None:
        """After an optimizer step: the weights onto the grid, then onto the chip."""
        if self.grid is not None:
            self.grid.apply_(net)
        if self.backend is not None:
            self.backend.write_weights(net)

    def attach(self, optimizer: torch.optim.Optimizer, net: SpikingNet) -> Callable[[], None]:
        """Run :meth:`after_update` after every ``optimizer.step()``; returns the remover."""
        handle = optimizer.register_step_post_hook(lambda opt, args, kwargs:
                                                   self.after_update(net))
        return handle.remove

    def state_dict(self) -> dict[str, Any]:
        return {"grid": self.grid.state_dict() if self.grid is not None else None}

    def load_state_dict(self, state: dict[str, Any] | None, net: SpikingNet) -> None:
        """The grid's checkpointed scales and generator, and ``net``'s weights to the chip."""
        if self.grid is not None:
            if not state or state.get("grid") is None:
                raise ValueError("the checkpoint holds no weight grid for weight_bits")
            self.grid.load_state_dict(state["grid"], net)
        if self.backend is not None:
            self.backend.write_weights(net)


def setup_chip(net: SpikingNet, options: Any, grid_state: dict[str, Any] | None = None
               ) -> ChipSetup | None:
    """The chip of ``options`` for ``net`` (None: no chip option is set): the weight grid
    set up from ``net``'s weights (which it rounds, nearest; with ``grid_state``, a
    checkpoint's grid of the same bits, onto that grid), then the backend."""
    cfg = options if isinstance(options, ChipConfig) else ChipConfig.from_options(options)
    if not cfg.active:
        return None
    problem = cfg.problem()
    if problem:
        raise ValueError(problem)
    check_fc(net)
    grid = None
    if cfg.weight_bits is not None:
        grid = WeightGrid(cfg.weight_bits, cfg.update_rounding, cfg.seed)
        if grid_state is not None and int(grid_state.get("bits", -1)) == cfg.weight_bits:
            grid.load_state_dict(grid_state, net)
            with torch.no_grad():
                grid._write(net)
        else:
            grid.setup_(net)
    return ChipSetup(cfg, make_chip(net, cfg), grid)


@torch.no_grad()
def evaluate_batch_on_chip(chip: ChipBackend, net: SpikingNet, x: Tensor, y: Tensor,
                           loss: InstantLoss, T: int | None = None,
                           synops: SynOpsCounter | None = None,
                           readout: Any = None) -> BatchStats:
    """Inference on the chip (no perturbation) of one batch, as
    :func:`opzo.learner.evaluate_batch`: the loss of Σ_t o[t]/T terms, the accuracy of
    Σ_t o[t] (with ``readout``, a max-over-time readout, the loss and the class of its
    scores), the spike counts per hidden layer (also into ``synops``)."""
    x, T = net.prepare_input(x, T)
    batch = x.shape[0] if x.dim() == 2 else x.shape[1]
    check_labels(y, batch, net.num_outputs, x)
    xs = x.unsqueeze(0).expand(T, *x.shape) if x.dim() == 2 else x
    chip.reset(batch)
    return score_steps(((step.output, step.spikes) for step in chip.run(xs)), y, loss, T,
                       net.hidden_sizes, readout, synops)


def evaluate_on_chip(chip: ChipBackend, net: SpikingNet, x: Tensor, y: Tensor,
                     T: int | None = None, batch_size: int = 1000,
                     per_step: bool = False) -> float:
    """The accuracy of the chip (its weights as written) on inputs ``x`` (static, (N, ...);
    with ``per_step`` (T, N, ...)) and labels ``y``, in batches of ``batch_size``; ``net``
    (the host network) gives the shapes."""
    correct = count = 0
    for lo in range(0, y.shape[0], batch_size):
        xb = x[:, lo:lo + batch_size] if per_step else x[lo:lo + batch_size]
        stats = evaluate_batch_on_chip(chip, net, xb, y[lo:lo + batch_size], InstantLoss(), T)
        correct += stats.correct
        count += stats.count
    return correct / max(count, 1)
