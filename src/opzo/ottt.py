"""Loading the OTTT paper's released ImageNet checkpoints (Xiao et al. 2022,
``online_spiking_nfresnet34``) into :class:`opzo.nets.NFResNet`.

The file is a ``torch.save`` of a dict whose ``'net'`` entry is the model's state dict (the
other entries: ``'optimizer'``, ``'lr_scheduler'``, ``'epoch'``, ``'max_test_acc'``); its 126
tensor names (``conv1.weight``, ``layer1.0.conv1.op.weight``, ``layer1.0.skipinit_gain``,
``layer2.0.downsample.op.gain``, ``fc.bias``, ...) are listed with their shapes in
``ottt-nfresnet34-state-keys.json``. :attr:`opzo.nets.NFResNet.ottt_names` maps each onto a
parameter of opzo's network; ``module.`` prefixes (a DataParallel save) are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["load_ottt_checkpoint", "load_ottt_state"]


def load_ottt_state(net, state: Mapping[str, Tensor], where: str = "the checkpoint") -> str:
    """Copy an OTTT NF-ResNet state dict into ``net`` (an :class:`~opzo.nets.NFResNet`).

    Raises ValueError (one line) naming the first missing or unexpected tensor, or the first
    shape that differs, and the network it expects. Returns what was loaded."""
    names = getattr(net, "ottt_names", None)
    if names is None:
        raise ValueError(f"{where} is an OTTT checkpoint (weights under 'net'): it fits "
                         f"--net nfresnet34 only, not {net.describe()}")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    params = dict(net.named_parameters())
    expect = f"expected the OTTT paper's nfresnet34 (at width 1: {net.spec})"
    for key in names:
        if key not in state:
            raise ValueError(f"{where} does not fit: it has no {key}; {expect}")
    for key in state:
        if key not in names:
            raise ValueError(f"{where} does not fit: it has {key}, which nfresnet34 does not; "
                             f"{expect}")
    for key, ours in names.items():
        value, p = state[key], params[ours]
        if tuple(value.shape) != tuple(p.shape):
            raise ValueError(f"{where} does not fit: {key} has shape {tuple(value.shape)} "
                             f"there and {tuple(p.shape)} here; {expect}")
    with torch.no_grad():
        for key, ours in names.items():
            params[ours].copy_(state[key])
    return f"{where} (OTTT NF-ResNet, {len(names)} tensors)"


def load_ottt_checkpoint(net, path: str | Path) -> str:
    """Load the file ``path`` (``torch.save({'net': state_dict, ...})``) into ``net``."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=False)
    if not isinstance(obj, dict) or not isinstance(obj.get("net"), dict):
        raise ValueError(f"{path} is not an OTTT checkpoint: expected a dict with the "
                         "weights under 'net'")
    return load_ottt_state(net, obj["net"], str(path))
