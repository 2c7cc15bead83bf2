"""Network strings as in the OPZO paper (appendix C.3.2): ``128C3-AP2-256C3-AP2-512C3-FC``.

:func:`parse_net` turns a string (or a name of :data:`NETS`) into :class:`LayerToken` s,
:func:`net_string` writes them back. The grammar (``<n>C<k>``, ``AP<k>``, ``GAP``, ``<n>``,
``FC``, residual ``+k``) and the named networks are described in :mod:`opzo.network`, which
builds the layers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


#: the OPZO paper's convolutional networks (appendix C.3.2) by name
def _resnet(blocks: Sequence[int], channels: Sequence[int] = (64, 128, 256, 512)) -> str:
    """A ResNet of basic blocks in network-string form (see the module docstring)."""
    parts = [f"{channels[0]}C3"]
    for stage, (n, c) in enumerate(zip(blocks, channels)):
        for b in range(n):
            first = b == 0 and stage > 0  # the channels change: no shortcut around the block
            parts.append(("AP2-" if first else "") + f"{c}C3-{c}C3" + ("+" if first else "+2"))
    return "-".join([*parts, "GAP", "FC"])


NETS: dict[str, str] = {
    "conv5": "128C3-AP2-256C3-AP2-512C3-FC",
    # what the OPZO paper's Table 7 counts (issue 24): four spiking convolutions, 128C3 at
    # 32x32, 256C3 at 16x16, 512C3 at 8x8 and 512C3 at 4x4 on a 32x32 input, not the three
    # of conv5, the string the paper gives (opzo.energy, benchmarks/table7_synops.py)
    "conv-table7": "128C3-AP2-256C3-AP2-512C3-AP2-512C3-FC",
    "conv9": "64C3-128C3-AP2-256C3-256C3-AP2-512C3-512C3-AP2-512C3-512C3-FC",
    "conv9r": "64C3-128C3-AP2-256C3-256C3+-AP2-512C3-512C3+-AP2-512C3-512C3+-FC",
    "resnet18": _resnet((2, 2, 2, 2)),
    "resnet34": _resnet((3, 4, 6, 3)),
    # TET's VGGSNN (Deng et al. 2022) for 48x48 event frames (issue 26)
    "vggsnn": "64C3-128C3-AP2-256C3-256C3-AP2-512C3-512C3-AP2-512C3-512C3-AP2-FC",
}

_TOKEN_HELP = ("use <n>C<k> (convolution: n channels, k x k kernel; <n>C<k>s<s>p<p> with "
               "stride s and padding p, e.g. 64C7s2 or 128C1s2p0), AP<k> (k x k average "
               "pooling; AP<k>s<s>p<p> strided and padded, e.g. AP3s2p1), MP<k>[s<s>][p<p>] "
               "(max pooling), AAP<n> (adaptive average pooling to n x n; AAP = AAP1), "
               "GAP (global average pooling), <n> (fully connected hidden layer) "
               "and FC (the readout, last), joined by '-', e.g. 128C3-AP2-256C3-AP2-512C3-FC; "
               "a hidden token ending in + or +k adds the spikes of k layers back to its current "
               "(residual); "
               f"or a name: {', '.join(NETS)}")


@dataclass(frozen=True)
class LayerToken:
    """One token of a network string: ``kind`` is ``conv`` (``size`` channels, ``kernel``,
    ``stride``, ``pad``), ``pool`` (average, ``kernel``, ``stride``, ``pad``), ``maxpool``
    (``kernel``, ``stride``, ``pad``), ``aap`` (adaptive average pooling to ``kernel`` x
    ``kernel``), ``gap``, ``dense`` (``size`` neurons) or ``readout``; ``skip``: for a residual
    hidden layer, how many layers back its shortcut comes from (0: none). ``stride`` 0 and
    ``pad`` −1 mean the defaults (a conv: stride 1, padding k // 2; a pooling: stride k,
    padding 0)."""

    kind: str
    size: int = 0
    kernel: int = 0
    skip: int = 0
    stride: int = 0
    pad: int = -1

    def _suffix(self) -> str:
        return ((f"s{self.stride}" if self.stride else "")
                + (f"p{self.pad}" if self.pad >= 0 else ""))

    def __str__(self) -> str:
        text = {"conv": f"{self.size}C{self.kernel}", "pool": f"AP{self.kernel}",
                "maxpool": f"MP{self.kernel}", "aap": f"AAP{self.kernel}",
                "gap": "GAP", "dense": f"{self.size}", "readout": "FC"}[self.kind]
        if self.kind in ("conv", "pool", "maxpool"):
            text += self._suffix()
        if self.skip:
            text += "+" if self.skip == 1 else f"+{self.skip}"
        return text


def _skip(text: str | None, raw: str) -> int:
    """The shortcut span of a '+' / '+k' suffix (0 without one)."""
    if text is None:
        return 0
    span = int(text[1:]) if len(text) > 1 else 1
    if span < 1:
        raise ValueError(f"layer token {raw!r}: a shortcut comes from >= 1 layer back")
    return span


def _stride_pad(stride: str | None, pad: str | None, raw: str) -> tuple[int, int]:
    """A token's ``s<s>`` / ``p<p>`` suffixes (0 / −1: the default)."""
    s = int(stride) if stride is not None else 0
    if stride is not None and s < 1:
        raise ValueError(f"layer token {raw!r}: the stride must be >= 1")
    return s, (int(pad) if pad is not None else -1)


def parse_net(spec: str, width: float = 1.0) -> list[LayerToken]:
    """Parse a network string (or the name ``conv5`` / ``conv9``) into tokens.

    ``width`` multiplies the channels of every ``<n>C<k>`` and the neurons of every ``<n>``
    hidden layer (rounded, at least 1). Raises ValueError naming what is allowed.
    """
    if not width > 0:
        raise ValueError(f"width (channel multiplier) must be > 0, got {width}")
    text = str(spec).strip()
    text = NETS.get(text.lower(), text)
    if not text:
        raise ValueError(f"empty network string; {_TOKEN_HELP}")
    tokens: list[LayerToken] = []
    for raw in text.split("-"):
        tok = raw.strip().upper()
        if not tok:
            raise ValueError(f"empty layer token in {spec!r} (two '-' in a row?); {_TOKEN_HELP}")
        if m := re.fullmatch(r"(\d+)C(\d+)(?:S(\d+))?(?:P(\d+))?(\+\d*)?", tok):
            n, k = int(m[1]), int(m[2])
            stride, pad = _stride_pad(m[3], m[4], raw)
            if n < 1 or k < 1:
                raise ValueError(f"layer token {raw!r}: channels and kernel must be >= 1")
            tokens.append(LayerToken("conv", max(1, round(n * width)), k, _skip(m[5], raw),
                                     stride, pad))
        elif m := re.fullmatch(r"([AM])P(\d+)(?:S(\d+))?(?:P(\d+))?", tok):
            stride, pad = _stride_pad(m[3], m[4], raw)
            k = int(m[2])
            if k < 1:
                raise ValueError(f"layer token {raw!r}: the pooling size must be >= 1")
            if pad >= 0 and 2 * pad > k:
                raise ValueError(f"layer token {raw!r}: the padding must be at most half the "
                                 "pooling size")
            tokens.append(LayerToken("pool" if m[1] == "A" else "maxpool", kernel=k,
                                     stride=stride, pad=pad))
        elif m := re.fullmatch(r"AAP(\d*)", tok):
            n = int(m[1]) if m[1] else 1
            if n < 1:
                raise ValueError(f"layer token {raw!r}: the output size must be >= 1")
            tokens.append(LayerToken("aap", kernel=n))
        elif tok == "GAP":
            tokens.append(LayerToken("gap"))
        elif m := re.fullmatch(r"(\d+)(\+\d*)?", tok):
            if int(m[1]) < 1:
                raise ValueError(f"layer token {raw!r}: a layer needs >= 1 neuron")
            tokens.append(LayerToken("dense", max(1, round(int(m[1]) * width)),
                                     skip=_skip(m[2], raw)))
        elif tok == "FC":
            tokens.append(LayerToken("readout"))
        else:
            raise ValueError(f"unknown layer token {raw.strip()!r} in {spec!r}; {_TOKEN_HELP}")
    if tokens[-1].kind != "readout" or sum(t.kind == "readout" for t in tokens) != 1:
        raise ValueError(f"{spec!r}: the readout 'FC' must appear once, as the last token; "
                         f"{_TOKEN_HELP}")
    if not any(t.kind in ("conv", "dense") for t in tokens):
        raise ValueError(f"{spec!r} has no hidden layer: put at least one <n>C<k> or <n> "
                         "before FC")
    n_hidden = 0
    for tok in tokens:
        if tok.skip and tok.skip > n_hidden:
            raise ValueError(f"{spec!r}: the shortcut of {tok} comes from {tok.skip} layers back, "
                             f"but only {n_hidden} hidden layers precede it (shortcuts start "
                             "at a hidden layer, not at the network input)")
        n_hidden += tok.kind in ("conv", "dense")
    seen_dense = False
    pools = ("pool", "maxpool", "aap", "gap")
    for prev, tok in zip([None, *tokens], tokens):
        if tok.kind in pools and prev is not None and prev.kind in pools:
            raise ValueError(f"{spec!r}: two pooling tokens in a row ({prev}-{tok}); pooling "
                             "applies to the input of the next layer, use one")
        if tok.kind in pools and seen_dense:
            raise ValueError(f"{spec!r}: pooling ({tok}) after a fully connected layer; "
                             "pooling applies to feature maps")
        if tok.kind == "conv" and seen_dense:
            raise ValueError(f"{spec!r}: a convolution ({tok}) cannot follow a fully connected "
                             "layer")
        seen_dense = seen_dense or tok.kind == "dense"
    return tokens


def net_string(tokens: Sequence[LayerToken]) -> str:
    """The canonical network string of parsed tokens (inverse of :func:`parse_net`)."""
    return "-".join(str(t) for t in tokens)
