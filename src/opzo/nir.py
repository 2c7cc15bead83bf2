"""NIR export and import: take what opzo trains to other simulators and chips, and train any
NIR spiking network (of the nodes below) with OPZO.

NIR, the Neuromorphic Intermediate Representation (Pedersen et al. 2024, "Neuromorphic
intermediate representation: a unified instruction set for interoperable brain-inspired
computing", Nature Communications 15:8122; spec and node definitions at neuroir.org, package
``nir``), describes a network as a graph of continuous-time nodes; snnTorch, SpikingJelly,
Norse, Lava (Loihi 2), SpiNNaker2, Xylo and others read and write it.

**Graph.** :func:`to_nir` writes a :class:`~opzo.network.SpikingNet` as

    Input → [AvgPool2d] → Conv2d | [Flatten] → Affine → LIF → … → [AvgPool2d] → [Flatten] →
    Affine (the readout) → Output

one synaptic node and one LIF node per hidden layer (node names ``conv<l>`` / ``fc<l>``,
``lif<l>``, ``pool<l>``, ``flatten<l>``, ``readout``), with a residual shortcut I_l = op_l(x) +
b_l + x_{l−k} (:mod:`opzo.network`) as an extra edge ``lif<l−k> → lif<l>`` (NIR sums the
inputs of a node). The readout is a non-spiking Affine: the graph's output is o[t] at every
step, and opzo's class is argmax Σ_t o[t]. The convolution's scaled weight standardization
(:mod:`opzo.layers`) is folded into the exported weight, Ŵ = γ (W − μ)/√(N σ² + ε); the
Flatten node flattens (C, H, W) in C, H, W order (``start_dim=-3``, which snnTorch and
SpikingJelly both read as "every dimension but the batch"). Pooling is NIR's AvgPool2d with
stride = kernel and no padding (floor mode, as opzo's). Surrogate, dropout and noise are
training-time only and are not part of the graph.

**Neuron: the discrete LIF of eq. 1 as NIR's continuous LIF.** NIR's LIF node (spec, "LIF"):

    τ dv/dt = (v_leak − v) + R I,      z = 1 and v ← v_reset when v > v_threshold.

A simulator runs it in steps of dt; snnTorch's and SpikingJelly's NIR importers (and their
exporters) use the forward-Euler step

    v[t+1] = v[t] + (dt/τ) (v_leak − v[t] + R I[t+1])
           = (1 − dt/τ) v[t] + (dt/τ) v_leak + (dt R/τ) I[t+1],

then threshold and reset (snnTorch ``import_nir``: β = 1 − dt/τ, inputs scaled by R dt/τ;
SpikingJelly ``nir_exchange``: ``LIFNode(tau=τ/dt, decay_input=False)`` needs R = τ/dt, i.e.
v ← (1 − dt/τ) v + I). Matching it to eq. 1 with reset to zero (OPZO paper, section 3.1,
:mod:`opzo.neuron`),

    u[t+1] = λ u[t] (1 − s[t]) + I[t+1],    s[t+1] = H(u[t+1] − V_th),

term by term gives 1 − dt/τ = λ, dt R/τ = 1 and v_leak = 0, so

    τ = dt / (1 − λ),   R = 1 / (1 − λ),   v_leak = 0,   v_threshold = V_th,   v_reset = 0

(λ = 1 is NIR's IF node, dv/dt = R I, with R = 1/dt). opzo keeps u[t] before the reset for
its gradients and resets at the next step; the spikes are the same as the spec's immediate
reset, since the reset state λ·0 is what enters the next step either way. Both peers default
to dt = 1e-4 s (snnTorch's importer hard-codes it), so :data:`DEFAULT_DT` is 1e-4 and exports
are exact there; the dt used is stored in the graph's metadata. A simulator that integrates
the ODE exactly (v decays by e^(−dt/τ) per step) would see a leak e^(−(1−λ)) instead of λ
(0.61 instead of 0.5): such a target needs the graph re-timed for its integrator.

**Subtractive reset.** opzo's default, u[t+1] = λ (u[t] − V_th s[t]) + I[t+1], keeps the
overshoot u − V_th after a spike; NIR's LIF and IF only reset to a fixed v_reset, so such a
network has no exact NIR form. :func:`to_nir` refuses it (train with ``--reset zero``),
unless ``approximate=True``, which writes the same weights with reset to zero;
:func:`export_run` then measures how often the two agree on the run's test set.

**Import.** :func:`from_nir` builds a :class:`~opzo.network.SpikingNet` (reset to zero) from a
graph of Input, Affine, Linear (bias 0), Conv2d (square kernel, stride 1, padding k//2),
AvgPool2d (stride = kernel, no padding; square, or the whole map = GAP), Flatten, LIF or IF
and Output nodes in the order above, shortcuts between LIF nodes allowed; the weights are the
graph's. Per LIF node the Euler step reads λ = 1 − dt/τ, input gain g = dt R/τ and threshold θ
(uniform over the node's neurons); λ must be the same in every layer (opzo has one λ per
network); the network's V_th is θ/g of the first layer, and a layer with another θ/g gets its
incoming weights and bias scaled by c = g V_th/θ (the same spikes: u scaled by V_th/θ). A
convolution is imported as is, without standardization (``standardize=False``: Ŵ = W,
training updates W directly), since a standardized weight has zero mean per output channel and
a foreign one need not; ``from_nir(..., standardize=True)`` restores it for weights of zero
channel mean (opzo's own exports), with γ_c = √(Σ W_c² + ε). CubaLIF (a synaptic current
state), recurrent edges, v_leak ≠ 0, v_reset ≠ 0 and non-uniform parameters are refused with
an error naming the node.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .layers import ConvLayer, DenseLayer
from .netstring import LayerToken, net_string
from .network import SpikingNet
from .neurons import LIF, Neuron

__all__ = ["DEFAULT_DT", "NIRError", "export_run", "from_nir", "load_nir_network",
           "lif_to_nir_params", "run_snntorch", "run_spikingjelly", "to_nir"]

#: the simulation step (seconds) the exported time constants assume: snnTorch's importer
#: hard-codes 1e-4 and SpikingJelly's defaults to it
DEFAULT_DT = 1e-4

#: relative tolerance for "the same value" of float parameters read from a graph
_RTOL = 1e-6

SUBTRACT_RESET_MESSAGE = (
    "this network resets by subtraction (u <- u - V_th after a spike, opzo's default), which "
    "NIR cannot express: NIR's LIF node resets the potential to a fixed v_reset and forgets "
    "the overshoot. Train with '--reset zero' (LIF(reset='zero')) for an exact export, "
    "or export anyway with --approximate (approximate=True), which writes reset-to-zero "
    "neurons and reports how often they agree with the trained network")


class NIRError(ValueError):
    """A network or graph that opzo cannot translate; the message says which node and why."""


def _nir() -> ModuleType:
    """The ``nir`` package, imported on first use."""
    try:
        return importlib.import_module("nir")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("NIR export and import need the 'nir' package: "
                          "pip install 'opzo[nir]'") from exc


def lif_to_nir_params(lam: float, dt: float = DEFAULT_DT) -> tuple[float, float]:
    """(τ, R) of NIR's LIF whose forward-Euler step at dt is eq. 1's u ← λ u + I:
    τ = dt/(1 − λ), R = 1/(1 − λ) (module docstring). λ = 1 (no leak) has no LIF form (use
    NIR's IF)."""
    if not 0.0 <= lam < 1.0:
        raise NIRError(f"a LIF with leak λ = {lam} has no NIR LIF form (needs 0 <= λ < 1)")
    if not dt > 0:
        raise NIRError(f"the time step dt must be > 0, got {dt}")
    return dt / (1.0 - lam), 1.0 / (1.0 - lam)


# --------------------------------------------------------------------------------- export


def _f32(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _neuron_node(nir: ModuleType, lif: Neuron, shape: Sequence[int], dt: float) -> Any:
    """The NIR neuron of one hidden layer's neurons (shape: the layer's output shape)."""
    shape = tuple(int(d) for d in shape)
    thr = np.full(shape, lif.v_th, dtype=np.float32)
    zero = np.zeros(shape, dtype=np.float32)
    if lif.lam == 1.0:  # no leak: dv/dt = R I, R = 1/dt gives v ← v + I
        return nir.IF(r=np.full(shape, 1.0 / dt, dtype=np.float32), v_threshold=thr,
                      v_reset=zero)
    tau, r = lif_to_nir_params(lif.lam, dt)
    return nir.LIF(tau=np.full(shape, tau, dtype=np.float32),
                   r=np.full(shape, r, dtype=np.float32), v_leak=zero, v_threshold=thr,
                   v_reset=zero)


def _unsupported_for_nir(net: SpikingNet) -> str:
    """What of issue 26's layers a network has (batch norm, composite layers, strided / max /
    adaptive pooling, SEW's ADDs), named for the refusal; '' if none."""
    from .layers_extra import CompositeLayer, Pool2d
    from .norm import Normed

    found = []
    layers = [*net.hidden, net.readout]
    if any(isinstance(m, Normed) for m in net.modules()):
        found.append("batch norm")
    if any(isinstance(m, CompositeLayer) for m in layers):
        found.append("composite layers")
    if any(isinstance(getattr(m, "pool", None), Pool2d) for m in layers):
        found.append("strided, max or adaptive pooling")
    if any(a is not None for a in getattr(net, "adds", ())):
        found.append("ADD connections")
    return ", ".join(found)


def to_nir(net: SpikingNet, dt: float = DEFAULT_DT, approximate: bool = False) -> Any:
    """The network as a ``nir.NIRGraph`` (module docstring: graph, neuron mapping, reset).

    ``dt``: the time step, in seconds, that the continuous time constants assume
    (τ = dt/(1 − λ), R = 1/(1 − λ)); the default 1e-4 is snnTorch's and SpikingJelly's.
    A network with subtractive reset raises :class:`NIRError` unless ``approximate``, which
    exports its weights with reset-to-zero neurons (a different network: measure it, e.g.
    with :func:`export_run`).
    """
    nir = _nir()
    if not dt > 0:
        raise NIRError(f"the time step dt must be > 0, got {dt}")
    lif = net.neuron
    if not lif.exports_to_nir():
        raise NIRError(f"NIR export maps the discrete LIF neuron only; this network's neurons "
                       f"are {lif.name!r} ({lif.describe()}), which NIR's LIF node does not "
                       "describe. Train with --neuron lif to export")
    unsupported = _unsupported_for_nir(net)
    if unsupported:
        raise NIRError(f"NIR export writes chains of dense / sWS conv layers with "
                       f"non-overlapping average pooling; this network has {unsupported}, "
                       "which the export does not map (issue 26's layers)")
    if lif.reset != "zero" and not approximate:
        raise NIRError(SUBTRACT_RESET_MESSAGE)
    nodes: dict[str, Any] = {"input": nir.Input(input_type=np.array(net.input_shape))}
    edges: list[tuple[str, str]] = []
    prev = "input"

    def add(name: str, node: Any) -> None:
        nonlocal prev
        nodes[name] = node
        edges.append((prev, name))
        prev = name

    def add_pool_and_flatten(layer: DenseLayer | ConvLayer, l: str) -> None:
        if layer.pool is not None:
            k = np.array(layer.pool, dtype=np.int64)
            add(f"pool{l}", nir.AvgPool2d(kernel_size=k, stride=k.copy(),
                                          padding=np.zeros(2, dtype=np.int64)))
        if layer.is_dense and len(layer.op_in_shape) > 1:
            add(f"flatten{l}", nir.Flatten(input_type=np.array(layer.op_in_shape),
                                           start_dim=-len(layer.op_in_shape), end_dim=-1))

    for l, layer in enumerate(net.hidden, start=1):
        add_pool_and_flatten(layer, str(l))
        if isinstance(layer, ConvLayer):
            with torch.no_grad():
                weight = layer.effective_weight()
            bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_channels)
            add(f"conv{l}", nir.Conv2d(
                input_shape=tuple(int(d) for d in layer.op_in_shape[1:]),
                weight=_f32(weight), stride=(layer.stride, layer.stride),
                padding=(layer.padding, layer.padding), dilation=(1, 1), groups=1,
                bias=_f32(bias)))
        else:
            bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
            add(f"fc{l}", nir.Affine(weight=_f32(layer.weight), bias=_f32(bias)))
        add(f"lif{l}", _neuron_node(nir, lif, layer.out_shape, dt))
        j = net.skips[l - 1]
        if j is not None:  # residual shortcut: x_j joins this layer's current
            edges.append((f"lif{j + 1}", f"lif{l}"))
    ro = net.readout
    add_pool_and_flatten(ro, "_readout")
    bias = ro.bias if ro.bias is not None else torch.zeros(ro.out_features)
    add("readout", nir.Affine(weight=_f32(ro.weight), bias=_f32(bias)))
    add("output", nir.Output(output_type=np.array([ro.out_features])))
    from .version import __version__

    metadata = {"producer": f"opzo {__version__}", "dt": float(dt), "net": net.spec,
                "lif_lambda": float(lif.lam), "v_th": float(lif.v_th),
                "readout": "sum over time steps of the output, class = argmax",
                "reset": "zero" if lif.reset == "zero" else
                "subtract (exported approximately as reset to zero)"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


# --------------------------------------------------------------------------------- import

_SUPPORTED = "Input, Affine, Linear, Conv2d, AvgPool2d, Flatten, LIF, IF, Output"


def _kind(node: Any) -> str:
    return type(node).__name__


def _uniform(value: Any, name: str, param: str, n_neurons: int | None = None) -> float:
    """The single value of a per-neuron parameter array (error naming the node if not)."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        raise NIRError(f"node {name!r}: parameter {param} is empty")
    if n_neurons is not None and arr.size not in (1, n_neurons):
        raise NIRError(f"node {name!r}: parameter {param} has {arr.size} values, but the "
                       f"layer it belongs to has {n_neurons} neurons (mismatched shapes)")
    first = float(arr.flat[0])
    if not np.all(np.isfinite(arr)):
        raise NIRError(f"node {name!r}: parameter {param} is not finite")
    if not np.allclose(arr, first, rtol=_RTOL, atol=0.0):
        raise NIRError(f"node {name!r}: parameter {param} differs between neurons "
                       f"({arr.min():g} .. {arr.max():g}); opzo's neurons share one value "
                       "per network")
    return first


def _pair_of(value: Any, name: str, param: str) -> tuple[int, int]:
    arr = np.atleast_1d(np.asarray(value)).astype(np.int64).reshape(-1)
    if arr.size == 1:
        return int(arr[0]), int(arr[0])
    if arr.size != 2:
        raise NIRError(f"node {name!r}: {param} must be one or two integers, got {value!r}")
    return int(arr[0]), int(arr[1])


def _neuron_step(node: Any, name: str, dt: float, n: int) -> tuple[float, float, float]:
    """(λ, g, θ) of a LIF or IF node's forward-Euler step v ← λ v + g I at dt, threshold θ;
    reset and leak potentials must be 0."""
    v_reset = _uniform(node.v_reset, name, "v_reset", n)
    if v_reset != 0.0:
        raise NIRError(f"node {name!r}: v_reset = {v_reset:g}; opzo's neurons reset to 0")
    theta = _uniform(node.v_threshold, name, "v_threshold", n)
    r = _uniform(node.r, name, "r", n)
    if _kind(node) == "IF":
        lam, gain = 1.0, dt * r
    else:
        v_leak = _uniform(node.v_leak, name, "v_leak", n)
        if v_leak != 0.0:
            raise NIRError(f"node {name!r}: v_leak = {v_leak:g}; opzo's LIF leaks to 0")
        tau = _uniform(node.tau, name, "tau", n)
        if not tau >= dt:
            raise NIRError(f"node {name!r}: tau = {tau:g} s is shorter than the time step "
                           f"dt = {dt:g} s, so the Euler step's leak 1 - dt/tau is negative; "
                           "pass the dt the graph was made for")
        lam, gain = 1.0 - dt / tau, dt * r / tau
    if not theta > 0 or not gain > 0:
        raise NIRError(f"node {name!r}: opzo needs v_threshold > 0 and r > 0 (got "
                       f"{theta:g}, {r:g})")
    return lam, gain, theta


def _snap(x: float, to: float) -> float:
    return to if math.isclose(x, to, rel_tol=_RTOL, abs_tol=0.0) else x


def from_nir(graph: Any, dt: float | None = None, standardize: bool = False,
             kernels: str = "native") -> SpikingNet:
    """A :class:`~opzo.network.SpikingNet` (reset to zero, weights from the graph) from a
    ``nir.NIRGraph``; the mapping is the module docstring's.

    ``dt``: the time step the graph's time constants assume; default the graph's
    ``metadata["dt"]`` (opzo writes it), else 1e-4 (snnTorch's and SpikingJelly's).
    ``standardize``: import convolutions with scaled weight standardization (needs weights of
    zero mean per output channel, as opzo exports them); by default they are plain.
    Raises :class:`NIRError` naming the node for anything opzo cannot represent.

    Steps: index and check the graph (:class:`_Graph`), walk its chain of layers from the
    input to the output (:class:`_Walk`), find the network's one λ and V_th with each
    layer's gain folded into its weights (:func:`_network_neuron`), build the network and
    load the weights (:func:`_load_weights`).
    """
    nir = _nir()
    if not isinstance(graph, nir.NIRGraph):
        raise NIRError(f"expected a nir.NIRGraph, got {type(graph).__name__}")
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    if dt is None:
        dt = float(np.asarray(meta["dt"])) if "dt" in meta else DEFAULT_DT
    if not dt > 0:
        raise NIRError(f"the time step dt must be > 0, got {dt}")
    g = _Graph(nir, graph)
    walk = _Walk(g, dt)
    walk.run()
    lam, v_th, scales = _network_neuron(walk.neurons, walk.tokens, meta)
    try:
        net = SpikingNet(walk.tokens, g.in_shape, int(walk.weights[-1][1].shape[0]),
                         neuron=LIF(lam=min(max(lam, 0.0), 1.0), v_th=v_th, reset="zero"),
                         kernels=kernels)
    except ValueError as exc:
        raise NIRError(f"the graph's layers {net_string(walk.tokens)} on input {g.in_shape} "
                       f"do not form an opzo network: {exc}") from None
    _load_weights(net, walk.weights, [*scales, 1.0], standardize)
    net.eval()
    return net


class _Graph:
    """A NIR graph's nodes, edges both ways, its one Input and Output and the input shape;
    refuses edges to missing nodes and node kinds opzo cannot represent."""

    def __init__(self, nir: ModuleType, graph: Any) -> None:
        nodes: dict[str, Any] = dict(graph.nodes)
        succ: dict[str, list[str]] = {k: [] for k in nodes}
        pred: dict[str, list[str]] = {k: [] for k in nodes}
        for edge in graph.edges:
            a, b = (str(e) for e in edge)
            for end in (a, b):
                if end not in nodes:
                    raise NIRError(f"edge {a!r} -> {b!r} names node {end!r}, which the graph "
                                   "does not have")
            succ[a].append(b)
            pred[b].append(a)
        for name, node in nodes.items():
            _check_kind(nir, name, node)
        inputs = [k for k, n in nodes.items() if _kind(n) == "Input"]
        outputs = [k for k, n in nodes.items() if _kind(n) == "Output"]
        if len(inputs) != 1 or len(outputs) != 1:
            raise NIRError(f"opzo imports graphs with one Input and one Output node; this one "
                           f"has {len(inputs)} input(s) {inputs} and {len(outputs)} output(s) "
                           f"{outputs}")
        in_shape = tuple(int(d) for d in
                         np.asarray(nodes[inputs[0]].input_type["input"]).reshape(-1))
        if not in_shape or any(d < 1 for d in in_shape):
            raise NIRError(f"input node {inputs[0]!r} has no usable shape ({in_shape})")
        self.nodes, self.succ, self.pred = nodes, succ, pred
        self.input: str = inputs[0]
        self.in_shape: tuple[int, ...] = in_shape

    def is_neuron(self, name: str) -> bool:
        return _kind(self.nodes[name]) in ("LIF", "IF")

    def main_next(self, name: str) -> str:
        """The node after ``name`` on the chain (a shortcut between neurons aside)."""
        nxt = [b for b in self.succ[name] if not (self.is_neuron(name) and self.is_neuron(b))]
        if len(nxt) != 1:
            where = ", ".join(repr(b) for b in nxt) or "none"
            raise NIRError(f"node {name!r} ({_kind(self.nodes[name])}) leads to {len(nxt)} "
                           f"nodes ({where}); opzo imports a chain of layers (branches only as "
                           "shortcuts between LIF nodes)")
        return nxt[0]

    def single_pred(self, name: str) -> None:
        pred = self.pred[name]
        if len(pred) != 1:
            raise NIRError(f"node {name!r} ({_kind(self.nodes[name])}) has {len(pred)} "
                           f"inputs ({pred}); opzo sums inputs only at LIF nodes "
                           "(residual shortcuts)")


def _check_kind(nir: ModuleType, name: str, node: Any) -> None:
    """A node kind opzo can represent (a CubaLIF, a subgraph and others are refused)."""
    kind = _kind(node)
    if kind == "CubaLIF":
        raise NIRError(f"node {name!r} is a CubaLIF neuron: its synaptic current is a "
                       "second state variable, which opzo's LIF (eq. 1) does not have; "
                       "opzo imports LIF and IF neurons")
    if isinstance(node, nir.NIRGraph):
        raise NIRError(f"node {name!r} is a subgraph (e.g. a recurrent layer); opzo "
                       "imports feed-forward graphs of " + _SUPPORTED)
    if kind not in _SUPPORTED.split(", "):
        raise NIRError(f"node {name!r} is a {kind} node, which opzo cannot represent; "
                       f"supported: {_SUPPORTED}")


class _Walk:
    """The chain of a :class:`_Graph` from its input to its output, as opzo's layer tokens,
    each synaptic node's weights and each hidden layer's neuron step (λ, g, θ)."""

    def __init__(self, graph: _Graph, dt: float) -> None:
        self.g, self.dt = graph, dt
        self.tokens: list[LayerToken] = []
        #: per hidden layer and the readout: node name, weight, bias
        self.weights: list[tuple[str, np.ndarray, np.ndarray | None]] = []
        #: per hidden layer: neuron node name, λ, g, θ
        self.neurons: list[tuple[str, float, float, float]] = []
        self.hidden_index: dict[str, int] = {}
        self.shape: tuple[int, ...] = graph.in_shape
        self.pooled = self.flattened = False
        self.seen = {graph.input}

    def run(self) -> None:
        """Walk node by node until the Output; every node must be on the way."""
        g = self.g
        cur = g.input
        readout_done = False
        while True:
            name = g.main_next(cur)
            if name in self.seen:
                raise NIRError(f"node {name!r} is reached twice: the graph has a cycle (a "
                               "recurrent connection), which opzo cannot represent")
            self.seen.add(name)
            node = g.nodes[name]
            kind = _kind(node)
            if kind == "Output":
                if not readout_done:
                    raise NIRError(
                        f"the output node {name!r} is fed by {cur!r} ({_kind(g.nodes[cur])}); "
                        "opzo's networks end in a non-spiking Affine or Linear readout after "
                        "the last LIF layer (a graph ending in spiking neurons has no opzo "
                        "form)")
                break
            if readout_done:
                raise NIRError(f"node {name!r} ({kind}) follows the readout; only the Output "
                               "may")
            g.single_pred(name)
            if kind == "AvgPool2d":
                self.pool(name, node)
                cur = name
            elif kind == "Flatten":
                if self.flattened:
                    raise NIRError(f"node {name!r}: a second Flatten")
                self.flattened = True
                cur = name
            elif kind in ("LIF", "IF"):
                raise NIRError(f"node {name!r} ({kind}) follows {cur!r} "
                               f"({_kind(g.nodes[cur])}); opzo's neurons follow a synaptic "
                               "Affine, Linear or Conv2d node")
            else:
                cur, readout_done = self.synapse(name, node)
        unused = [k for k in g.nodes if k not in self.seen]
        if unused:
            raise NIRError(f"nodes {unused} are not on the path from the input to the output")
        if not self.neurons:
            raise NIRError("the graph has no LIF or IF layer before its readout")

    def pool(self, name: str, node: Any) -> None:
        """An AvgPool2d node: opzo's ``AP<k>`` or ``GAP`` before the next layer."""
        shape = self.shape
        if len(shape) != 3 or self.flattened:
            raise NIRError(f"node {name!r}: average pooling needs a (C, H, W) feature map, "
                           f"what reaches it has shape {shape}")
        if self.pooled:
            raise NIRError(f"node {name!r}: two pooling nodes in a row; opzo pools once "
                           "before a layer")
        k = _pair_of(node.kernel_size, name, "kernel_size")
        if _pair_of(node.stride, name, "stride") != k or any(
                _pair_of(node.padding, name, "padding")):
            raise NIRError(f"node {name!r}: opzo's pooling has stride = kernel size and no "
                           f"padding; got kernel {k}, stride {node.stride}, padding "
                           f"{node.padding}")
        c, h, w = shape
        if k == (h, w):
            self.tokens.append(LayerToken("gap"))
        elif k[0] == k[1] and h // k[0] >= 1:
            self.tokens.append(LayerToken("pool", kernel=k[0]))
        else:
            raise NIRError(f"node {name!r}: pooling {k[0]}x{k[1]} of a {h}x{w} map; opzo "
                           "pools square windows or the whole map")
        self.shape = (c, h // k[0], w // k[1])
        self.pooled = True

    def synapse(self, name: str, node: Any) -> tuple[str, bool]:
        """An Affine / Linear / Conv2d node and, unless it is the readout, the neurons after
        it. Returns the node the walk goes on from and whether this was the readout."""
        g = self.g
        kind = _kind(node)
        weight = np.asarray(node.weight, dtype=np.float32)
        bias = (np.asarray(node.bias, dtype=np.float32).reshape(-1)
                if getattr(node, "bias", None) is not None else None)
        nxt = g.main_next(name)
        final = _kind(g.nodes[nxt]) == "Output"
        if not final and not g.is_neuron(nxt):
            raise NIRError(f"node {name!r} ({kind}) is followed by {nxt!r} "
                           f"({_kind(g.nodes[nxt])}); opzo needs a LIF or IF node after each "
                           "hidden synaptic layer, or the Output after the readout")
        if kind == "Conv2d":
            if final:
                raise NIRError(f"node {name!r}: the readout must be Affine or Linear, not "
                               "Conv2d")
            self.conv(name, node, weight, bias)
        else:
            self.dense(name, kind, weight, bias, final)
        self.weights.append((name, weight, bias))
        self.pooled = False
        if final:
            return name, True
        self.neuron(nxt, name)
        return nxt, False

    def conv(self, name: str, node: Any, weight: np.ndarray, bias: np.ndarray | None
             ) -> None:
        """A Conv2d node: opzo's ``<n>C<k>`` (stride 1, "same" padding)."""
        shape = self.shape
        if len(shape) != 3 or self.flattened:
            raise NIRError(f"node {name!r}: a convolution needs a (C, H, W) feature map, "
                           f"what reaches it has shape {shape}")
        if weight.ndim != 4 or weight.shape[1] != shape[0]:
            raise NIRError(f"node {name!r}: weight of shape {weight.shape} does not take "
                           f"{shape[0]} input channels (input shape {shape}; mismatched "
                           "shapes)")
        k = weight.shape[2]
        if weight.shape[3] != k:
            raise NIRError(f"node {name!r}: kernel {weight.shape[2]}x{weight.shape[3]}; "
                           "opzo's convolutions are square")
        if int(np.asarray(node.groups)) != 1 or _pair_of(node.dilation, name,
                                                          "dilation") != (1, 1):
            raise NIRError(f"node {name!r}: groups and dilation must be 1")
        if _pair_of(node.stride, name, "stride") != (1, 1):
            raise NIRError(f"node {name!r}: stride {node.stride}; opzo's convolutions "
                           "have stride 1")
        pad = node.padding
        if isinstance(pad, str):
            pad = (k // 2, k // 2) if pad == "same" and k % 2 == 1 else (
                (0, 0) if pad == "valid" else (-1, -1))
        if _pair_of(pad, name, "padding") != (k // 2, k // 2):
            raise NIRError(f"node {name!r}: padding {node.padding} for a {k}x{k} kernel; "
                           f"opzo's convolutions pad k//2 = {k // 2} on each side")
        declared = getattr(node, "input_shape", None)
        if declared is not None and tuple(np.asarray(declared).reshape(-1)) != shape[1:]:
            raise NIRError(f"node {name!r}: declared input size "
                           f"{tuple(np.asarray(declared).reshape(-1))}, but a {shape[1:]} "
                           "map reaches it (mismatched shapes)")
        if bias is not None and bias.size != weight.shape[0]:
            raise NIRError(f"node {name!r}: {bias.size} biases for {weight.shape[0]} "
                           "output channels")
        self.tokens.append(LayerToken("conv", int(weight.shape[0]), int(k)))
        self.shape = (int(weight.shape[0]), shape[1], shape[2])

    def dense(self, name: str, kind: str, weight: np.ndarray, bias: np.ndarray | None,
              final: bool) -> None:
        """An Affine / Linear node: opzo's ``<n>`` hidden layer, or the readout ``FC``."""
        if weight.ndim != 2:
            raise NIRError(f"node {name!r}: an {kind} weight must be a matrix, got shape "
                           f"{weight.shape}")
        n_in = math.prod(self.shape)
        if weight.shape[1] != n_in:
            raise NIRError(f"node {name!r} ({kind}): its weight takes {weight.shape[1]} "
                           f"inputs, but what reaches it has shape {self.shape}, {n_in} values "
                           "(mismatched shapes)")
        if bias is not None and bias.size != weight.shape[0]:
            raise NIRError(f"node {name!r}: {bias.size} biases for {weight.shape[0]} "
                           "outputs")
        self.tokens.append(LayerToken("readout") if final else LayerToken("dense",
                                                                       int(weight.shape[0])))
        self.shape = (int(weight.shape[0]),)
        self.flattened = False

    def neuron(self, lif_name: str, synapse: str) -> None:
        """The LIF / IF node after the synaptic node ``synapse``: its step, and a residual
        shortcut into it from an earlier neuron node."""
        g = self.g
        self.seen.add(lif_name)
        lif_node = g.nodes[lif_name]
        lam, gain, theta = _neuron_step(lif_node, lif_name, self.dt, math.prod(self.shape))
        others = [p for p in g.pred[lif_name] if p != synapse]
        if len(others) > 1 or (others and (not g.is_neuron(others[0])
                                           or others[0] not in self.hidden_index)):
            raise NIRError(f"node {lif_name!r} ({_kind(lif_node)}) has inputs "
                           f"{g.pred[lif_name]}; besides its synaptic node opzo allows one "
                           "shortcut from an earlier LIF node")
        skip = len(self.neurons) - self.hidden_index[others[0]] if others else 0
        if skip:
            last = self.tokens[-1]
            self.tokens[-1] = LayerToken(last.kind, last.size, last.kernel, skip)
        self.hidden_index[lif_name] = len(self.neurons)
        self.neurons.append((lif_name, lam, gain, theta))


def _network_neuron(neurons: list[tuple[str, float, float, float]],
                    tokens: list[LayerToken], meta: dict[str, Any]
                    ) -> tuple[float, float, list[float]]:
    """(λ, V_th, per-layer weight scales): one λ and one V_th for the network, each layer's
    input gain over its threshold folded into its weights (not where a shortcut enters)."""
    name0, lam, gain0, theta0 = neurons[0]
    for name, lam_l, _, _ in neurons[1:]:
        if not math.isclose(lam_l, lam, rel_tol=_RTOL, abs_tol=1e-12):
            raise NIRError(f"node {name!r}: leak λ = 1 - dt/tau = {lam_l:.6g}, but node "
                           f"{name0!r} has {lam:.6g}; opzo's network has one λ")
    gain0 = _snap(gain0, 1.0)
    v_th = _snap(theta0 / gain0, theta0)
    # opzo's own export states λ and V_th exactly (the file's float32 τ and R only to ~1e-7)
    if "lif_lambda" in meta and math.isclose(lam, float(np.asarray(meta["lif_lambda"])),
                                             rel_tol=1e-5, abs_tol=1e-7):
        lam = float(np.asarray(meta["lif_lambda"]))
    if "v_th" in meta:
        v_th = _snap(v_th, float(np.asarray(meta["v_th"])))
    scales = [_snap(g * v_th / th, 1.0) for _, _, g, th in neurons]
    for (name, *_), tok, c in zip(neurons, [t for t in tokens if t.kind in ("conv", "dense")],
                                  scales):
        if tok.skip and c != 1.0:
            raise NIRError(f"node {name!r}: its input gain dt*r/tau over its threshold differs "
                           f"from the first layer's by a factor {c:.6g}; with a shortcut "
                           "into it this cannot be folded into the weights")
    return lam, v_th, scales


def _load_weights(net: SpikingNet, weights: list[tuple[str, np.ndarray, np.ndarray | None]],
                  scales: list[float], standardize: bool) -> None:
    """Each synaptic node's weight and bias (times its layer's scale) into the network."""
    layers = [*net.hidden, net.readout]
    with torch.no_grad():
        for layer, (name, w, b), c in zip(layers, weights, scales):
            if tuple(layer.weight.shape) != w.shape:
                raise NIRError(f"node {name!r}: weight shape {w.shape}, the layer built from "
                               f"the graph expects {tuple(layer.weight.shape)}")
            layer.weight.copy_(torch.from_numpy(w))
            if layer.bias is not None:
                if b is not None:
                    layer.bias.copy_(torch.from_numpy(b))
                else:
                    layer.bias.zero_()
            if c != 1.0:
                layer.weight.mul_(c)
                if layer.bias is not None:
                    layer.bias.mul_(c)
            if isinstance(layer, ConvLayer):
                _set_conv_weight(layer, name, standardize)


def _set_conv_weight(layer: ConvLayer, name: str, standardize: bool) -> None:
    """Make the conv use its loaded weight K: plain (Ŵ = K), or standardized with W = K and
    γ = √(Σ K² + ε) per output channel (Ŵ = K up to rounding; K needs zero channel means)."""
    if not standardize:
        layer.standardize = False
        return
    k = layer.weight
    mean = k.mean(dim=(1, 2, 3))
    scale = k.abs().amax(dim=(1, 2, 3)).clamp_min(1e-30)
    if bool((mean.abs() > 1e-5 * scale).any()):
        raise NIRError(f"node {name!r}: its kernels do not have zero mean per output channel, "
                       "which a standardized convolution requires; import with "
                       "standardize=False")
    layer.standardize = True
    layer.gain.copy_((k.square().sum(dim=(1, 2, 3), keepdim=True) + layer.eps).sqrt())


def load_nir_network(path: str | Path, dt: float | None = None, standardize: bool = False,
                     kernels: str = "native") -> SpikingNet:
    """Read a NIR file (``nir.write``'s HDF5) and build the network (:func:`from_nir`).

    A missing file raises FileNotFoundError; a truncated or foreign file, or one whose graph
    opzo cannot represent, :class:`NIRError` saying which.
    """
    nir = _nir()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"NIR file {p} not found")
    try:
        graph = nir.read(p)
    except Exception as exc:  # h5py, nir's node parsing: anything means "not a NIR file"
        raise NIRError(f"{p} is not a readable NIR file (truncated, or not written by "
                       f"nir.write): {type(exc).__name__}: {exc}") from None
    return from_nir(graph, dt=dt, standardize=standardize, kernels=kernels)


# ------------------------------------------------------------------------- peer simulators


def _per_step(x: Tensor, T: int | None, shape: Sequence[int]) -> tuple[Tensor, int, bool]:
    """(x, T, static): x as (B, *shape) static over T steps or (T, B, *shape) per step, from
    (B, *shape) or (B, F) static, (T, B, *shape) or (T, B, F) per step (F = Π shape)."""
    f = math.prod(shape)
    if tuple(x.shape[1:]) == tuple(shape) or (x.dim() == 2 and x.shape[1] == f):
        if T is None:
            raise ValueError("a static input needs the number of steps T")
        return x.reshape(x.shape[0], *shape), int(T), True
    if tuple(x.shape[2:]) == tuple(shape) or (x.dim() == 3 and x.shape[2] == f):
        return x.reshape(x.shape[0], x.shape[1], *shape), int(x.shape[0]), False
    raise ValueError(f"input of shape {tuple(x.shape)} fits neither (B, {f}) nor (T, B, {f})")


def _lif_names(graph: Any) -> list[str]:
    return [k for k, n in graph.nodes.items() if _kind(n) in ("LIF", "IF", "CubaLIF")]


def run_snntorch(graph: Any, x: Tensor, T: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Run a NIR graph in snnTorch (``snntorch.import_nir.import_from_nir``, which assumes
    dt = 1e-4) on ``x`` ((B, …) static over T steps, or (T, B, …)): (Σ_t output, per LIF node
    the spike count of every neuron summed over the steps, (B, n))."""
    import snntorch
    from snntorch.import_nir import import_from_nir

    with contextlib.redirect_stdout(io.StringIO()):  # the importer prints progress
        module = import_from_nir(graph)
    module.eval()
    names = _lif_names(graph)
    counts: dict[str, Tensor] = {}
    hooks = []
    for name in names:
        sub = module.get_submodule(name)

        def hook(_m, _i, out, name=name):
            s = (out[0] if isinstance(out, tuple) else out).detach().flatten(1)
            counts[name] = counts[name] + s if name in counts else s.clone()

        hooks.append(sub.register_forward_hook(hook))
    shape = tuple(int(d) for d in np.asarray(graph.nodes[_input_name(graph)].input_type["input"]))
    xs, steps, static = _per_step(x, T, shape)
    total = None
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, snntorch.SpikingNeuron) and hasattr(m, "reset_mem"):
                m.reset_mem()
        for t in range(steps):
            out = module(xs if static else xs[t])
            o = out[0] if isinstance(out, tuple) else out
            total = o if total is None else total + o
    for h in hooks:
        h.remove()
    assert total is not None
    return total, counts


def run_spikingjelly(graph: Any, x: Tensor, T: int | None = None, dt: float = DEFAULT_DT
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """As :func:`run_snntorch`, in SpikingJelly
    (``spikingjelly.activation_based.nir_exchange.import_from_nir``, single-step mode, the
    returned state passed back every step)."""
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    module = import_from_nir(graph, dt=dt)
    module.eval()
    counts: dict[str, Tensor] = {}
    hooks = []
    for name in _lif_names(graph):
        def hook(_m, _i, out, name=name):
            s = (out[0] if isinstance(out, tuple) else out).detach().flatten(1)
            counts[name] = counts[name] + s if name in counts else s.clone()

        hooks.append(module.get_submodule(name).register_forward_hook(hook))
    shape = tuple(int(d) for d in np.asarray(graph.nodes[_input_name(graph)].input_type["input"]))
    xs, steps, static = _per_step(x, T, shape)
    total, state = None, None
    with torch.no_grad():
        for t in range(steps):
            o, state = module(xs if static else xs[t], state)
            total = o if total is None else total + o
    for h in hooks:
        h.remove()
    assert total is not None
    return total, counts


def _input_name(graph: Any) -> str:
    return next(k for k, n in graph.nodes.items() if _kind(n) == "Input")


def spike_counts(net: SpikingNet, x: Tensor, T: int | None = None
                 ) -> tuple[Tensor, list[Tensor]]:
    """opzo's Σ_t o[t] and, per hidden layer, every neuron's spike count over the steps
    (B, n), the counterpart of :func:`run_snntorch` (layer l ↔ NIR node ``lif<l>``)."""
    total = None
    counts: list[Tensor] = []
    with torch.no_grad():
        for o, rec in net.run(x, T):
            total = o if total is None else total + o
            if not counts:
                counts = [s.clone() for s in rec.spikes]
            else:
                for c, s in zip(counts, rec.spikes):
                    c.add_(s)
    assert total is not None
    return total, counts


# ------------------------------------------------------------------------------------ CLI


def export_run(run_dir: str | Path, out: str | Path, approximate: bool = False,
               dt: float = DEFAULT_DT, data_root: str | None = None) -> dict[str, Any]:
    """``opzo export``: write a run folder's checkpoint as a NIR file and return a report.

    The network is rebuilt as ``opzo eval`` does (the run's config, its test set's input
    shape and classes). The written file is read back and must reproduce the network's outputs
    on a test batch. With ``approximate`` and a subtractive-reset network the report holds the
    measured agreement on the whole test set: the fraction of images whose predicted class is
    the same in the trained network and in the exported one (reset to zero), and both
    accuracies.
    """
    nir = _nir()
    from .build import build_network, make_source
    from .config import TrainConfig
    from .data import DATASETS
    from .rundir import CHECKPOINT, load_checkpoint

    run = Path(run_dir)
    ckpt = run / CHECKPOINT
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt} not found: pass a run folder written by 'opzo train'")
    # a RunError naming a damaged file, or the field that holds the wrong type
    state = load_checkpoint(ckpt, torch.device("cpu"), needed=("model", "config"))
    cfg = TrainConfig.from_dict(state["config"], source=str(ckpt))
    if data_root:
        if DATASETS[cfg.dataset].builtin:
            raise ValueError(f"--data-root: the run's dataset {cfg.dataset} ships with the "
                             "package and reads no folder; drop --data-root")
        cfg.data_root = data_root
    test_set = make_source(cfg, "test")
    net = build_network(cfg, test_set.input_shape, test_set.classes)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{ckpt} does not fit a network for {cfg.dataset} "
                         f"({test_set.classes} classes, input {tuple(test_set.input_shape)}): "
                         f"{str(exc)[:200]}") from None
    net.eval()
    graph = to_nir(net, dt=dt, approximate=approximate)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # written beside, then renamed: an interrupted export leaves no partial file at ``out``
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        nir.write(tmp, graph)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    back = load_nir_network(out, dt=dt)
    report: dict[str, Any] = {"run": str(run), "out": str(out), "net": net.describe(),
                              "dt": dt, "reset": net.neuron.reset,
                              "exact": net.neuron.reset == "zero"}
    x, _ = next(iter(test_set.batches(cfg.eval_batch_size, cfg.T)))
    ref, ref_counts = spike_counts(net, x, cfg.T)
    got, got_counts = spike_counts(back, x, cfg.T)
    if net.neuron.reset == "zero":
        same = torch.equal(ref, got) and all(torch.equal(a, b)
                                             for a, b in zip(ref_counts, got_counts))
        if not same:
            raise RuntimeError(f"the NIR file {out} read back does not reproduce the network's "
                               f"outputs (max difference {float((ref - got).abs().max()):g})")
        report["check"] = f"read back: identical outputs and spikes on {len(x)} test images"
    if approximate and net.neuron.reset != "zero":
        agree = correct_ref = correct_nir = n = 0
        for x, labels in test_set.batches(cfg.eval_batch_size, cfg.T):
            p_ref = spike_counts(net, x, cfg.T)[0].argmax(1)
            p_nir = spike_counts(back, x, cfg.T)[0].argmax(1)
            agree += int((p_ref == p_nir).sum())
            correct_ref += int((p_ref == labels).sum())
            correct_nir += int((p_nir == labels).sum())
            n += len(labels)
        report["agreement"] = {
            "images": n, "same_prediction": agree / n,
            "accuracy_trained": 100.0 * correct_ref / n,
            "accuracy_exported": 100.0 * correct_nir / n,
            "note": "subtractive reset exported as reset to zero: a different network"}
    return report


def network_from_nir(cfg: Any, path: str, input_shape: Sequence[int],
                     classes: int) -> SpikingNet:
    """``opzo train --init-from FILE.nir``: the network of a NIR file, with the config's
    training-time options (surrogate, dropout, kernels, chip noise); its input and outputs
    must fit the dataset (``cfg``: a :class:`~opzo.config.TrainConfig`)."""
    from .build import attach_chip_noise, build_surrogate

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
    attach_chip_noise(cfg, net)
    return net


def format_report(report: dict[str, Any]) -> str:
    """The export report as printed by ``opzo export``."""
    return json.dumps(report, indent=2)
