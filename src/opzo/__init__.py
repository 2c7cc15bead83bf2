"""opzo: online, backprop-free training of spiking neural networks.

The centre is OPZO (online pseudo-zeroth-order training); around it stand spatial BP (OTTT),
DFA, DKP and single-point ZO, all interchangeable :mod:`opzo.rules` (each optionally with local
learning, :class:`LocalLearning`), on fully connected, convolutional or residual networks
(:class:`SpikingNet`, :class:`SpikingMLP`).

The names below are imported on first use (PEP 562), so that ``import opzo`` itself imports
no torch: ``opzo train`` can then answer Ctrl-C during its start-up (seconds of importing
torch) with one line rather than a traceback (:mod:`opzo.__main__`).
"""

from __future__ import annotations

import importlib as _importlib
import importlib.util as _importlib_util
import typing as _typing

from .version import __version__ as __version__

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "BatchStats": "batch",
    "OnlineLearner": "learner",
    "evaluate_batch": "learner",
    "InstantLoss": "losses",
    "NETS": "netstring",
    "parse_net": "netstring",
    "SpikingMLP": "network",
    "SpikingNet": "network",
    "LIF": "neurons",
    "NEURONS": "neurons",
    "lif_step": "neurons",
    "DFA": "rules",
    "DKP": "rules",
    "OPZO": "rules",
    "RULES": "rules",
    "ZO": "rules",
    "LocalLearning": "rules",
    "NoiseSampler": "rules",
    "SpatialBP": "rules",
    "FastSigmoidSurrogate": "surrogate",
    "SigmoidSurrogate": "surrogate",
    "make_surrogate": "surrogate",
}

__all__ = [
    "DFA",
    "DKP",
    "NETS",
    "NEURONS",
    "OPZO",
    "RULES",
    "ZO",
    "BatchStats",
    "FastSigmoidSurrogate",
    "InstantLoss",
    "LIF",
    "LocalLearning",
    "NoiseSampler",
    "OnlineLearner",
    "SigmoidSurrogate",
    "SpatialBP",
    "SpikingMLP",
    "SpikingNet",
    "evaluate_batch",
    "lif_step",
    "make_surrogate",
    "parse_net",
]

if _typing.TYPE_CHECKING:
    from .batch import BatchStats
    from .learner import OnlineLearner, evaluate_batch
    from .losses import InstantLoss
    from .netstring import NETS, parse_net
    from .network import SpikingMLP, SpikingNet
    from .neurons import LIF, NEURONS, lif_step
    from .rules import DFA, DKP, OPZO, RULES, ZO, LocalLearning, NoiseSampler, SpatialBP
    from .surrogate import FastSigmoidSurrogate, SigmoidSurrogate, make_surrogate


def __getattr__(name: str) -> object:
    """A public name (imported from its submodule on first use) or a submodule."""
    if name == "LIFParams":  # the old name of LIF
        from .deprecation import warn_renamed

        warn_renamed("opzo.LIFParams", "opzo.LIF")
        return __getattr__("LIF")
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and _importlib_util.find_spec(f"{__name__}.{name}") is not None:
        return _importlib.import_module(f"{__name__}.{name}")  # as after an eager import
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*(n for n in globals() if not n.startswith("_")), *_EXPORTS} - {"annotations"})
