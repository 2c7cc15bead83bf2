"""A chip behind an interface, part 2: a NIR graph run as a forward-only chip by another
simulator (issue 24), for on-chip learning whose learner may hold the wrong model.

:class:`NirChip` implements the chip backend protocol (``ChipBackend`` of :mod:`opzo.chip`:
``write_weights``, ``reset``, ``run``). It reads a fully connected NIR graph (Pedersen et al.
2024, Nature Communications 15:8122; the mapping of opzo's network to NIR is
:mod:`opzo.nir`'s), builds per layer the simulator's own modules and steps them itself,
returning at every time step only what on-chip learning can read (:class:`ChipStep`): each
hidden layer's membrane potential u_l[t] and spikes s_l[t], and the readout o[t].

**Graph.** Input → [Flatten] → (Affine | Linear) → (LIF | IF) → … → (Affine | Linear) → Output,
as :func:`opzo.nir.to_nir` writes a fully connected :class:`~opzo.network.SpikingNet`.
Convolutions, pooling, shortcuts, CubaLIF and subgraphs are refused naming the node. Per
neuron node the forward-Euler step at dt (the graph's ``metadata["dt"]``, else
:data:`opzo.nir.DEFAULT_DT`) gives leak λ = 1 − dt/τ, input gain g = dt R/τ and threshold θ
(:mod:`opzo.nir`, "Neuron"; IF: λ = 1, g = dt R); v_leak and v_reset must be 0. opzo's own
export states λ exactly in its metadata (``lif_lambda``), which is used where the file's
float32 τ gives it to ~1e-7.

**Units.** The chip holds its weights in the host network's units (what ``write_weights``
copies): the host's current of layer l is I_l = W_l x + b_l, with the host's threshold V_th.
A layer whose θ is not V_th runs v = k_l u with k_l = θ/V_th: the chip feeds k_l (I_l + α z_l)
to its neuron of threshold θ and reports u = v / k_l (the graph's weights are loaded as
(g V_th/θ) W, as :func:`opzo.nir.from_nir` loads them). For opzo's own export k_l = 1 and g = 1
exactly, and nothing is scaled.

**Neurons (``variant``).** Every variant steps the simulator's own neuron modules; u_l[t] is
the potential after the update and before this step's reset (what opzo's u means,
:mod:`opzo.network`: the reset acts at the next step), s_l[t] = H(u_l[t] − θ).

* ``same``: the graph's LIF with reset to zero, u[t+1] = λ u[t] (1 − s[t]) + I[t+1], which
  is opzo's eq. 1 (OPZO paper, section 3.1) with ``reset="zero"``: the chip equals opzo's
  network to float rounding. snnTorch: ``snntorch.Leaky(beta=λ, threshold=θ,
  reset_mechanism="zero")`` (its reset is delayed to the next step, so its returned ``mem`` is
  u before the reset). SpikingJelly: ``neuron.LIFNode(tau=1/(1 − λ), decay_input=False,
  v_reset=0.0)`` (IF: τ = ∞), stepped by the three parts of its own step
  ``functional.lif_step``: ``functional.lif_charge`` (u is the charged v), its spike
  function, and ``LIFNode.apply_hard_reset`` (``apply_soft_reset`` for ``v_reset=None``);
  it fires at u ≥ θ where opzo fires at u > θ (the same spikes unless u equals θ exactly).
* ``reset-subtract``: each simulator's subtractive reset, which keeps the overshoot (the graph
  and the host reset to zero, so the learner's model is wrong). snnTorch's ``Leaky``
  ``reset_mechanism="subtract"``: u[t+1] = λ u[t] + I[t+1] − θ s[t] (θ subtracted from the new
  potential, not decayed); SpikingJelly's soft reset (``v_reset=None``): u[t+1] = λ (u[t] −
  θ s[t]) + I[t+1] (opzo's subtractive reset, eq. 1).
* ``cuba``: a current-based neuron, a synaptic current with its own decay λ_s (``syn_lam``,
  default :data:`DEFAULT_SYN_LAMBDA` = 0.5, opzo's ``CubaLIF`` default) between the weights
  and the membrane, i[t+1] = λ_s i[t] + I[t+1]. snnTorch's ``Synaptic(alpha=λ_s, beta=λ,
  reset_mechanism="zero")`` resets the whole update after a spike: u[t+1] = (1 − s[t])
  (λ u[t] + i[t+1]). SpikingJelly's ``CUBALIFNode(c_decay=λ_s, v_decay=λ, v_reset=0.0)``
  (stepped by ``functional.cuba_lif_step``; u is its charged v = λ v + i, recomputed from the
  returned current since the step returns v after the reset): u[t+1] = λ u[t] (1 − s[t]) +
  i[t+1] (opzo's ``CubaLIF`` with ``reset="zero"``).
* ``int8``: the ``same`` neuron with every weight matrix and bias vector stored rounded to 8
  bits by the chip: per tensor w ← Δ round(w/Δ), Δ = max|w|/127 (symmetric, 255 levels;
  a zero tensor stays zero), applied at every ``write_weights``.

The perturbation of a rule (``run``'s ``noise``) is added to the synaptic current before the
neuron, I_l[t] + α z_l[t], as ``SpikingNet.step(..., noise_position="before")`` does.
Norse is not supported: it was not installed where this was written (NIR's peers in the venv
are snnTorch and SpikingJelly); asking for it says so.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .chip import ChipConfig, ChipStep, register_backend
from .network import SpikingNet
from .nir import DEFAULT_DT, NIRError, _Graph, _kind, _neuron_step, _nir, _snap

__all__ = ["DEFAULT_SYN_LAMBDA", "SIMULATORS", "VARIANTS", "ChipStep", "NirChip",
           "quantize_int8"]

#: the simulators a :class:`NirChip` runs in (``sim``)
SIMULATORS = ("snntorch", "spikingjelly")

#: the chip's neuron (``variant``): ``same`` is the graph's own LIF (module docstring)
VARIANTS = ("same", "reset-subtract", "cuba", "int8")

#: the synaptic current's decay λ_s of the ``cuba`` variant (opzo's CubaLIF default)
DEFAULT_SYN_LAMBDA = 0.5

_PIP = {"snntorch": "pip install 'opzo[nir-peers]'",
        "spikingjelly": "pip install 'opzo[nir-peers]'",
        "norse": "pip install norse"}


def quantize_int8(w: Tensor) -> Tensor:
    """w rounded to 8 bits, symmetric per tensor: Δ round(w/Δ), Δ = max|w|/127 (the ``int8``
    variant's stored weights; a zero tensor stays zero)."""
    scale = w.abs().amax() / 127.0
    if float(scale) == 0.0:
        return w.clone()
    return torch.round(w / scale).clamp_(-127, 127).mul_(scale)


def _simulator(sim: str) -> ModuleType:
    """The simulator's package, or one clear error: unknown, or not installed."""
    if sim == "norse":
        try:
            importlib.import_module("norse")
        except ImportError:
            raise ImportError("the chip simulator 'norse' is not installed: pip install norse "
                              f"(NirChip runs {' and '.join(SIMULATORS)} today)") from None
        raise ValueError("NirChip has no Norse backend (Norse was not installed where it was "
                         f"written); choose --chip-sim {' or '.join(SIMULATORS)}")
    if sim not in SIMULATORS:
        raise ValueError(f"unknown chip simulator {sim!r}; choose one of {SIMULATORS}")
    try:
        return importlib.import_module(sim)
    except ImportError:
        raise ImportError(f"the chip simulator {sim!r} is not installed: {_PIP[sim]}") from None


@dataclass
class _Layer:
    """One hidden layer as read from the graph: synaptic and neuron node names, the weights
    in the host's units, the neuron's leak λ, threshold θ and unit scale k = θ / V_th."""

    syn: str
    neuron: str
    weight: np.ndarray
    bias: np.ndarray | None
    lam: float
    theta: float
    k: float


def _synapse(node: Any, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    w = np.asarray(node.weight, dtype=np.float32)
    if w.ndim != 2:
        raise NIRError(f"node {name!r}: weight of shape {w.shape}; an Affine / Linear node "
                       "needs a matrix (out, in)")
    b = getattr(node, "bias", None)
    b = None if b is None else np.asarray(b, dtype=np.float32).reshape(-1)
    if b is not None and b.shape[0] != w.shape[0]:
        raise NIRError(f"node {name!r}: bias of {b.shape[0]} values for {w.shape[0]} outputs")
    return w, b


_CHAIN = ("NirChip runs fully connected graphs, Input → [Flatten] → Affine/Linear → LIF/IF → … "
          "→ Affine/Linear → Output")


def _read_chain(graph: Any, dt: float | None, v_th: float
                ) -> tuple[int, list[_Layer], tuple[str, np.ndarray, np.ndarray | None]]:
    """(input features, hidden layers, readout (name, W, b)) of a fully connected graph;
    :class:`~opzo.nir.NIRError` naming the node for anything else."""
    nir = _nir()
    if not isinstance(graph, nir.NIRGraph):
        raise NIRError(f"expected a NIR graph (nir.NIRGraph or a .nir file), got "
                       f"{type(graph).__name__}")
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    if dt is None:
        dt = float(np.asarray(meta["dt"])) if "dt" in meta else DEFAULT_DT
    if not dt > 0:
        raise NIRError(f"the time step dt must be > 0, got {dt}")
    lam_meta = float(np.asarray(meta["lif_lambda"])) if "lif_lambda" in meta else None
    g = _Graph(nir, graph)  # edges, one Input / Output, node kinds (CubaLIF etc. refused)
    for name, node in g.nodes.items():
        if _kind(node) in ("Conv2d", "AvgPool2d") or (
                _kind(node) == "Flatten" and g.pred[name] != [g.input]):
            raise NIRError(f"node {name!r} is a {_kind(node)} node, which the chip does not "
                           f"run: {_CHAIN}")
        if g.is_neuron(name):
            for src in g.pred[name]:
                if g.is_neuron(src):
                    raise NIRError(f"node {name!r} has a shortcut from {src!r} (a residual "
                                   f"connection), which the chip does not run: {_CHAIN}")
    features = math.prod(g.in_shape)
    layers: list[_Layer] = []
    pending: tuple[str, np.ndarray, np.ndarray | None] | None = None
    cur, width, seen = g.input, features, {g.input}
    while True:
        name = g.main_next(cur)
        if name in seen:
            raise NIRError(f"node {name!r} is reached twice: the graph has a cycle (a "
                           f"recurrent connection), which the chip does not run: {_CHAIN}")
        seen.add(name)
        g.single_pred(name)
        node = g.nodes[name]
        kind = _kind(node)
        if kind == "Output":
            break
        if kind in ("Affine", "Linear"):
            if pending is not None:
                raise NIRError(f"node {name!r} follows the synaptic node {pending[0]!r} "
                               f"without a neuron between: {_CHAIN}")
            w, b = _synapse(node, name)
            if w.shape[1] != width:
                raise NIRError(f"node {name!r}: weight of shape {w.shape} takes {w.shape[1]} "
                               f"inputs, the node before it gives {width}")
            pending, width = (name, w, b), int(w.shape[0])
        elif kind in ("LIF", "IF"):
            if pending is None:
                raise NIRError(f"node {name!r} ({kind}) has no Affine/Linear node before it: "
                               f"{_CHAIN}")
            lam, gain, theta = _neuron_step(node, name, dt, width)
            if lam_meta is not None and math.isclose(lam, lam_meta, rel_tol=1e-5,
                                                     abs_tol=1e-7):
                lam = lam_meta
            k = _snap(theta / v_th, 1.0)
            if k == 1.0:
                theta = v_th
            c = _snap(gain / k, 1.0)
            syn, w, b = pending
            if c != 1.0:
                w, b = w * np.float32(c), None if b is None else b * np.float32(c)
            layers.append(_Layer(syn, name, w, b, lam, theta, k))
            pending = None
        # a Flatten right after the Input: the chip takes the flattened input anyway
        cur = name
    if pending is None or not layers:
        raise NIRError(f"the graph's output is not fed by an Affine/Linear readout after a "
                       f"LIF/IF layer: {_CHAIN}")
    return features, layers, pending


def _load_graph(path_or_graph: Any) -> Any:
    if isinstance(path_or_graph, (str, Path)):
        p = Path(path_or_graph)
        if not p.is_file():
            raise FileNotFoundError(f"NIR file {p} not found: pass a file written by "
                                    "'opzo export' (nir.write)")
        try:
            return _nir().read(p)
        except Exception as exc:  # h5py / nir parsing: anything means "not a NIR file"
            raise NIRError(f"{p} is not a readable NIR file: {type(exc).__name__}: "
                           f"{exc}") from None
    return path_or_graph


class NirChip:
    """A NIR graph run as a forward-only chip by snnTorch or SpikingJelly (module docstring).

    ``path_or_graph``: a ``.nir`` file or a ``nir.NIRGraph``; ``sim``: one of
    :data:`SIMULATORS`; ``net``: the host network the graph was exported from (its hidden
    sizes, inputs and outputs must be the graph's; its weights are written onto the chip at
    once, as ``write_weights`` does); ``variant``: the chip's neuron, one of :data:`VARIANTS`;
    ``dt``: the time step the graph's time constants assume (default: the graph's
    ``metadata["dt"]``, else 1e-4); ``syn_lam``: λ_s of the ``cuba`` variant; ``device``:
    where the simulator runs (default: the host network's parameters' device).
    """

    def __init__(self, path_or_graph: Any, sim: str, net: SpikingNet, variant: str = "same",
                 dt: float | None = None, syn_lam: float = DEFAULT_SYN_LAMBDA,
                 device: torch.device | str | None = None) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown chip variant {variant!r}; choose one of {VARIANTS}")
        if not 0.0 <= syn_lam <= 1.0:
            raise ValueError(f"the cuba variant's synaptic decay syn_lam must lie in [0, 1], "
                             f"got {syn_lam}")
        self._sim = _simulator(sim)
        self.sim, self.variant, self.syn_lam = sim, variant, float(syn_lam)
        self.name = f"nir:{sim}" if variant == "same" else f"nir:{sim}:{variant}"
        graph = _load_graph(path_or_graph)
        v_th = float(net.neuron.v_th)
        features, layers, (ro_name, ro_w, ro_b) = _read_chain(graph, dt, v_th)
        sizes = [features, *(int(la.weight.shape[0]) for la in layers), int(ro_w.shape[0])]
        if sizes != list(net.sizes) or not all(
                getattr(la, "is_dense", False) for la in [*net.hidden, net.readout]):
            raise ValueError(f"the NIR graph's layers {'-'.join(map(str, sizes))} (inputs, "
                             f"hidden neurons, outputs) do not match the network's "
                             f"{net.describe()} ({'-'.join(map(str, net.sizes))}): pass the "
                             "graph exported from this network ('opzo export')")
        self.device = torch.device(device) if device is not None else next(
            net.parameters()).device
        self.layers = layers
        self.syn = [self._linear(la.weight, la.bias) for la in layers]
        self.readout = self._linear(ro_w, ro_b)
        self.neurons = [self._neuron(la) for la in layers]
        self._state: list[dict[str, Tensor]] | None = None
        self._batch = 0
        self.write_weights(net)

    # ------------------------------------------------------------------ construction

    def _linear(self, w: np.ndarray, b: np.ndarray | None) -> nn.Linear:
        """The simulator's dense synapse (snnTorch models use torch's ``nn.Linear``,
        SpikingJelly its ``layer.Linear``), holding the graph's weights to start with."""
        out_f, in_f = (int(d) for d in w.shape)
        if self.sim == "spikingjelly":
            from spikingjelly.activation_based import layer as sj_layer

            lin: nn.Linear = sj_layer.Linear(in_f, out_f, bias=True, step_mode="s")
        else:
            lin = nn.Linear(in_f, out_f, bias=True)
        lin = lin.to(device=self.device, dtype=torch.float32)
        lin.requires_grad_(False)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b) if b is not None else torch.zeros(out_f))
        return lin

    def _neuron(self, la: _Layer) -> nn.Module:
        """The simulator's neuron module of one hidden layer for the chip's variant."""
        subtract = self.variant == "reset-subtract"
        cuba = self.variant == "cuba"
        if self.sim == "snntorch":
            snn = self._sim
            if cuba:
                mod: nn.Module = snn.Synaptic(alpha=self.syn_lam, beta=la.lam,
                                              threshold=la.theta, reset_mechanism="zero")
            else:
                mod = snn.Leaky(beta=la.lam, threshold=la.theta,
                                reset_mechanism="subtract" if subtract else "zero")
        else:
            from spikingjelly.activation_based import neuron as sj_neuron

            v_reset = None if subtract else 0.0
            if cuba:
                mod = sj_neuron.CUBALIFNode(c_decay=self.syn_lam, v_decay=la.lam,
                                            v_threshold=la.theta, v_reset=0.0)
            else:  # IF (λ = 1): τ = ∞, the charge v − v/∞ + x = v + x
                tau = math.inf if la.lam == 1.0 else 1.0 / (1.0 - la.lam)
                mod = sj_neuron.LIFNode(tau=tau, decay_input=False, v_threshold=la.theta,
                                        v_reset=v_reset)
        mod = mod.to(self.device)
        mod.eval()
        return mod

    # ------------------------------------------------------------------ the protocol

    def write_weights(self, net: SpikingNet) -> None:
        """Copy the host network's current weights and biases (every hidden layer's and the
        readout's) onto the chip, rounded to 8 bits for the ``int8`` variant."""
        host = [*net.hidden, net.readout]
        mine = [*self.syn, self.readout]
        if len(host) != len(mine):
            raise ValueError(f"the network has {len(host) - 1} hidden layers, the chip "
                             f"{len(mine) - 1}: write the weights of the network the chip "
                             "was built for")
        with torch.no_grad():
            for l, (src, dst) in enumerate(zip(host, mine)):
                w = getattr(src, "weight", None)
                if w is None or tuple(w.shape) != tuple(dst.weight.shape):
                    shape = None if w is None else tuple(w.shape)
                    raise ValueError(f"layer {l + 1} of the network has weight shape {shape}, "
                                     f"the chip's {tuple(dst.weight.shape)}: write the weights "
                                     "of the network the chip was built for")
                w = w.detach().to(device=self.device, dtype=torch.float32)
                b = src.bias
                b = (torch.zeros_like(dst.bias) if b is None
                     else b.detach().to(device=self.device, dtype=torch.float32))
                if self.variant == "int8":
                    w, b = quantize_int8(w), quantize_int8(b)
                dst.weight.copy_(w)
                dst.bias.copy_(b)

    def reset(self, batch: int) -> None:
        """Every neuron to rest (potential, spikes and synaptic current 0) for ``batch``
        samples."""
        if int(batch) < 1:
            raise ValueError(f"a chip batch needs at least one sample, got {batch}")
        self._batch = int(batch)
        self._state = []
        for lin in self.syn:
            n = int(lin.weight.shape[0])
            zero = torch.zeros(self._batch, n, device=self.device, dtype=torch.float32)
            self._state.append({"v": zero, "i": zero.clone()})

    def run(self, x: Tensor, noise: list[list[Tensor]] | None = None,
            noise_scale: float = 1.0) -> list[ChipStep]:
        """Advance ``x.shape[0]`` steps from the state the last run (or reset) left:
        ``x`` (Tc, B, F); ``noise[t][l]`` (B, n_l) is added as ``noise_scale`` z to hidden
        layer l's synaptic current before the neuron. One :class:`ChipStep` per step."""
        if self._state is None:
            raise ValueError("the chip has no state: call reset(batch) before run")
        features = int(self.syn[0].weight.shape[1])
        if x.dim() != 3 or x.shape[1] != self._batch or x.shape[2] != features:
            raise ValueError(f"chip input of shape {tuple(x.shape)}; expected (Tc, "
                             f"{self._batch}, {features}) (steps, the batch of reset, "
                             "features)")
        if noise is not None and len(noise) != x.shape[0]:
            raise ValueError(f"noise for {len(noise)} steps, the input has {x.shape[0]}")
        steps = []
        x = x.to(device=self.device, dtype=torch.float32)
        with torch.no_grad():
            for t in range(x.shape[0]):
                steps.append(self._step(x[t], None if noise is None else noise[t],
                                        noise_scale))
        return steps

    # ------------------------------------------------------------------ one step

    def _step(self, x: Tensor, z: list[Tensor] | None, alpha: float) -> ChipStep:
        assert self._state is not None
        if z is not None and len(z) != len(self.syn):
            raise ValueError(f"noise for {len(z)} layers, the chip has {len(self.syn)}")
        us, spikes = [], []
        inp = x
        for l, (lin, neuron, la) in enumerate(zip(self.syn, self.neurons, self.layers)):
            cur = lin(inp)
            if z is not None:
                zl = z[l]
                if tuple(zl.shape) != tuple(cur.shape):
                    raise ValueError(f"noise of layer {l + 1} has shape {tuple(zl.shape)}, "
                                     f"the layer's current {tuple(cur.shape)}")
                cur = torch.add(cur, zl.to(cur.device), alpha=alpha)
            if la.k != 1.0:
                cur = cur * la.k
            v, s = self._neuron_step(neuron, self._state[l], cur)
            us.append(v if la.k == 1.0 else v / la.k)
            spikes.append(s)
            inp = s
        return ChipStep(us, spikes, self.readout(inp))

    def _neuron_step(self, neuron: nn.Module, state: dict[str, Tensor], cur: Tensor
                     ) -> tuple[Tensor, Tensor]:
        """One step of the simulator's neuron: (u before this step's reset, spikes); the
        neuron's state is kept in ``state``."""
        if self.sim == "snntorch":
            if self.variant == "cuba":
                s, i, v = neuron(cur, state["i"], state["v"])
                state["i"] = i
            else:
                s, v = neuron(cur, state["v"])
            state["v"] = v  # snnTorch resets at the next step: v is u before the reset
            return v, s
        from spikingjelly.activation_based import functional as sj_functional

        v_prev = state["v"]
        if self.variant == "cuba":
            s, i, v_next = sj_functional.cuba_lif_step(
                cur, state["i"], v_prev, neuron.c_decay, neuron.v_decay, neuron.v_threshold,
                neuron.v_reset, neuron.surrogate_function, neuron.detach_reset)
            state["i"], state["v"] = i, v_next
            return v_prev * neuron.v_decay + i, s  # the charge the step made (module docstring)
        # LIFNode's own step (functional.lif_step) in its three parts, to read the charged v
        u = sj_functional.lif_charge(cur, v_prev, neuron.tau, neuron.decay_input,
                                     neuron.v_reset)
        s = neuron.surrogate_function(u - neuron.v_threshold)
        state["v"] = (neuron.apply_soft_reset(u, s, neuron.v_threshold)
                      if neuron.v_reset is None else
                      neuron.apply_hard_reset(u, s, neuron.v_reset))
        return u, s


def _nir_backend(cfg: ChipConfig, net: SpikingNet) -> NirChip:
    """``opzo.chip_nir.NirChip`` for ``--chip nir:FILE``; ValueError with one line for a
    missing file, a simulator that is not installed, or a graph the chip cannot run."""
    spec = cfg.backend
    path = Path(spec[4:])
    if not path.is_file():
        raise ValueError(f"--chip {spec}: {path} does not exist (give a NIR file, e.g. one "
                         "written by opzo export)")
    if cfg.sim not in SIMULATORS:
        raise ValueError(f"--chip-sim {cfg.sim!r}: choose one of {', '.join(SIMULATORS)}")
    if cfg.variant not in VARIANTS:
        raise ValueError(f"--chip-variant {cfg.variant!r}: choose one of {', '.join(VARIANTS)}")
    try:
        return NirChip(str(path), cfg.sim, net, variant=cfg.variant)
    except ImportError as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = "" if "pip install" in text else f": {_PIP.get(cfg.sim, 'pip install ' + cfg.sim)}"
        raise ValueError(f"--chip-sim {cfg.sim}: the simulator is not installed ({text})"
                         f"{hint}") from None
    except ValueError as exc:
        text = " ".join(str(exc).split())
        raise ValueError(f"--chip {spec}: {text}") from None


register_backend("nir", _nir_backend)
