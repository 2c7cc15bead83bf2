"""Cost of learning: memory and operations of each method's error-backward procedure.

OPZO paper, section 5.5 and Table 5 ("estimation of training costs on potential neuromorphic
hardware ... the costs focus on the error backward procedure"). For N hidden layers of n
neurons and m outputs the paper gives the classes

    BP (if possible)  memory and operations O((N−1)n² + mn)   layer by layer
    DFA*              O(Nmn)                                   * parallel across layers
    ZO_sp*            O(Nn)
    OPZO*             O(Nmn)

:func:`learning_cost` counts them exactly for a given :class:`~opzo.network.SpikingNet` (FC,
conv, residual), per sample and time step, for any registered rule from the
:class:`~opzo.rules.profile.CostProfile` its class declares (how its feedback reaches a layer:
transposed weights, a direct matrix or a scalar; whether it learns the feedback, with what
optimizer; what it keeps per sample); a rule that declares none has no cost model. Hidden
layer sizes are n_l (C·H·W for a feature map), m outputs. On an FC net of N equal hidden
layers its numbers are the closed forms above with the O dropped (tested).

**Operations** (multiply-adds, MACs, per sample and step):

* ``feedback``: how the error reaches the hidden layers.
  Transposed (BP): the transposed op of every layer above the first, top down:
  Σ_{ops} MACs(opᵀ) over the readout and hidden layers 2..N, where MACs(opᵀ) = MACs(op) =
  the number of synapses of the op (dense: n_in·n_out; conv: C_out·C_in·Σ over output
  positions of the kernel taps that fall inside the input, i.e. "same"-padding borders
  counted exactly; ``borders="padded"`` counts every tap, C_out·H_out·W_out·C_in·k², what a
  dense conv kernel computes).
  Direct (DFA, DKP, OPZO): g_l = F_l e, Σ_l n_l·m. Scalar (ZO): g_l = (L/α) z_l, a scalar
  broadcast, Σ_l n_l multiplies.
* ``update``: learning the feedback itself. OPZO: M_l ← λ_M M_l + (1 − λ_M) z_l õᵀ, Σ_l n_l·m
  per sample (plus Σ_l n_l·m multiplies by λ_M once per batch, not counted per sample). DKP:
  ∇F_l += â_l eᵀ, Σ_l n_l·m (plus the optimizer's step once per batch). Others: 0.
* ``local``: LL / IGL readouts r_l = R_l x_l: forward n_l·m, backward R_lᵀ e_l n_l·m and
  their gradient e_l x_lᵀ n_l·m, for each layer with a readout (OPZO paper, section 4.4).
* IGL at hidden layer k (0-based here, as :class:`~opzo.rules.LocalLearning`): a second
  copy of the rule feeds the error of R_k to the layers below k. BP: the transposed ops of
  hidden layers 2..k+1 (R_kᵀ e_k is shared with k's local error, counted once); DFA / DKP /
  OPZO: Σ_{l<k} n_l·m feedback (OPZO and DKP as much again for the update); ZO: Σ_{l<k} n_l.
  (The implementation runs the copy on layers 0..k and recomputes R_kᵀ e_k: n_k·m more for
  feedback, and for OPZO/DKP updates, than this ideal count.)

Pooling transposes (δ/k² copied to the k² pixels of a window: foldable into the weights),
the local derivative δ_l = g_l ⊙ m_l ⊙ ψ(u_l) (Σ_l n_l multiplies, every method alike),
shortcut additions and DKP's trace update (Σ_l n_l) are elementwise; they are listed under
``elementwise``, not in the MACs.

``parallel``: whether the feedback to the layers can run at once (DFA, DKP, ZO, OPZO: one
stage; BP: one stage per transposed op, each waiting for the one above). ``critical_path``:
the MACs of the longest chain (BP: its whole chain, IGL's second chain running beside it;
direct feedback: the largest layer's n_l·m; a readout's forward and backward, 2·n_l·m, where
LL or IGL adds one).

**Memory**:

* ``feedback_weights``: stored feedback connections, shared by all samples. BP: the weights
  of the transposed ops (a conv stores its kernel once, C_out·C_in·k², weight sharing);
  DFA / DKP / OPZO: Σ_l n_l·m (+ IGL's second set Σ_{l<k} n_l·m); ZO: 0.
* ``optimizer_state``: DKP as implemented (AdamW): its gradient and two moments, 3·Σ n_l·m.
* ``readouts``: LL / IGL readout weights and biases, Σ (n_l·m + m).
* ``state``: values stored per sample for the procedure beyond what every method holds (the
  errors e and δ_l, Σ_l n_l + m, listed as ``common_state``): OPZO and ZO the noise z_l
  (Σ n_l, needed after the forward pass for the update / the estimate), DKP the activity
  trace â_l (Σ n_l), LL the readouts' outputs (m per readout).

``forward``: the inference MACs of one step (every synapse of every op, readout included,
dense: not event-driven; for the event-driven count see :mod:`opzo.energy`) and the number of
weights, for scale.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .layers import ConvLayer, DenseLayer
from .network import SpikingMLP, SpikingNet
from .rules import RULES
from .rules.profile import CostProfile

__all__ = ["cost_methods", "cost_profile", "format_cost_table", "learning_cost", "main_cost",
           "op_macs", "op_weights"]

BORDERS = ("exact", "padded")


def _taps_1d(size_in: int, size_out: int, k: int, stride: int, pad: int) -> int:
    """Σ over output positions of the kernel taps that land inside an input of ``size_in``."""
    total = 0
    for o in range(size_out):
        start = o * stride - pad
        total += max(0, min(start + k, size_in) - max(start, 0))
    return total


def op_macs(layer: DenseLayer | ConvLayer, borders: str = "exact") -> int:
    """MACs of the layer's synaptic op on one sample (= its number of synapses; the same for
    its transpose). The input pooling is not counted (see the module docstring)."""
    if borders not in BORDERS:
        raise ValueError(f"borders must be one of {BORDERS}, got {borders!r}")
    if isinstance(layer, ConvLayer):
        c_in, h, w = (int(d) for d in layer.op_in_shape)
        c_out, ho, wo = (int(d) for d in layer.out_shape)
        k, st, p = layer.kernel_size, layer.stride, layer.padding
        if borders == "padded":
            return c_out * ho * wo * c_in * k * k
        return c_out * c_in * _taps_1d(h, ho, k, st, p) * _taps_1d(w, wo, k, st, p)
    return int(layer.in_features) * int(layer.out_features)


def op_weights(layer: DenseLayer | ConvLayer) -> int:
    """Stored weights of the op (no bias): n_in·n_out, or C_out·C_in·k² for a conv."""
    return int(layer.weight.numel())


def _net_name(net: SpikingNet) -> str:
    return net.describe()


def cost_profile(method: str) -> CostProfile:
    """The :class:`~opzo.rules.profile.CostProfile` the registered rule ``method`` declares.
    Raises ValueError (one line) for a name :data:`~opzo.rules.RULES` does not hold or a rule
    that declares none."""
    if method not in RULES:
        raise ValueError(f"unknown method {method!r}; choose one of {list(RULES)}")
    profile = getattr(RULES[method].factory, "cost_profile", None)
    if profile is None:
        raise ValueError(f"rule {method!r} has no cost model: its class declares no "
                         "cost_profile (opzo.rules.profile.CostProfile)")
    return profile


def cost_methods() -> tuple[str, ...]:
    """The registered rules that declare a cost profile, in registration order."""
    return tuple(n for n in RULES
                 if getattr(RULES[n].factory, "cost_profile", None) is not None)


@dataclass
class _Count:
    """The running totals of one method's count (see the module docstring's terms)."""

    feedback: int = 0
    update: int = 0
    feedback_weights: int = 0
    optimizer_state: int = 0
    state: int = 0
    trace: int = 0
    #: MACs of each stage of the feedback (one per transposed op; one for direct feedback)
    stage_macs: list[int] = field(default_factory=list)
    #: the MACs of IGL's second backward chain, which runs beside the main one (transposed)
    igl_chain: int = 0


def _feedback_count(profile: CostProfile, net: SpikingNet, borders: str) -> _Count:
    """The feedback to every hidden layer: its MACs, weights, learning and stored state."""
    sizes = [int(n) for n in net.hidden_sizes]
    m = int(net.num_outputs)
    c = _Count()
    if profile.feedback == "transposed":
        transposed = [net.readout, *list(net.hidden)[1:]]  # what BP passes the error through
        c.stage_macs = [op_macs(op, borders) for op in transposed]
        c.feedback = sum(c.stage_macs)
        c.feedback_weights = sum(op_weights(op) for op in transposed)
    elif profile.feedback == "scalar":
        c.feedback = sum(sizes)
        c.stage_macs = [max(sizes)]
    else:  # a direct matrix per layer
        c.feedback = c.feedback_weights = sum(n * m for n in sizes)
        c.stage_macs = [max(sizes) * m]
    _add_learning(c, profile, c.feedback if profile.feedback == "direct" else 0)
    c.state += (int(profile.stores_noise) + int(profile.activity_trace)) * sum(sizes)
    c.trace = sum(sizes) if profile.activity_trace else 0
    return c


def _add_learning(c: _Count, profile: CostProfile, direct_macs: int) -> None:
    """Learning ``direct_macs`` more feedback weights: as many MACs of update, and the
    optimizer's copies of them."""
    if profile.learns_feedback:
        c.update += direct_macs
        c.optimizer_state += profile.optimizer_copies * direct_macs


def _add_igl(c: _Count, profile: CostProfile, net: SpikingNet, igl_layer: int,
             borders: str) -> None:
    """IGL at hidden layer ``igl_layer``: a second copy of the rule feeds R_k's error to the
    layers below it (the module docstring's ideal count)."""
    below = [int(n) for n in net.hidden_sizes[:igl_layer]]
    m = int(net.num_outputs)
    if profile.feedback == "transposed":
        c.igl_chain = sum(op_macs(op, borders) for op in list(net.hidden)[1:igl_layer + 1])
        c.feedback += c.igl_chain
    elif profile.feedback == "scalar":
        c.feedback += sum(below)
    else:
        extra = sum(n * m for n in below)
        c.feedback += extra
        c.feedback_weights += extra
        _add_learning(c, profile, extra)


def _readout_layers(n_layers: int, local_learning: bool, igl_layer: int | None) -> list[int]:
    """The hidden layers with a local readout: all with LL, and IGL's layer."""
    layers = list(range(n_layers)) if local_learning else []
    if igl_layer is not None and igl_layer not in layers:
        layers.append(igl_layer)
    return layers


def _critical_path(c: _Count, parallel: bool, readout_macs: list[int]) -> tuple[int, int]:
    """(critical path MACs, stages): direct and scalar feedback is one stage, its largest
    layer's; transposed ops are a chain (IGL's beside it); each readout's forward and
    backward, 2·n_l·m, run beside the feedback."""
    if parallel:
        critical, stages = (max(c.stage_macs) if c.stage_macs else 0), 1
    else:
        critical, stages = max(sum(c.stage_macs), c.igl_chain), len(c.stage_macs)
    if readout_macs:
        critical = max(critical, 2 * max(readout_macs))
    return critical, stages


def learning_cost(net: SpikingNet, method: str, local_learning: bool = False,
                  igl_layer: int | None = None, borders: str = "exact") -> dict[str, Any]:
    """Memory and operations of ``method``'s error-backward procedure on ``net``, per sample
    and time step (see the module docstring for every term), counted from the
    :class:`~opzo.rules.profile.CostProfile` the rule declares.

    ``method``: a registered rule (:data:`opzo.rules.RULES`) with a cost profile
    (:func:`cost_methods`); ``local_learning``: LL (a readout per hidden layer);
    ``igl_layer``: IGL at this hidden layer, **0-based** as in
    :class:`~opzo.rules.LocalLearning` (``opzo train --igl-layer K`` counts from 1: pass
    K − 1); ``borders``: ``exact`` or ``padded`` conv MACs.

    Returns a JSON-able dict: ``method`` (e.g. ``opzo+ll``), ``net``, ``hidden`` (n_l),
    ``outputs`` (m), ``memory`` {feedback_weights, optimizer_state, readouts, state,
    common_state, total}, ``ops`` {feedback, update, local, total} (MACs), ``elementwise``
    {local_derivative, shortcut_adds, trace}, ``parallel``, ``stages``, ``critical_path``,
    ``forward`` {macs, weights} and ``ratio_to_forward`` (ops total / forward MACs).
    """
    profile = cost_profile(method)
    if borders not in BORDERS:
        raise ValueError(f"borders must be one of {BORDERS}, got {borders!r}")
    sizes = [int(n) for n in net.hidden_sizes]
    n_layers, m = len(sizes), int(net.num_outputs)
    if igl_layer is not None and not 1 <= igl_layer < n_layers:
        raise ValueError(f"igl_layer {igl_layer} (0-based) must be a hidden layer with "
                         f"layers below it: 1..{n_layers - 1}")
    c = _feedback_count(profile, net, borders)
    readout_layers = _readout_layers(n_layers, local_learning, igl_layer)
    local = 3 * sum(sizes[l] * m for l in readout_layers)  # forward, backward, gradient
    readouts = sum(sizes[l] * m + m for l in readout_layers)
    c.state += m * len(readout_layers)
    if igl_layer is not None:
        _add_igl(c, profile, net, igl_layer, borders)
    parallel = profile.feedback != "transposed"
    critical, stages = _critical_path(c, parallel, [sizes[l] * m for l in readout_layers])
    layers = [*net.hidden, net.readout]
    forward_macs = sum(op_macs(op, borders) for op in layers)
    ops_total = c.feedback + c.update + local
    name = method + ("+ll" if local_learning else "") + ("+igl" if igl_layer is not None
                                                          else "")
    shortcut_adds = (sum(sizes[l] for l, j in enumerate(net.skips) if j is not None)
                     if profile.feedback == "transposed" else 0)
    return {
        "method": name,
        "net": _net_name(net),
        "hidden": sizes,
        "outputs": m,
        "igl_layer": igl_layer,
        "borders": borders,
        "memory": {
            "feedback_weights": c.feedback_weights,
            "optimizer_state": c.optimizer_state,
            "readouts": readouts,
            "state": c.state,
            "common_state": sum(sizes) + m,
            "total": c.feedback_weights + c.optimizer_state + readouts + c.state,
        },
        "ops": {"feedback": c.feedback, "update": c.update, "local": local,
                "total": ops_total},
        "elementwise": {"local_derivative": sum(sizes), "shortcut_adds": shortcut_adds,
                        "trace": c.trace},
        "parallel": parallel,
        "stages": stages,
        "critical_path": critical,
        "forward": {"macs": forward_macs, "weights": sum(op_weights(op) for op in layers)},
        "ratio_to_forward": ops_total / forward_macs if forward_macs else math.nan,
    }


def _fmt(n: float) -> str:
    """Integers with thousands separators; large ones also in scientific notation."""
    if isinstance(n, float) and not n.is_integer():
        return f"{n:.3g}"
    n = int(n)
    return f"{n:,}" if n < 10**7 else f"{n:.3e}".replace("e+0", "e").replace("e+", "e")


def format_cost_table(costs: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`learning_cost` results (one row per method), with the
    network and its forward cost in a header line."""
    if not costs:
        return ""
    first = costs[0]
    head = (f"{first['net']}  (m = {first['outputs']}, hidden n_l = "
            f"{', '.join(str(n) for n in first['hidden'])}; per sample and time step; "
            f"forward: {_fmt(first['forward']['macs'])} MACs, "
            f"{_fmt(first['forward']['weights'])} weights; conv borders {first['borders']})")
    cols = ["method", "feedback weights", "state/sample", "feedback MACs", "update MACs",
            "LL/IGL MACs", "total MACs", "x forward", "critical path", "stages"]
    rows = []
    for c in costs:
        mem, ops = c["memory"], c["ops"]
        weights = _fmt(mem["feedback_weights"])
        if mem["optimizer_state"]:
            weights += f" (+{_fmt(mem['optimizer_state'])} opt.)"
        if mem["readouts"]:
            weights += f" (+{_fmt(mem['readouts'])} readouts)"
        rows.append([c["method"], weights, _fmt(mem["state"]), _fmt(ops["feedback"]),
                     _fmt(ops["update"]), _fmt(ops["local"]), _fmt(ops["total"]),
                     f"{c['ratio_to_forward']:.3g}", _fmt(c["critical_path"]),
                     str(c["stages"]) + ("" if not c["parallel"] else " (parallel)")])
    widths = [max(len(r[i]) for r in [cols, *rows]) for i in range(len(cols))]

    def line(r: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                         for i, (v, w) in enumerate(zip(r, widths)))

    body = [line(cols), line(["-" * w for w in widths]), *[line(r) for r in rows]]
    foot = ("state/sample: stored per sample beyond the errors e, δ_l every method holds "
            f"({_fmt(first['memory']['common_state'])} values); elementwise work "
            "(ψ, pooling transposes) not in the MACs")
    return "\n".join([head, *body, foot])


def build_cost_net(net: str | None, input_shape: Sequence[int], outputs: int,
                   hidden: Sequence[int] = (800, 800), width: float = 1.0) -> SpikingNet:
    """The network whose cost is wanted, built on the ``meta`` device (shapes only, no
    memory): ``net`` a network string or name, or None for the FC net of ``hidden``."""
    shape = tuple(int(d) for d in input_shape)
    with torch.device("meta"):
        if net is None:
            return SpikingMLP([math.prod(shape), *[int(n) for n in hidden], int(outputs)],
                              kernels="torch")
        return SpikingNet(net, shape, int(outputs), width=width, kernels="torch")


def main_cost(argv: list[str] | None = None) -> int:
    """``opzo cost``: print the learning cost table of a network (see the module docstring).

    Example: ``opzo cost --net conv5 --input-shape 3 32 32 --method all``;
    ``opzo cost --hidden 800 800 --input-shape 784`` (the MNIST FC net, the default).
    """
    from .config import OptionParser  # one-line errors, as every opzo command

    p = OptionParser(
        prog="opzo cost",
        description="Memory and operations per sample and time step of each method's "
                    "error-backward procedure (OPZO paper Table 5), counted exactly for a "
                    "network.")
    p.add_argument("--net", default=None,
                   help="network string or name (conv5, conv9, ...); default: the FC net of "
                        "--hidden")
    p.add_argument("--hidden", type=int, nargs="+", default=[800, 800],
                   help="hidden layer sizes of the FC net (without --net; default 800 800)")
    p.add_argument("--input-shape", type=int, nargs="+", default=None,
                   help="input shape: F for an FC net (default 784), C H W for a conv net "
                        "(default 1 28 28)")
    p.add_argument("--outputs", type=int, default=10, help="number of outputs m (default 10)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of --net")
    p.add_argument("--method", default="all", choices=[*RULES, "all"],
                   help="spatial-credit method (a registered rule), or all (default: every "
                        "rule with a cost model)")
    p.add_argument("--local-learning", action="store_true", help="with LL readouts")
    p.add_argument("--igl-layer", type=int, default=None,
                   help="IGL at this hidden layer, counted from 1 (as opzo train)")
    p.add_argument("--borders", choices=BORDERS, default="exact",
                   help="conv MACs with same-padding borders counted exactly (default) or "
                        "as a dense kernel computes them")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    shape = args.input_shape
    if shape is None:
        shape = [784] if args.net is None else [1, 28, 28]
    try:
        net = build_cost_net(args.net, shape, args.outputs, args.hidden, args.width)
        igl = None if args.igl_layer is None else args.igl_layer - 1
        methods = list(cost_methods()) if args.method == "all" else [args.method]
        costs = [learning_cost(net, m, args.local_learning, igl, args.borders)
                 for m in methods]
    except ValueError as exc:
        p.error(str(exc))
    if args.json:
        print(json.dumps(costs, indent=1))
    else:
        print(format_cost_table(costs))
        if args.method == "all":
            for name in RULES:
                if name not in methods:
                    print(f"{name}: no cost model (the rule declares no cost_profile)")
    return 0
