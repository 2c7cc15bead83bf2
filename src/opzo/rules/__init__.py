"""Spatial credit assignment rules: ``bp``, ``dfa``, ``dkp``, ``zo``, ``opzo``, and
:class:`LocalLearning` (LL / IGL) around any of them."""

from __future__ import annotations

from .base import NOISE_DISTRIBUTIONS, NoiseSampler, SpatialRule, StepContext
from .bp import SpatialBP
from .direct import DFA, DKP, OPZO, DirectFeedbackRule
from .local import LocalLearning
from .zo import ZO

RULES: dict[str, type[SpatialRule]] = {
    "bp": SpatialBP,
    "dfa": DFA,
    "dkp": DKP,
    "zo": ZO,
    "opzo": OPZO,
}

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
