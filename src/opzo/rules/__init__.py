"""Spatial credit assignment rules: ``bp``, ``dfa``, ``dkp``, ``zo``, ``opzo``, and
:class:`LocalLearning` (LL / IGL) around any of them.

A new rule is one file here with a :class:`SpatialRule` subclass (its ``deltas`` and, if it
has options, ``from_config``) and one ``RULES.register`` line below; ``opzo train --method
NAME``, the config's checks and the tests read :data:`RULES`.
"""

from __future__ import annotations

from ..registry import Registry
from . import mforms  # noqa: F401  (the memory-light forms of OPZO's M register themselves)
from .base import SpatialRule, StepContext
from .bp import SpatialBP
from .direct import DFA, DKP, OPZO, DirectFeedbackRule
from .local import LocalLearning
from .noise import NOISE_DISTRIBUTIONS, NoiseSampler
from .zo import ZO

#: name -> the :class:`SpatialRule` subclass (built with defaults by ``RULES.build(name)``,
#: from a training config by its ``from_config``)
RULES: Registry[type[SpatialRule]] = Registry("spatial rule")
RULES.register("bp", SpatialBP, "spatial backpropagation through the layers at each step "
               "(OTTT)")
RULES.register("dfa", DFA, "direct feedback alignment: fixed random feedback of the error")
RULES.register("dkp", DKP, "direct Kolen-Pollack: feedback learned from the activity traces")
RULES.register("zo", ZO, "single-point zeroth order: the loss times the noise")
RULES.register("opzo", OPZO, "online pseudo-zeroth order: momentum feedback M learned from "
               "the noise (OPZO paper eq. 5-7)")

__all__ = [
    "DFA",
    "DKP",
    "NOISE_DISTRIBUTIONS",
    "OPZO",
    "RULES",
    "ZO",
    "DirectFeedbackRule",
    "LocalLearning",
    "NoiseSampler",
    "SpatialBP",
    "SpatialRule",
    "StepContext",
]
