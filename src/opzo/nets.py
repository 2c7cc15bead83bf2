"""Named large networks (issue 26): ``vggsnn``, ``resnet19``, ``sew-resnet34``, ``nfresnet34``.

Each is a :class:`~opzo.network.SpikingNet` (the same one-step forward, StepRecord, rules,
traces, BPTT), built from :mod:`opzo.layers` and :mod:`opzo.layers_extra`; ``width``
multiplies every channel count (rounded, at least 1) for CPU-sized tests.

* ``vggsnn`` (TET, Deng et al. 2022, for 48×48 event frames):
  ``64C3-128C3-AP2-256C3-256C3-AP2-512C3-512C3-AP2-512C3-512C3-AP2-FC`` (a network string,
  :data:`opzo.netstring.NETS`).
* ``resnet19`` (tdBN, Zheng et al. 2021, Table 1): a 3×3 stem of 128 channels, basic blocks of
  two 3×3 convolutions, [3, 3, 2] blocks at 128, 256, 512 channels, the first block of the
  second and third stages with stride 2 and a 1×1 stride-2 projection shortcut; the shortcut
  joins the second convolution's current before its neurons (as in a spiking ResNet:
  LIF(conv2(...) + shortcut)); then global average pooling, a hidden FC layer of 256 and the
  readout. The convolutions are scaled-weight-standardized; with ``norm`` (``bn``, ``tdbn``,
  ``bn-all-t``; :mod:`opzo.norm`) they are plain convolutions each followed by that
  normaliser (tdBN's ResNet-19: tdBN after every convolution, the projection's included,
  α = 1/√2 on the two branches added before a block's second neurons).
* ``nfresnet34`` (the OTTT paper's normaliser-free ResNet-34, Xiao et al. 2022, its released
  ImageNet model ``online_spiking_nfresnet34``): a 7×7 stride-2 scaled-WS stem, 3×3 stride-2
  average pooling (padding 1, zeros counted), then [3, 4, 6, 3] pre-activation basic blocks at
  64, 128, 256, 512 channels. Block k with input stream x_k:

      s1 = LIF(x_k / β_k);  s2 = LIF(conv1(2.74 s1));  x_{k+1} = α g_k conv2(2.74 s2) + id

  with id = x_k, or id = ds(2.74 s1) (a 1×1 stride-2 scaled-WS conv) in the first block of
  stages 2–4 (whose conv1 has stride 2); g_k the block's ``skipinit_gain`` (a learnable scalar,
  0 at initialisation), α = 0.2 and β_k = √Var_k, the running expected variance: Var = 1
  at the first block, Var += α² after a block, Var = 1 + α² after a downsampling block.
  Readout: global average pooling of the last stream and a linear layer.

  In opzo's terms the stream is not a layer output: it is carried by the currents. The
  neurons s1 of block k+1 get I = x_{k+1}/β_{k+1} = (β_k/β_{k+1}) I_{s1,k} + (α g_k /
  β_{k+1}) conv2(2.74 s2,k) — a :class:`~opzo.layers_extra.CompositeLayer` reading the current
  of the previous block's s1 layer (or, after downsampling, ds(2.74 s1,k)/β_{k+1}); the
  readout is fc(GAP(α g conv2(2.74 s2) + β I_{s1})) over the last block. So the hidden layers
  are, in order, [s1, s2] per block (32 spiking layers), and every rule, trace and BPTT runs
  on it unchanged (spatial BP passes δ along the current sources; a direct-feedback rule
  gives every layer its own feedback). Noise "before the neuron" and the chip's noise are
  added to a layer's current after the stream has been read from it (the stream is
  noiseless). The OTTT checkpoint's names map onto its parameters
  (:attr:`NFResNet.ottt_names`, :mod:`opzo.ottt`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from .layers import ConvLayer, DenseLayer
from .layers_extra import CompositeLayer, Pool2d, Term
from .netstring import LayerToken
from .network import SpikingNet

__all__ = ["NAMED_NETS", "NFResNet", "ResNet19", "SEWResNet", "build_named", "is_named"]

#: NF-ResNet's constants (OTTT's code): the scale after each spiking nonlinearity and the
#: residual branch's α
NF_GAMMA = 2.74
NF_ALPHA = 0.2


def _ch(c: int, width: float) -> int:
    return max(1, round(c * width))


class _BuiltNet(SpikingNet):
    """A SpikingNet whose hidden layers are given, not parsed from a string."""

    def _install(self, name: str, hidden: Sequence[nn.Module], readout: nn.Module,
                 skips: Sequence[int | None] | None = None,
                 adds: Sequence[tuple[int, Pool2d | None] | None] | None = None) -> None:
        self.hidden = nn.ModuleList(hidden)
        self.readout = readout
        self.skips = list(skips) if skips is not None else [None] * len(hidden)
        self.adds = list(adds) if adds is not None else [None] * len(hidden)
        self.spec = name
        #: hidden layers whose current a later layer reads (kept by SpikingNet.step)
        self.kept_currents = {j for layer in [*hidden, readout]
                              for kind, j in getattr(layer, "sources", ()) if kind == "cur"}

    def _dummy(self, shape: tuple[int, ...]) -> list[LayerToken]:
        return [LayerToken("dense", 1), LayerToken("readout")]


class NFResNet(_BuiltNet):
    """The OTTT paper's NF-ResNet (see the module docstring); ``blocks`` per stage ([3, 4, 6,
    3]: NF-ResNet-34), ``width`` scales the channels (64, 128, 256, 512)."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, width: float = 1.0,
                 blocks: Sequence[int] = (3, 4, 6, 3), alpha: float = NF_ALPHA, **kw) -> None:
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 3:
            raise ValueError(f"nfresnet34 needs image-shaped input (C, H, W), got {shape}")
        super().__init__(self._dummy(shape), shape, num_outputs, **kw)
        chans = [_ch(c, width) for c in (64, 128, 256, 512)]
        #: OTTT checkpoint name -> this network's parameter name
        self.ottt_names: dict[str, str] = {}
        hidden: list[nn.Module] = []
        stem = ConvLayer(shape, chans[0], 7, stride=2, padding=3)
        post = Pool2d("avg", 3, 2, 1)
        var = 1.0
        first = CompositeLayer([Term("in", stem, shape, scale=1.0 / math.sqrt(var), post=post)],
                               post.output_shape(stem.out_shape), f"{chans[0]}C7s2-AP3s2p1")
        hidden.append(first)
        self._map("conv1", "hidden.0.ops.0")
        s1_index, s1_shape = 0, first.out_shape
        inplanes = chans[0]
        n_blocks = sum(int(b) for b in blocks)
        k = 0
        readout: CompositeLayer | None = None
        for stage, (nb, c) in enumerate(zip(blocks, chans)):
            for b in range(int(nb)):
                stride = 2 if (stage > 0 and b == 0) else 1
                down = stride != 1 or inplanes != c
                beta = math.sqrt(var)
                conv1 = ConvLayer(s1_shape, c, 3, stride=stride, padding=1)
                s2 = CompositeLayer([Term("in", conv1, s1_shape, in_scale=NF_GAMMA)],
                                    conv1.out_shape, f"{c}C3" + (f"s{stride}" if stride > 1
                                                                 else ""))
                hidden.append(s2)
                s2_index = len(hidden) - 1
                name = f"layer{stage + 1}.{b}"
                self._map(f"{name}.conv1.op", f"hidden.{s2_index}.ops.0")
                var = 1.0 + alpha ** 2 if down else var + alpha ** 2
                last = k == n_blocks - 1
                beta_next = 1.0 if last else math.sqrt(var)  # the readout sees the stream
                conv2 = ConvLayer(conv1.out_shape, c, 3, padding=1)
                terms = [Term("in", conv2, conv1.out_shape, scale=alpha / beta_next,
                              in_scale=NF_GAMMA, gain="skipinit_gain")]
                if down:
                    ds = ConvLayer(s1_shape, c, 1, stride=stride, padding=0)
                    terms.append(Term(("out", s1_index), ds, s1_shape, scale=1.0 / beta_next,
                                      in_scale=NF_GAMMA))
                else:
                    terms.append(Term(("cur", s1_index), None, s1_shape,
                                      scale=beta / beta_next))
                if last:
                    fc = DenseLayer(conv2.out_shape, int(num_outputs),
                                    pool=Pool2d("adaptive", 1))
                    readout = CompositeLayer(terms, conv2.out_shape, "AAP-FC", head=fc)
                    prefix = "readout"
                    self._map("fc", "readout.head")
                else:
                    layer = CompositeLayer(terms, conv2.out_shape,
                                           f"{c}C3+{'ds' if down else 'id'}")
                    hidden.append(layer)
                    prefix = f"hidden.{len(hidden) - 1}"
                    s1_index, s1_shape = len(hidden) - 1, layer.out_shape
                self._map(f"{name}.conv2.op", f"{prefix}.ops.0")
                self.ottt_names[f"{name}.skipinit_gain"] = f"{prefix}.skipinit_gain"
                if down:
                    self._map(f"{name}.downsample.op", f"{prefix}.ops.1")
                inplanes = c
                k += 1
        assert readout is not None
        self._install("nfresnet34" if tuple(blocks) == (3, 4, 6, 3) else "nfresnet",
                      hidden, readout)
        if width != 1.0:
            self.spec += f"(width={width:g})"

    def _map(self, ottt: str, ours: str) -> None:
        keys = ("weight", "bias") if ottt == "fc" else ("weight", "bias", "gain")
        for key in keys:
            self.ottt_names[f"{ottt}.{key}"] = f"{ours}.{key}"


class ResNet19(_BuiltNet):
    """tdBN's ResNet-19 (see the module docstring), scaled by ``width``."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, width: float = 1.0,
                 blocks: Sequence[int] = (3, 3, 2), fc: int = 256, norm: str = "none",
                 **kw) -> None:
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 3:
            raise ValueError(f"resnet19 needs image-shaped input (C, H, W), got {shape}")
        super().__init__(self._dummy(shape), shape, num_outputs, **kw)
        chans = [_ch(c, width) for c in (128, 256, 512)]
        hidden: list[nn.Module] = [ConvLayer(shape, chans[0], 3)]
        skips: list[int | None] = [None]
        for stage, (nb, c) in enumerate(zip(blocks, chans)):
            for b in range(int(nb)):
                src = len(hidden) - 1  # the block's input x_j
                in_shape = hidden[src].out_shape
                stride = 2 if (stage > 0 and b == 0) else 1
                conv1 = ConvLayer(in_shape, c, 3, stride=stride)
                hidden.append(conv1)
                skips.append(None)
                if stride == 1 and in_shape[0] == c:
                    hidden.append(ConvLayer(conv1.out_shape, c, 3))
                    skips.append(src)  # identity: x_j joins conv2's current
                else:  # projection shortcut: conv1x1 s2 (x_j) joins conv2's current
                    conv2 = ConvLayer(conv1.out_shape, c, 3)
                    proj = ConvLayer(in_shape, c, 1, stride=stride, padding=0)
                    hidden.append(CompositeLayer(
                        [Term("in", conv2, conv1.out_shape), Term(("out", src), proj, in_shape)],
                        conv2.out_shape, f"{c}C3+{c}C1s{stride}"))
                    skips.append(None)
        last = hidden[-1].out_shape
        hidden.append(DenseLayer(last, _ch(fc, width), pool=Pool2d("adaptive", 1)))
        skips.append(None)
        readout = DenseLayer((hidden[-1].out_shape[0],), int(num_outputs))
        self._install("resnet19", hidden, readout, skips)
        if width != 1.0:
            self.spec += f"(width={width:g})"
        if norm != "none":  # tdBN's ResNet-19: a normaliser after every convolution
            from .norm import apply_norm

            apply_norm(self, norm)


class SEWResNet(_BuiltNet):
    """SEW ResNet with ADD connections (Fang et al. 2021, "Deep Residual Learning in Spiking
    Neural Networks", NeurIPS, section 3.2 and Table 1 / its ImageNet SEW-ResNet-34): a 7×7
    stride-2 stem convolution (64 channels) with its neurons, 3×3 stride-2 max pooling
    (padding 1) of the stem's spikes, then basic blocks, [3, 4, 6, 3] at 64, 128, 256, 512
    channels (``width`` scales them), the first block of stages 2–4 with stride 2. A block
    with input spikes x (the previous block's output; the max-pooled stem spikes for the
    first block) is

        s1 = LIF(conv1(x));  s2 = LIF(conv2(s1));  out = s2 + sc,   sc = x, or
        sc = LIF(ds(x)) with ds a 1×1 stride-2 convolution where the shape changes

    (spike-element-wise ADD: the block's output is the sum of two spike tensors, an integer
    in {0, 1, 2}). Then global average pooling of the last block's output and a linear
    readout. The convolutions are scaled-weight-standardized, or plain and followed by a
    normaliser with ``norm`` (:mod:`opzo.norm`; SEW ResNet has BN after every convolution).

    In opzo's terms the ADD is on a layer's output, not on its current: hidden layer l =
    conv2 delivers x_l = s2 ⊙ m_l + P x_j (:attr:`~opzo.network.SpikingNet.adds`; P the max
    pooling for the first block, else none), and spatial BP sends the error at x_l both
    through s2's surrogate and unchanged (Pᵀ) to x_j. A downsampling block's layers are
    ordered ds, conv1, conv2 (conv1 reads the block input x_j as an earlier output, a
    :class:`~opzo.layers_extra.CompositeLayer`), so that every layer reads earlier ones only.
    The hidden layers are the stem, then per block [conv1, conv2] or [ds, conv1, conv2]
    (36 spiking layers for SEW-ResNet-34).
    """

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, width: float = 1.0,
                 blocks: Sequence[int] = (3, 4, 6, 3), norm: str = "none", **kw) -> None:
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 3:
            raise ValueError(f"sew-resnet34 needs image-shaped input (C, H, W), got {shape}")
        super().__init__(self._dummy(shape), shape, num_outputs, **kw)
        chans = [_ch(c, width) for c in (64, 128, 256, 512)]
        hidden: list[nn.Module] = [ConvLayer(shape, chans[0], 7, stride=2, padding=3)]
        adds: list[tuple[int, Pool2d | None] | None] = [None]
        pool: Pool2d | None = Pool2d("max", 3, 2, 1)  # the stem's max pooling
        j = 0  # the hidden layer whose output is the next block's input
        for stage, (nb, c) in enumerate(zip(blocks, chans)):
            for b in range(int(nb)):
                stride = 2 if (stage > 0 and b == 0) else 1
                in_shape = hidden[j].out_shape
                entered = pool.output_shape(in_shape) if pool is not None else in_shape
                if stride != 1 or entered[0] != c:  # ds(x) with its neurons, then conv1(x)
                    hidden.append(ConvLayer(in_shape, c, 1, pool=pool, stride=stride,
                                            padding=0))
                    adds.append(None)
                    sc: tuple[int, Pool2d | None] = (len(hidden) - 1, None)
                    conv1 = ConvLayer(in_shape, c, 3, pool=pool, stride=stride)
                    hidden.append(CompositeLayer([Term(("out", j), conv1, in_shape)],
                                                 conv1.out_shape, conv1.token))
                else:
                    conv1 = ConvLayer(in_shape, c, 3, pool=pool, stride=stride)
                    hidden.append(conv1)
                    sc = (j, None if pool is None else Pool2d("max", 3, 2, 1))
                adds.append(None)
                hidden.append(ConvLayer(conv1.out_shape, c, 3))
                adds.append(sc)
                j = len(hidden) - 1
                pool = None
        readout = DenseLayer(hidden[-1].out_shape, int(num_outputs),
                             pool=Pool2d("adaptive", 1))
        self._install("sew-resnet34" if tuple(blocks) == (3, 4, 6, 3) else "sew-resnet",
                      hidden, readout, adds=adds)
        if width != 1.0:
            self.spec += f"(width={width:g})"
        if norm != "none":
            from .norm import apply_norm

            apply_norm(self, norm)


#: the networks built here by name (the string ones live in opzo.netstring.NETS)
NAMED_NETS = {"nfresnet34": NFResNet, "resnet19": ResNet19, "sew-resnet34": SEWResNet}


def named_tokens(spec: str) -> list[LayerToken]:
    """Stand-in tokens for the config's checks: one conv token per hidden layer, then the
    readout (the nets themselves are built by :func:`build_named`)."""
    name = spec.strip().lower()
    n = {"nfresnet34": 2 * 16, "sew-resnet34": 1 + 2 * 16 + 3}.get(name, 1 + 2 * 8 + 1)
    return [LayerToken("conv", 1, 3)] * n + [LayerToken("readout")]


def is_named(spec: str | None) -> bool:
    return spec is not None and str(spec).strip().lower() in NAMED_NETS


def build_named(spec: str, input_shape: Sequence[int], num_outputs: int, **kw) -> SpikingNet:
    """The network ``spec`` (a name of :data:`NAMED_NETS`) with SpikingNet's keywords."""
    return NAMED_NETS[spec.strip().lower()](input_shape, num_outputs, **kw)
