"""Cost of learning: memory and operations of each method's error-backward procedure.

OPZO paper, section 5.5 and Table 5 ("estimation of training costs on potential neuromorphic
hardware ... the costs focus on the error backward procedure"). For N hidden layers of n
neurons and m outputs the paper gives the classes

    BP (if possible)  memory and operations O((N−1)n² + mn)   layer by layer
    DFA*              O(Nmn)                                   * parallel across layers
    ZO_sp*            O(Nn)
    OPZO*             O(Nmn)

:func:`learning_cost` counts them exactly for a given :class:`~opzo.network.SpikingNet` (FC,
conv, residual), per sample and time step, with hidden layer sizes n_l (C·H·W for a feature
map) and m outputs. On an FC net of N equal hidden layers its numbers are the closed forms
above with the O dropped (tested).

**Operations** (multiply-adds, MACs, per sample and step):

* ``feedback``: how the error reaches the hidden layers.
  BP: the transposed op of every layer above the first, top down: Σ_{ops} MACs(opᵀ) over the
  readout and hidden layers 2..N, where MACs(opᵀ) = MACs(op) = the number of synapses of the
  op (dense: n_in·n_out; conv: C_out·C_in·Σ over output positions of the kernel taps that
  fall inside the input, i.e. "same"-padding borders counted exactly; ``borders="padded"``
  counts every tap, C_out·H_out·W_out·C_in·k², what a dense conv kernel computes).
  DFA, DKP, OPZO: g_l = F_l e, Σ_l n_l·m. ZO: g_l = (L/α) z_l, a scalar broadcast, Σ_l n_l
  multiplies.
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
from typing import Any

import torch

from .layers import ConvLayer, DenseLayer
from .network import SpikingMLP, SpikingNet

__all__ = ["METHODS", "format_cost_table", "learning_cost", "main_cost", "op_macs",
           "op_weights"]

#: the spatial-credit methods :func:`learning_cost` knows
METHODS = ("bp", "dfa", "dkp", "zo", "opzo")
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


def learning_cost(net: SpikingNet, method: str, local_learning: bool = False,
                  igl_layer: int | None = None, borders: str = "exact") -> dict[str, Any]:
    """Memory and operations of ``method``'s error-backward procedure on ``net``, per sample
    and time step (see the module docstring for every term).

    ``method``: one of :data:`METHODS`; ``local_learning``: LL (a readout per hidden layer);
    ``igl_layer``: IGL at this hidden layer, **0-based** as in
    :class:`~opzo.rules.LocalLearning` (``opzo train --igl-layer K`` counts from 1: pass
    K − 1); ``borders``: ``exact`` or ``padded`` conv MACs.

    Returns a JSON-able dict: ``method`` (e.g. ``opzo+ll``), ``net``, ``hidden`` (n_l),
    ``outputs`` (m), ``memory`` {feedback_weights, optimizer_state, readouts, state,
    common_state, total}, ``ops`` {feedback, update, local, total} (MACs), ``elementwise``
    {local_derivative, shortcut_adds, trace}, ``parallel``, ``stages``, ``critical_path``,
    ``forward`` {macs, weights} and ``ratio_to_forward`` (ops total / forward MACs).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if borders not in BORDERS:
        raise ValueError(f"borders must be one of {BORDERS}, got {borders!r}")
    hidden = list(net.hidden)
    sizes = [int(n) for n in net.hidden_sizes]
    n_layers = len(sizes)
    m = int(net.num_outputs)
    if igl_layer is not None and not 1 <= igl_layer < n_layers:
        raise ValueError(f"igl_layer {igl_layer} (0-based) must be a hidden layer with "
                         f"layers below it: 1..{n_layers - 1}")
    transposed = [net.readout, *hidden[1:]]  # the ops BP passes the error back through
    feedback = update = 0
    feedback_weights = optimizer_state = state = 0
    trace = 0
    stage_macs: list[int] = []
    if method == "bp":
        stage_macs = [op_macs(op, borders) for op in transposed]
        feedback = sum(stage_macs)
        feedback_weights = sum(op_weights(op) for op in transposed)
    elif method == "zo":
        feedback = sum(sizes)
        stage_macs = [max(sizes)]
        state = sum(sizes)
    else:  # direct feedback: dfa, dkp, opzo
        feedback = sum(n * m for n in sizes)
        stage_macs = [max(sizes) * m]
        feedback_weights = feedback
        if method == "opzo":
            update = feedback
            state = sum(sizes)
        elif method == "dkp":
            update = feedback
            optimizer_state = 3 * feedback
            state = trace = sum(sizes)
    # local learning: readouts
    readout_layers = list(range(n_layers)) if local_learning else []
    if igl_layer is not None and igl_layer not in readout_layers:
        readout_layers.append(igl_layer)
    local = 3 * sum(sizes[l] * m for l in readout_layers)
    readouts = sum(sizes[l] * m + m for l in readout_layers)
    state += m * len(readout_layers)
    igl_chain = 0  # BP: IGL's backward chain runs beside the main one
    if igl_layer is not None:
        below = sizes[:igl_layer]
        if method == "bp":
            igl_chain = sum(op_macs(op, borders) for op in hidden[1:igl_layer + 1])
            feedback += igl_chain
        elif method == "zo":
            feedback += sum(below)
        else:
            extra = sum(n * m for n in below)
            feedback += extra
            feedback_weights += extra
            if method in ("opzo", "dkp"):
                update += extra
            if method == "dkp":
                optimizer_state += 3 * extra
    parallel = method != "bp"
    if parallel:
        critical = max(stage_macs) if stage_macs else 0
        stages = 1
    else:
        critical = max(sum(stage_macs), igl_chain)
        stages = len(stage_macs)
    if readout_layers:  # each readout's forward and backward run beside the feedback
        critical = max(critical, 2 * max(sizes[l] * m for l in readout_layers))
    forward_macs = sum(op_macs(op, borders) for op in [*hidden, net.readout])
    forward_weights = sum(op_weights(op) for op in [*hidden, net.readout])
    ops_total = feedback + update + local
    common_state = sum(sizes) + m
    name = method + ("+ll" if local_learning else "") + ("+igl" if igl_layer is not None
                                                          else "")
    return {
        "method": name,
        "net": _net_name(net),
        "hidden": sizes,
        "outputs": m,
        "igl_layer": igl_layer,
        "borders": borders,
        "memory": {
            "feedback_weights": feedback_weights,
            "optimizer_state": optimizer_state,
            "readouts": readouts,
            "state": state,
            "common_state": common_state,
            "total": feedback_weights + optimizer_state + readouts + state,
        },
        "ops": {"feedback": feedback, "update": update, "local": local, "total": ops_total},
        "elementwise": {
            "local_derivative": sum(sizes),
            "shortcut_adds": sum(sizes[l] for l, j in enumerate(net.skips) if j is not None)
            if method == "bp" else 0,
            "trace": trace,
        },
        "parallel": parallel,
        "stages": stages,
        "critical_path": critical,
        "forward": {"macs": forward_macs, "weights": forward_weights},
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
    p.add_argument("--method", default="all", choices=[*METHODS, "all"],
                   help="spatial-credit method, or all (default)")
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
        methods = list(METHODS) if args.method == "all" else [args.method]
        costs = [learning_cost(net, m, args.local_learning, igl, args.borders)
                 for m in methods]
    except ValueError as exc:
        p.error(str(exc))
    if args.json:
        print(json.dumps(costs, indent=1))
    else:
        print(format_cost_table(costs))
    return 0
