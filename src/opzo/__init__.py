"""opzo: online, backprop-free training of spiking neural networks.

The centre is OPZO (online pseudo-zeroth-order training); around it stand spatial BP (OTTT),
DFA, DKP and single-point ZO, all interchangeable :mod:`opzo.rules` (each optionally with local
learning, :class:`LocalLearning`), on fully connected, convolutional or residual networks
(:class:`SpikingNet`, :class:`SpikingMLP`).
"""

from __future__ import annotations

from .learner import BatchStats, OnlineLearner, evaluate_batch
from .losses import InstantLoss
from .netstring import NETS, parse_net
from .network import SpikingMLP, SpikingNet
from .neuron import LIFParams, lif_step
from .rules import DFA, DKP, OPZO, RULES, ZO, LocalLearning, NoiseSampler, SpatialBP
from .surrogate import FastSigmoidSurrogate, SigmoidSurrogate, make_surrogate

__version__ = "0.1.0"

__all__ = [
    "DFA",
    "DKP",
    "NETS",
    "OPZO",
    "RULES",
    "ZO",
    "BatchStats",
    "FastSigmoidSurrogate",
    "InstantLoss",
    "LIFParams",
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
