"""Neuron models behind one interface (:class:`~opzo.neurons.base.Neuron`), by name.

A new model is one file here with a :class:`Neuron` subclass and one line in
:data:`NEURONS` (and its name in ``opzo.config.NEURONS``, which a test keeps equal).
"""

from __future__ import annotations

from .alif import ALIF
from .base import RESET_MODES, Neuron, NeuronFactory, fire, surrogate_at
from .cuba import CubaLIF
from .lif import LIF, LIFParams, lif_step

#: name -> factory taking the training options (``lam``, ``v_th``, ``reset``, ``syn_lambda``,
#: ``adapt_beta``, ``adapt_lambda``; each model takes the ones it has)
NEURONS: dict[str, NeuronFactory] = {
    "lif": LIF.from_options,
    "cuba": CubaLIF.from_options,
    "alif": ALIF.from_options,
}


def make_neuron(name: str, **options: float | str) -> Neuron:
    """The neuron model ``name`` (one of :data:`NEURONS`) from the training options."""
    if name not in NEURONS:
        raise ValueError(f"unknown neuron {name!r}; choose one of {tuple(NEURONS)}")
    return NEURONS[name](**options)


__all__ = ["ALIF", "LIF", "NEURONS", "RESET_MODES", "CubaLIF", "LIFParams", "Neuron",
           "fire", "lif_step", "make_neuron", "surrogate_at"]
