"""Neuron models behind one interface (:class:`~opzo.neurons.base.Neuron`), by name.

A new model is one file here with a :class:`Neuron` subclass and one ``NEURONS.register``
line below; ``opzo train --neuron NAME``, the config's checks and the tests read
:data:`NEURONS`.
"""

from __future__ import annotations

from ..registry import Registry
from .alif import ALIF
from .base import RESET_MODES, Neuron, fire, surrogate_at
from .cuba import CubaLIF
from .lif import LIF, lif_step

#: name -> the :class:`Neuron` subclass, built from the values of its ``options`` by its
#: ``from_options`` (the common ``lif_lambda``, ``v_th``, ``reset``, then the model's own:
#: cuba's ``syn_lambda``, alif's ``adapt_beta`` and ``adapt_lambda``)
NEURONS: Registry[type[Neuron]] = Registry("neuron")
NEURONS.register("lif", LIF, "leaky integrate-and-fire (OPZO paper eq. 1)")
NEURONS.register("cuba", CubaLIF, "a synaptic current with leak syn_lambda feeds the membrane")
NEURONS.register("alif", ALIF, "a threshold V_th + adapt_beta·a that rises with each spike, "
                 "a decaying with adapt_lambda")


def make_neuron(name: str, **options: float | str) -> Neuron:
    """The neuron model ``name`` (one of :data:`NEURONS`) from the values of training options
    (``lif_lambda`` or ``lam``, ``v_th``, ``reset``, the model's own; others are ignored)."""
    return NEURONS[name].factory.from_options(**options)


def __getattr__(name: str) -> object:
    """``LIFParams``, the old name of :class:`LIF` (warns once)."""
    if name == "LIFParams":
        from . import lif

        return lif.LIFParams
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ALIF", "LIF", "NEURONS", "RESET_MODES", "CubaLIF", "Neuron", "fire", "lif_step",
           "make_neuron", "surrogate_at"]
