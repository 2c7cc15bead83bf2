"""Registries: every kind of extension (neuron model, spatial rule, temporal trace, local
derivative, dataset) is registered once, by name, with its factory and its traits.

The command line's choices, the config's checks, the builders of :mod:`opzo.build` and the
tests all read the registry of a kind; nothing else lists the names. Adding a part is one file
with its factory plus one ``register`` line in the package that owns the kind:

==========  ==================================  ==============================================
kind        registry                            what is registered; how a config builds it
==========  ==================================  ==============================================
neuron      :data:`opzo.neurons.NEURONS`        the ``Neuron`` subclass; ``from_options(**opts)``
rule        :data:`opzo.rules.RULES`            the ``SpatialRule`` subclass; ``from_config(cfg)``
trace       :data:`opzo.traces.TRACES`          the ``Trace`` subclass; ``create(neuron, ...)``
surrogate   :data:`opzo.surrogate.SURROGATES`   the ``Surrogate`` subclass; ``from_config(cfg)``
dataset     :data:`opzo.data.DATASETS`          a factory ``(cfg, split) -> Source``
==========  ==================================  ==============================================

A class's own attributes say what the config's checks need of it (a neuron's
``own_path_unsupported``, a trace's ``per_synapse``); a dataset's are registry traits
(``builtin``, ``events``, ``vectors``, ``steps``). :meth:`Registry.build` calls what is
registered (for a class: its constructor with defaults). The CLI's choices are read from the
registries when used, so a part registered at run time is accepted; its help text is not in
``opzo train --help``, which is written when :mod:`opzo.config` is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    """One registered part: its name, factory, one-line description and traits."""

    name: str
    factory: F
    help: str = ""
    traits: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, trait: str) -> Any:
        # a trait reads like an attribute (entry.builtin); an undeclared one is an error
        traits = object.__getattribute__(self, "traits")
        if trait in traits:
            return traits[trait]
        raise AttributeError(f"{object.__getattribute__(self, 'name')!r} has no trait "
                             f"{trait!r}")


class Registry(Generic[F]):
    """Name -> :class:`Entry`, in registration order.

    ``defaults`` are the traits every entry has unless its ``register`` line says otherwise,
    so a check like ``DATASETS[name].builtin`` never meets a missing trait.
    """

    def __init__(self, kind: str, **defaults: Any) -> None:
        self.kind = kind
        self.defaults = defaults
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str, factory: F, help: str = "", **traits: Any) -> F:
        """Add ``name``; returns the factory (so it also works as ``f = R.register(...)``).
        Raises ValueError for a name already taken or a trait the registry does not know."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        unknown = sorted(set(traits) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.kind} {name!r}: unknown trait(s) {unknown}; this "
                             f"registry has {sorted(self.defaults)}")
        self._entries[name] = Entry(name, factory, help, {**self.defaults, **traits})
        return factory

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a part registered for a while, e.g. by a test)."""
        self[name]  # the error lists the names when it is not there
        del self._entries[name]

    def __getitem__(self, name: str) -> Entry[F]:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of "
                             f"{list(self._entries)}") from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """The factory of ``name`` called with the given arguments."""
        return self[name].factory(*args, **kwargs)

    def names(self, **traits: Any) -> tuple[str, ...]:
        """The registered names (those whose traits equal the given ones), in order."""
        return tuple(n for n, e in self._entries.items()
                     if all(e.traits.get(k) == v for k, v in traits.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
