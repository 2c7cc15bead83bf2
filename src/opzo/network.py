"""A feed-forward SNN (fully connected or convolutional) with a one-step forward that
learning rules hook into.

Layers (OPZO paper, section 3.1 and appendix C.3.2):

* hidden layer l = 1..N−1: synaptic current I_l[t] = op_l(P_l x_{l−1}[t]; W_l) + b_l, with
  op_l a fully connected layer (W x) or a convolution with scaled weight standardization
  (conv(x, Ŵ), :mod:`opzo.layers`) and P_l an optional average pooling of its input; the
  network's neuron model (:mod:`opzo.neurons`; LIF of eq. 1 by default), spikes s_l[t]; what
  it delivers to the next layer is
  x_l[t] = (s_l[t] + α z_l[t]) ⊙ m_l where α z_l is optional perturbation noise ("after the
  neuron", OPZO section 4.4) and m_l a dropout mask drawn once per sample and kept over all
  time steps (0 or 1/(1 − p)); with noise "before the neuron" α z_l is added to I_l[t].
* readout: a non-spiking layer o[t] = W_N flatten(P_N x_{N−1}[t]) + b_N; classification uses
  Σ_t o[t].

Every per-layer tensor a learning rule sees is flattened to (B, n_l), n_l = C·H·W for a
feature map (a contiguous view of (B, C, H, W)): the noise z_l, the spikes, potentials, masks,
the errors g_l and δ_l, and the rows of DFA's B_l and OPZO's M_l, which are therefore dense
over all C·H·W neurons of a conv layer (OPZO paper, section 4.2 and appendix C.3). So every
rule and trace works on conv networks with no conv-specific code; the layers reshape inside.

Networks are written as in the OPZO paper (appendix C.3.2), tokens joined by "-":

* ``<n>C<k>``: a convolution to n channels with a k×k kernel, stride 1, "same" padding,
  scaled weight standardization, then the network's neurons (LIF by default);
* ``AP<k>``: k×k average pooling of the spikes of the layer before it (it is the input
  transform of the next op; floor mode for sizes not divisible by k);
* ``GAP``: global average pooling (the whole H×W map to 1×1);
* ``<n>``: a fully connected hidden layer of n neurons (flattens a feature map);
* ``FC``: the readout, last;
* a ``+`` after a hidden token makes it residual: the layer adds the spikes its input layer
  delivered to its synaptic current, I_l = op_l(x_{l−1}) + b_l + x_{l−1} (an identity
  shortcut around one layer); ``+2`` takes them from two layers back, I_l = op_l(x_{l−1}) +
  b_l + x_{l−2} (around a block of two layers, as in a ResNet basic block), ``+k`` from k
  back. The source's output and the layer's output must have the same shape (no pooling or
  channel change in between). The shortcut is on the current, so every rule and trace works
  unchanged (it has no weights; spatial BP passes δ_l back along it, a direct-feedback rule
  needs nothing, its feedback goes to every layer anyway).

``conv5`` = ``128C3-AP2-256C3-AP2-512C3-FC`` and ``conv9`` =
``64C3-128C3-AP2-256C3-256C3-AP2-512C3-512C3-AP2-512C3-512C3-FC`` are the paper's 5- and
9-layer networks. Their residual variants (OPZO paper, appendix D.5 and Table 12, which do not
spell out the architecture; these are our reading): ``conv9r`` puts a one-layer shortcut on
the second conv of each equal-width pair; ``resnet18`` / ``resnet34`` are ResNet-18 / -34
made of these layers (a 3x3 stem, basic blocks of two convs with a two-layer shortcut, [2, 2,
2, 2] / [3, 4, 6, 3] blocks at 64, 128, 256, 512 channels, each stage after the first
entered by 2x2 average pooling, its first block's shortcut around its second conv only since
the channels change there; global average pooling before the readout). ``width`` multiplies
every hidden layer's channels (and neurons) so that they train on a CPU (0.25:
``32C3-AP2-64C3-AP2-128C3-FC``; Table 12's "smaller channels"). The FC network 784-800-800-10 is
``800-800-FC`` on input shape (784,), or :class:`SpikingMLP` ``([784, 800, 800, 10])``.

Kernels: with ``kernels="native"`` (the default) each hidden layer's elementwise work of a
step (LIF update, spike, noise, dropout and, for training, the local derivative m_l ⊙ ψ(u_l))
runs as one fused native pass (:func:`opzo.native.lif_step`) and the dropout masks come from
the native Philox generator, on float32 CPU tensors outside autograd; its forward values equal
the torch ops' bit for bit. ``kernels="torch"`` runs torch ops only and draws the masks with
torch's generator (the streams of the figures recorded before the native kernels; see
``benchmarks/RESULTS.md``).

The network owns only the inference parameters. Learning rules read what one step produced
(:class:`StepRecord`) and write ``.grad``; their own state lives in the rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import native
from .deprecation import warn_renamed
from .distributed import Shard
from .hardware import HardwareNoise
from .layers import ConvLayer, DenseLayer
from .layers_extra import Pool2d
from .netstring import LayerToken, net_string, parse_net
from .neurons import LIF, Neuron
from .neurons.base import Threshold, surrogate_at
from .surrogate import SigmoidSurrogate, Surrogate

#: how a step's elementwise work and the dropout masks are computed (see the module docstring)
KERNELS = ("native", "torch")

NOISE_POSITIONS = ("after", "before")

class NetState:
    """The neurons' temporal state: per state variable of the neuron model (u and s, and the
    model's own, e.g. CubaLIF's i; :attr:`opzo.neurons.Neuron.state_vars`) one (B, n_l)
    tensor per hidden layer, in :attr:`vars`; ``u`` and ``s`` are its first two lists."""

    def __init__(self, u: list[Tensor], s: list[Tensor], **extra: list[Tensor]) -> None:
        #: state variable name -> one tensor per hidden layer
        self.vars: dict[str, list[Tensor]] = {"u": list(u), "s": list(s),
                                              **{k: list(v) for k, v in extra.items()}}

    @property
    def u(self) -> list[Tensor]:
        """Membrane potentials, one per hidden layer."""
        return self.vars["u"]

    @property
    def s(self) -> list[Tensor]:
        """Last spikes, one per hidden layer."""
        return self.vars["s"]

    def layer(self, l: int) -> dict[str, Tensor]:
        """Hidden layer l's state, name -> tensor."""
        return {k: v[l] for k, v in self.vars.items()}

    def set_layer(self, l: int, state: dict[str, Tensor]) -> None:
        for k, v in state.items():
            self.vars[k][l] = v


@dataclass
class StepRecord:
    """What one time step of the forward pass produced, per hidden layer.

    ``u``: membrane potentials u_l[t]; ``spikes``: s_l[t]; ``out``: x_l[t], what the layer
    delivered to the next one (spikes, plus noise and dropout); ``masks``: the dropout masks
    (or None). All (B, n_l), flattened.
    """

    u: list[Tensor]
    spikes: list[Tensor]
    out: list[Tensor]
    masks: list[Tensor] | None
    surrogate: Surrogate
    #: the neuron model's base threshold
    v_th: float
    gains: list[Tensor] | None = None  # m_l · surrogate.gain(), precomputed per batch
    #: what each hidden layer's synaptic op saw at this step (its input after pooling,
    #: flattened): the presynaptic traces are kept on it
    inputs: list[Tensor] | None = None
    #: what the readout's linear map saw (x_{N−1}[t] after its pooling, flattened)
    readout_in: Tensor | None = None
    #: per hidden layer, a local derivative D_l[t] that replaces ψ(u_l[t]) (a temporal
    #: trace's, e.g. OTPE's ḡ; set by :func:`opzo.traces.record_for_rule`), or None
    derivatives: list[Tensor | None] | None = None
    #: per hidden layer, m_l ⊙ ψ(u_l[t]) computed by the fused native step, or None (then
    #: computed from u_l[t] when asked)
    dpsi: list[Tensor | None] | None = None
    #: per hidden layer, the threshold the spikes s_l[t] were compared with (a float, or a
    #: (B, n_l) tensor for a neuron whose threshold moves, e.g. ALIF); None: ``v_th``
    thresholds: list[Threshold] | None = None

    def threshold(self, l: int) -> Threshold:
        """V_th of layer l at this step (see :attr:`thresholds`)."""
        return self.v_th if self.thresholds is None else self.thresholds[l]

    def psi(self, l: int) -> Tensor:
        """ψ(u_l[t] − V_th) with layer l's threshold at this step (no dropout mask)."""
        return surrogate_at(self.surrogate, self.u[l], self.threshold(l))


class SpikingNet(nn.Module):
    """A feed-forward SNN from a network string (see the module docstring).

    Example: ``SpikingNet("conv5", input_shape=(1, 28, 28), num_outputs=10, width=0.25)`` is
    the paper's 5-layer conv net with a quarter of the channels, ``32C3-AP2-64C3-AP2-128C3-FC``.
    Inputs: (B, *input_shape) or (B, F) flattened, static over T steps, or (T, B, *input_shape)
    / (T, B, F) per step (F = the product of ``input_shape``).

    ``spec``: a network string or name (parsed by :func:`parse_net` with ``width``), or
    tokens as :func:`parse_net` returns them (taken as they are; ``width`` is not applied).
    ``neuron``: the neuron model of every hidden layer (:mod:`opzo.neurons`; default LIF;
    ``lif`` is its old name, which warns once). ``hidden``: the hidden layers
    (:class:`~opzo.layers.DenseLayer` or :class:`~opzo.layers.ConvLayer`, each with its input
    pooling); ``readout``: a
    :class:`~opzo.layers.DenseLayer` (with its pooling and flattening).
    """

    def __init__(
        self,
        spec: str | Sequence[LayerToken],
        input_shape: int | Sequence[int],
        num_outputs: int,
        *,
        width: float = 1.0,
        lif: Neuron | None = None,
        surrogate: Surrogate | None = None,
        dropout: float = 0.0,
        kernels: str = "native",
        neuron: Neuron | None = None,
    ) -> None:
        super().__init__()
        if lif is not None:
            if neuron is not None:
                raise ValueError("give the neuron model once: neuron= (lif= is its older name)")
            warn_renamed("SpikingNet(lif=...)", "SpikingNet(neuron=...)")
            neuron, lif = lif, None
        tokens = parse_net(spec, width) if isinstance(spec, str) else list(spec)
        shape = (int(input_shape),) if isinstance(input_shape, int) else tuple(
            int(d) for d in input_shape)
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"input_shape must be positive sizes, e.g. (1, 28, 28) or (784,); "
                             f"got {input_shape}")
        if int(num_outputs) < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout rate must lie in [0, 1), got {dropout}")
        if kernels not in KERNELS:
            raise ValueError(f"unknown kernels {kernels!r}; choose one of {KERNELS}")
        self.kernels = kernels
        #: the deployed chip's noise on the synaptic currents (opzo.hardware), or None
        self.hardware: HardwareNoise | None = None
        self.input_shape = shape
        self.spec = net_string(tokens)
        #: the neuron model of every hidden layer (:mod:`opzo.neurons`)
        self.neuron: Neuron = neuron or LIF()
        self.surrogate = surrogate or SigmoidSurrogate()
        self.dropout = float(dropout)
        hidden: list[nn.Module] = []
        skips: list[int | None] = []
        pool: tuple[int, int] | Pool2d | None = None
        current = shape
        readout: DenseLayer | None = None
        for tok in tokens:
            if tok.kind in ("pool", "maxpool", "aap", "gap"):
                if len(current) != 3:
                    raise ValueError(f"{self.spec}: pooling ({tok}) needs a feature map, the "
                                     f"input there has shape {current}")
                if tok.kind == "pool" and tok.stride in (0, tok.kernel) and tok.pad <= 0:
                    pool = (tok.kernel, tok.kernel)  # non-overlapping (the fast sliced form)
                elif tok.kind == "gap":
                    pool = (current[1], current[2])
                else:
                    pool = Pool2d({"pool": "avg", "maxpool": "max", "aap": "adaptive"}[tok.kind],
                                  tok.kernel, tok.stride or None, max(tok.pad, 0))
                continue
            try:
                if tok.kind == "conv":
                    if len(current) != 3:
                        raise ValueError(
                            f"a convolution ({tok}) needs an image-shaped input (C, H, W); "
                            f"this network's input has shape {current}: pass input_shape "
                            "(C, H, W)")
                    layer: DenseLayer | ConvLayer = ConvLayer(
                        current, tok.size, tok.kernel, pool=pool, stride=tok.stride or 1,
                        padding=None if tok.pad < 0 else tok.pad)
                elif tok.kind == "dense":
                    layer = DenseLayer(current, tok.size, pool=pool)
                else:
                    readout = DenseLayer(current, int(num_outputs), pool=pool)
                    break
            except ValueError as exc:
                raise ValueError(f"{self.spec} on input {shape}: {exc}") from None
            if tok.skip:
                j = len(hidden) - tok.skip
                if hidden[j].out_shape != layer.out_shape:
                    raise ValueError(
                        f"{self.spec}: the shortcut of {tok} (hidden layer {len(hidden) + 1}) "
                        f"comes from hidden layer {j + 1}, whose output has shape "
                        f"{hidden[j].out_shape}, but this layer's has {layer.out_shape}: a "
                        "shortcut needs equal shapes (no pooling or channel change between)")
            skips.append(len(hidden) - tok.skip if tok.skip else None)
            hidden.append(layer)
            current = layer.out_shape
            pool = None
        assert readout is not None
        self.hidden = nn.ModuleList(hidden)
        self.readout = readout
        #: per hidden layer, the hidden layer its residual shortcut comes from (or None)
        self.skips = skips
        #: per hidden layer, an earlier layer whose output joins this layer's output (SEW
        #: ResNet's ADD, :mod:`opzo.nets`): x_l = s_l ⊙ m_l + P x_j for (j, P), P a pooling
        #: (:class:`~opzo.layers_extra.Pool2d`) or None; None: no ADD
        self.adds: list[tuple[int, Pool2d | None] | None] = [None] * len(hidden)

    def added(self, l: int, outs: Sequence[Tensor] | dict[int, Tensor]) -> Tensor:
        """P x_j, what joins hidden layer l's output by an ADD (``self.adds[l]`` = (j, P))."""
        add = self.adds[l]
        assert add is not None
        j, pool = add
        v = outs[j]
        if pool is None:
            return v
        return pool(v.reshape(v.shape[0], *self.hidden[j].out_shape)).flatten(1)

    def added_grad(self, l: int, g: Tensor) -> tuple[int, Tensor]:
        """(j, Pᵀ g): an error g at hidden layer l's output taken to x_j along its ADD (for
        a max pooling, at the step of the last forward call)."""
        add = self.adds[l]
        assert add is not None
        j, pool = add
        if pool is None:
            return j, g
        g4 = g.reshape(g.shape[0], *self.hidden[l].out_shape)
        return j, pool.transpose(g4, self.hidden[j].out_shape[1:]).flatten(1)

    @property
    def hidden_sizes(self) -> list[int]:
        """n_l = C·H·W (or the width) of every hidden layer."""
        return [int(layer.out_features) for layer in self.hidden]

    @property
    def num_inputs(self) -> int:
        return math.prod(self.input_shape)

    @property
    def num_outputs(self) -> int:
        return int(self.readout.out_features)

    @property
    def sizes(self) -> list[int]:
        """[F, n_1, …, n_{N−1}, m]: input features, neurons per hidden layer, outputs."""
        return [self.num_inputs, *self.hidden_sizes, self.num_outputs]

    def describe(self) -> str:
        """E.g. ``32C3-AP2-64C3-FC on (1, 28, 28): 25088-12544-10`` (neurons per layer)."""
        sizes = "-".join(str(n) for n in self.sizes[1:])
        return f"{self.spec} on {self.input_shape}: {sizes}"

    def initial_state(self, batch: int, like: Tensor) -> NetState:
        """Every hidden layer at rest: zero potentials, no spikes (and the neuron model's
        other state variables at zero)."""
        layers = [self.neuron.initial_state(batch, n, like) for n in self.hidden_sizes]
        return NetState(**{k: [st[k] for st in layers] for k in self.neuron.state_vars})

    def dropout_masks(self, batch: int, like: Tensor, shard: Shard | None = None
                      ) -> list[Tensor] | None:
        """One mask per hidden layer, drawn once per sample for all T steps (None if p = 0).

        With ``shard`` (data-parallel training) the masks are drawn for the whole global
        batch and these are the shard's rows (contiguous: a row block of a row-major draw).
        """
        if not self.training or self.dropout == 0.0:
            return None
        keep = 1.0 - self.dropout
        rows = batch if shard is None else shard.total
        if shard is not None and shard.size != batch:
            raise ValueError(f"shard {shard} does not hold this batch's {batch} rows")
        masks = []
        fused = self.uses_native_kernels(like)
        for n in self.hidden_sizes:
            r = like.new_empty(rows, n)
            if fused:
                native.philox_keep_mask_(r, keep, 1.0 / keep)
            else:
                r.uniform_()
                torch.lt(r, keep, out=r).mul_(1.0 / keep)
            masks.append(r if shard is None else shard.rows(r))
        return masks

    def uses_native_kernels(self, like: Tensor) -> bool:
        """Whether a step on tensors like ``like`` runs on the native kernels: asked for, a
        neuron model they compute exactly (its
        :meth:`~opzo.neurons.Neuron.uses_native_kernel`: LIF, not a subclass with other
        dynamics), float32 on the CPU, no autograd graph to build, and the library loaded
        (else a warning, once)."""
        return (self.kernels == "native" and self.neuron.uses_native_kernel()
                and like.dtype == torch.float32
                and like.device.type == "cpu"
                and not (torch.is_grad_enabled() and any(p.requires_grad
                                                         for p in self.parameters()))
                and native.ready())

    def fuses_local_derivative(self, like: Tensor) -> bool:
        """Whether a training step on tensors like ``like`` gets m ⊙ ψ(u) from the fused
        pass: native kernels in use and a surrogate they know."""
        return self.uses_native_kernels(like) and self._native_surrogate() is not None

    def _native_surrogate(self) -> tuple[int, float, float] | None:
        """(code, parameter, gain) of the surrogate for the fused kernel
        (:data:`opzo.native.SURROGATE_CODES`), None if it has no native form (then ψ is
        computed by torch when a rule asks for it)."""
        form = self.surrogate.native_form()
        if form is None:
            return None
        name, param, gain = form
        return native.SURROGATE_CODES[name], param, gain

    def _input_error(self, x: Tensor) -> ValueError:
        f = self.num_inputs
        if len(self.input_shape) == 1:
            return ValueError(f"input must be (B, {f}) static or (T, B, {f}) per step; got "
                              f"shape {tuple(x.shape)}")
        s = ", ".join(str(d) for d in self.input_shape)
        return ValueError(f"input must be (B, {s}) or (B, {f}) static, or (T, B, {s}) or "
                          f"(T, B, {f}) per step; got shape {tuple(x.shape)}")

    def prepare_input(self, x: Tensor, T: int | None) -> tuple[Tensor, int]:
        """Validate an input and return it flattened, (B, F) static or (T, B, F), and T.

        Accepted: (B, *input_shape) or (B, F) static over T steps, (T, B, *input_shape) or
        (T, B, F) one input per step.
        """
        if not isinstance(x, Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        f, dims = self.num_inputs, len(self.input_shape)
        if (dims > 1 and x.dim() in (dims + 1, dims + 2)
                and tuple(x.shape[-dims:]) == self.input_shape):
            x = x.reshape(*x.shape[:-dims], f)
        elif dims > 1 and x.dim() not in (2, 3):
            raise self._input_error(x)
        if x.dim() == 2:
            if x.shape[1] != f:
                raise ValueError(f"input has {x.shape[1]} features, the network expects {f}")
            if T is None or T < 1:
                raise ValueError("a static input of shape (B, F) needs the number of steps T >= 1")
            if x.shape[0] == 0:
                raise ValueError("x is an empty batch (0 samples): give at least one sample")
            self._check_input_dtype(x)
            return x, int(T)
        if x.dim() == 3:
            if x.shape[2] != f:
                raise ValueError(f"input has {x.shape[2]} features, the network expects {f}")
            if T is not None and T != x.shape[0]:
                raise ValueError(f"T={T} disagrees with the input's {x.shape[0]} time steps")
            if x.shape[0] == 0 or x.shape[1] == 0:
                raise ValueError(f"x of shape {tuple(x.shape)} (T, B, F) is empty: give at "
                                 "least one time step and one sample")
            self._check_input_dtype(x)
            return x, int(x.shape[0])
        raise self._input_error(x)

    def _check_input_dtype(self, x: Tensor) -> None:
        """x must be of the network's floating dtype, on its device (an integer, float64 or
        float16 input would fail deep inside a product, or be silently cast)."""
        weight = next(self.parameters())
        if x.dtype != weight.dtype:
            raise ValueError(f"x has dtype {x.dtype}; the network computes in {weight.dtype}: "
                             f"pass x.to({weight.dtype}) (or convert the network, e.g. "
                             "net.double())")
        if x.device != weight.device:
            raise ValueError(f"x is on {x.device}, the network on {weight.device}: move one "
                             "of them (x.to(device) or net.to(device))")

    def step(
        self,
        state: NetState,
        x_t: Tensor,
        *,
        first_current: Tensor | None = None,
        first_input: Tensor | None = None,
        noise: list[Tensor] | None = None,
        noise_scale: float = 1.0,
        noise_position: str = "after",
        masks: list[Tensor] | None = None,
        gains: list[Tensor] | None = None,
        local_derivative: bool = False,
    ) -> tuple[Tensor, StepRecord]:
        """Advance every layer by one time step; return the readout o[t] and the record.

        ``x_t`` is flattened, (B, F). ``first_current`` may carry the first layer's current
        op_1(P_1 x) + b_1 precomputed for a static input (it is the same at every step), and
        ``first_input`` its op input P_1 x. ``noise`` holds z_l per hidden layer;
        α = ``noise_scale``. ``local_derivative``: a learning rule will ask for
        m_l ⊙ ψ(u_l[t]); the fused native step then computes it in the same pass.
        """
        after = noise_position == "after"
        fused = self.uses_native_kernels(x_t)
        kernel = self._native_kernel(local_derivative) if fused else None
        threads = native.default_threads()
        hardware = self._chip_noise(noise, after)
        inp = x_t
        us: list[Tensor] = []
        spikes: list[Tensor] = []
        outs: list[Tensor] = []
        ins: list[Tensor] = []
        dpsis: list[Tensor | None] = []
        thresholds: list[Threshold] | None = None
        keep = getattr(self, "kept_currents", ())
        adds = getattr(self, "adds", None)
        currents: dict[int, Tensor] = {}
        for l, layer in enumerate(self.hidden):
            if l == 0 and first_current is not None:
                current, scratch = first_current, False
                op_in = layer.op_input(inp) if first_input is None else first_input
            else:
                op_in = layer.op_input(inp, *_sources(layer, outs, currents))
                current, scratch = layer.op(op_in), True
            current, scratch = self._add_to_current(l, current, scratch, outs, hardware,
                                                    currents if l in keep else None)
            mask = None if masks is None else masks[l]
            z = None if noise is None else noise[l]
            if fused and _fusable(current, state.u[l], state.s[l], mask, z):
                flat = current.reshape(current.shape[0], -1)
                u, s, out, d = native.lif_step_unchecked(
                    kernel, flat, state.u[l], state.s[l], noise=z, alpha=noise_scale,
                    noise_before=not after, mask=mask, u_out=flat if scratch else None,
                    threads=threads)
                state.u[l] = u
                state.s[l] = s
            else:
                d = None
                u, s, out, theta = self._neuron_step(state, l, current, scratch, z,
                                                     noise_scale, after, mask)
                if isinstance(theta, Tensor):  # a moving threshold (ALIF): record it
                    if thresholds is None:
                        thresholds = [self.neuron.v_th] * len(self.hidden)
                    thresholds[l] = theta
            if adds is not None and adds[l] is not None:  # SEW's ADD: x_l = s_l + P x_j
                out = out + self.added(l, outs)
            dpsis.append(d)
            us.append(u)
            spikes.append(s)
            outs.append(out)
            ins.append(op_in)
            inp = out
        r_in = self.readout.op_input(inp, *_sources(self.readout, outs, currents))
        o = self.readout.op(r_in)
        return o, StepRecord(us, spikes, outs, masks, self.surrogate, self.neuron.v_th, gains,
                             inputs=ins, readout_in=r_in, dpsi=dpsis, thresholds=thresholds)

    def _native_kernel(self, local_derivative: bool) -> object:
        """The fused kernel's parameters for this network's LIF neuron (and, when a rule asks
        for m ⊙ ψ(u), the surrogate's native form; :func:`opzo.native.lif_kernel_params`)."""
        neuron = self.neuron
        surr = self._native_surrogate() if local_derivative else None
        return native.lif_kernel_params(neuron.lam, neuron.v_th, neuron.reset == "zero",
                                        *(surr or ()))

    def _chip_noise(self, noise: list[Tensor] | None, after: bool) -> HardwareNoise | None:
        """The chip's noise to add to the currents at this step: none where the rule's
        Gaussian perturbation before the neuron already is the chip's noise."""
        hardware = self.hardware
        if (hardware is not None and hardware.kind == "gaussian" and noise is not None
                and not after):
            return None
        return hardware

    def _add_to_current(self, l: int, current: Tensor, scratch: bool, outs: list[Tensor],
                        hardware: HardwareNoise | None,
                        kept: dict[int, Tensor] | None = None) -> tuple[Tensor, bool]:
        """Hidden layer l's current with its residual shortcut x_j and the chip's noise
        (:mod:`opzo.hardware`) added; ``scratch``: whether its storage may be overwritten.
        ``kept``: where to keep a copy of the current before the chip's noise, for a later
        layer that reads it (:mod:`opzo.layers_extra`)."""
        j = self.skips[l]
        if j is not None:  # residual shortcut: x_j joins the current
            current = current.add_(outs[j]) if scratch else current + outs[j]
            scratch = True
        if kept is not None:
            kept[l] = current.clone()
        if hardware is not None:
            current = hardware.perturb_(current, l, scratch)
            scratch = True
        return current, scratch

    def _neuron_step(self, state: NetState, l: int, current: Tensor, scratch: bool,
                     z: Tensor | None, noise_scale: float, after: bool, mask: Tensor | None
                     ) -> tuple[Tensor, Tensor, Tensor, Threshold]:
        """Hidden layer l's neuron step on torch ops (the neuron's in-place ``step_``), with
        the perturbation α z before or after it and the dropout mask on what it delivers.
        Updates ``state``; returns u, s, the delivered x and the threshold s was compared
        with."""
        if z is not None and not after:
            current = torch.add(current, z, alpha=noise_scale)
            scratch = True
        prev = state.layer(l)
        theta = self.neuron.threshold(prev)
        new = self.neuron.step_(prev, current, scratch)
        state.set_layer(l, new)
        s = new["s"]
        out = s
        if z is not None and after:
            out = torch.add(s, z, alpha=noise_scale)
        if mask is not None:
            out = out * mask if out is s else out.mul_(mask)
        return new["u"], s, out, theta

    def run(self, x: Tensor, T: int | None = None) -> Iterator[tuple[Tensor, StepRecord]]:
        """Run the network forward from rest over T steps without noise, yielding o[t] and the
        step record at every step (dropout masks are drawn in training mode only). The input
        is static or per-step (see :meth:`prepare_input`); a static input's first-layer
        current is computed once."""
        x, T = self.prepare_input(x, T)
        if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():  # sum: one pass
            raise ValueError("input contains NaN or infinite values")
        static = x.dim() == 2
        batch = x.shape[0] if static else x.shape[1]
        state = self.initial_state(batch, x)
        masks = self.dropout_masks(batch, x)
        first = first_in = None
        if static:
            first_in = self.hidden[0].op_input(x)
            first = self.hidden[0].op(first_in)
        for t in range(T):
            yield self.step(state, x if static else x[t], first_current=first,
                            first_input=first_in, masks=masks)

    def forward(self, x: Tensor, T: int | None = None) -> Tensor:
        """Inference: Σ_t o[t] over T steps for a static or per-step input (see
        :meth:`prepare_input`)."""
        total = None
        for o, _ in self.run(x, T):
            total = o if total is None else total + o
        assert total is not None
        return total


def _sources(layer: nn.Module, outs: Sequence[Tensor], currents: dict[int, Tensor]
             ) -> list[Tensor]:
    """What a composite layer (:class:`~opzo.layers_extra.CompositeLayer`) reads besides its
    input: earlier layers' outputs x_j (``("out", j)``) or currents I_j (``("cur", j)``)."""
    return [outs[j] if kind == "out" else currents[j]
            for kind, j in getattr(layer, "sources", ())]


def _fusable(current: Tensor, u: Tensor, s: Tensor, mask: Tensor | None,
             z: Tensor | None) -> bool:
    """Whether the fused kernel can take these tensors as they are: float32 (the caller has
    checked the device), (B, n) like ``u``, contiguous (z: contiguous rows). Anything else
    (e.g. masks or noise handed in by a caller in another dtype) takes the torch ops."""
    shape = u.shape
    for t in (current, u, s, mask):
        if t is not None and (t.dtype != torch.float32 or not t.is_contiguous()):
            return False
    return (current.numel() == u.numel() and s.shape == shape
            and (mask is None or mask.shape == shape)
            and (z is None or (z.dtype == torch.float32 and z.shape == shape
                               and z.stride(1) == 1)))


class SpikingMLP(SpikingNet):
    """Fully connected SNN ``sizes[0] → sizes[1] → … → sizes[-1]`` (last layer a readout).

    Example: ``SpikingMLP([784, 800, 800, 10], dropout=0.2)`` is the OPZO paper's MNIST net;
    it is ``SpikingNet("800-800-FC", input_shape=784, num_outputs=10, dropout=0.2)``.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        lif: Neuron | None = None,
        surrogate: Surrogate | None = None,
        dropout: float = 0.0,
        kernels: str = "native",
        neuron: Neuron | None = None,
    ) -> None:
        sizes = [int(n) for n in sizes]
        if len(sizes) < 3 or any(n <= 0 for n in sizes):
            raise ValueError(
                "sizes must list the input, at least one hidden layer and the output, all "
                f"positive, e.g. [784, 800, 800, 10]; got {sizes}"
            )
        if lif is not None:
            if neuron is not None:
                raise ValueError("give the neuron model once: neuron= (lif= is its older name)")
            warn_renamed("SpikingMLP(lif=...)", "SpikingMLP(neuron=...)")
            neuron = lif
        tokens = [LayerToken("dense", n) for n in sizes[1:-1]] + [LayerToken("readout")]
        super().__init__(tokens, (sizes[0],), sizes[-1], surrogate=surrogate,
                         dropout=dropout, kernels=kernels, neuron=neuron)
