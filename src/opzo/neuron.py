"""The LIF neuron under its old module name: use :mod:`opzo.neurons` (importing this module
warns once)."""

from __future__ import annotations

from .deprecation import warn_renamed
from .neurons.base import RESET_MODES
from .neurons.lif import LIF, lif_step

warn_renamed("the module opzo.neuron", "opzo.neurons", stacklevel=2)

#: the old name of :class:`~opzo.neurons.LIF`
LIFParams = LIF

__all__ = ["LIF", "LIFParams", "RESET_MODES", "lif_step"]
