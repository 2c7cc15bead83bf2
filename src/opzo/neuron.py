"""The LIF neuron under its historical module name (see :mod:`opzo.neurons`)."""

from __future__ import annotations

from .neurons.base import RESET_MODES
from .neurons.lif import LIF, LIFParams, lif_step

__all__ = ["LIF", "LIFParams", "RESET_MODES", "lif_step"]
