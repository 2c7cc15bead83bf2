"""Registries: every kind of extension (neuron model, spatial rule, temporal trace, local
derivative, dataset) is registered once, by name, with its factory, its traits and its options.

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

**Options.** A part declares the options it reads next to its code: a class attribute
``options = (Option(...), ...)`` (or ``register(..., options=(...))`` for a factory function).
:mod:`opzo.config` merges the options of every registered part into the CLI flags
(``--syn-lambda``), the config keys and ``config.json``; the part receives their values through
``from_options(**values)`` (neurons) or ``from_config(cfg)``, where ``cfg`` is any object with
the options as attributes (:class:`Options`), never a particular config class.

A class's own attributes say what the config's checks need of it (a neuron's
``own_path_unsupported``, a trace's ``per_synapse``); a dataset's are registry traits
(``builtin``, ``events``, ``vectors``, ``steps``). :meth:`Registry.build` calls what is
registered (for a class: its constructor with defaults). The registries are read when used, so
a part registered at run time (a plugin, a test) is accepted, with its options, by the CLI,
the config files and ``opzo train --help``.

This module is the lowest layer: it imports nothing of opzo.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_KINDS = {bool: "bool", int: "int", float: "float", str: "str", list: "list"}


class Options(Protocol):
    """What a part's ``from_config`` reads: the training options as attributes by their name
    (``cfg.alpha``, ``cfg.syn_lambda``). A :class:`~opzo.config.TrainConfig` is one; so is a
    ``types.SimpleNamespace`` with the names a part reads (parts never import the config)."""

    def __getattr__(self, name: str) -> Any: ...


@dataclass(frozen=True)
class Option:
    """One option a part reads: its config key ``name`` (the flag is ``--name`` with ``-`` for
    ``_``), ``default``, one-line ``help``, and its checks: ``choices``, bounds ``min`` /
    ``max``, and ``check``, a function of the value that returns what is wrong with it (or
    None). ``type`` is one of bool, int, float, str, list (of ints); unset it is the default's
    (give it when the default is None, which also makes None, "unset", a value).
    ``aliases``: other keys and flags that name it (an old or a model-neutral name).
    ``topic``: the heading of ``opzo train --help`` it appears under (unset: its kind's)."""

    name: str
    default: Any
    help: str
    type: type | None = None
    choices: Iterable[str] | None = None
    min: float | None = None
    max: float | None = None
    check: Callable[[Any], str | None] | None = None
    aliases: tuple[str, ...] = ()
    topic: str | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"option name {self.name!r} must be a Python identifier")
        if self.type is None and self.default is None:
            raise ValueError(f"option {self.name!r}: give its type (its default is None)")
        if self.kind not in _KINDS.values():
            raise ValueError(f"option {self.name!r}: type {self.type!r} is not one of "
                             "bool, int, float, str, list")

    @property
    def kind(self) -> str:
        """"bool", "int", "float", "str" or "list" (a list of ints)."""
        typ = self.type if self.type is not None else type(self.default)
        return _KINDS.get(typ, repr(typ))

    @property
    def annotation(self) -> str:
        """The type annotation of the option as a config field."""
        text = "list[int]" if self.kind == "list" else self.kind
        return f"{text} | None" if self.default is None else text

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this option ("must be >= 0", ...), or None."""
        if value is None:
            return None if self.default is None else "may not be empty"
        if isinstance(value, list) and not value:
            return "needs at least one value"
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                return f"= {item!r} must be a finite number"
            if self.choices is not None and item not in self.choices:
                return f"= {item!r} is not allowed; choose one of {list(self.choices)}"
            if self.min is not None and item < self.min:
                return f"= {item!r} must be >= {self.min}"
            if self.max is not None and item > self.max:
                return f"= {item!r} must be <= {self.max}"
        if self.check is not None:
            wrong = self.check(value)
            if wrong:
                return f"= {value!r}: {wrong}"
        return None


def merge_options(*groups: Iterable[Option]) -> tuple[Option, ...]:
    """The options of several parts, each name once, in order of first appearance. Raises
    ValueError when two parts declare the same name differently (one option, one meaning)."""
    merged: dict[str, Option] = {}
    names: dict[str, str] = {}
    for group in groups:
        for opt in group:
            if not isinstance(opt, Option):
                raise ValueError(f"{opt!r} is not an opzo.registry.Option")
            for key in (opt.name, *opt.aliases):
                if key in names and names[key] != opt.name:
                    raise ValueError(f"option {opt.name!r}: the name {key!r} is taken by "
                                     f"option {names[key]!r}")
                names[key] = opt.name
            seen = merged.get(opt.name)
            if seen is not None and seen != opt:
                raise ValueError(f"option {opt.name!r} is declared twice, differently: "
                                 f"{seen} and {opt}")
            merged.setdefault(opt.name, opt)
    return tuple(merged.values())


@dataclass(frozen=True)
class Entry(Generic[F]):
    """One registered part: its name, factory, one-line description, traits and options."""

    name: str
    factory: F
    help: str = ""
    traits: dict[str, Any] = field(default_factory=dict)
    options: tuple[Option, ...] = ()

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

    def register(self, name: str, factory: F, help: str = "", *,
                 options: Iterable[Option] | None = None, **traits: Any) -> F:
        """Add ``name``; returns the factory (so it also works as ``f = R.register(...)``).

        ``options``: the options the part reads (default: the factory's ``options``
        attribute, if any). Raises ValueError for a name already taken, a trait the registry
        does not know, or an option another part of this kind declares differently."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        unknown = sorted(set(traits) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.kind} {name!r}: unknown trait(s) {unknown}; this "
                             f"registry has {sorted(self.defaults)}")
        own = tuple(options if options is not None else getattr(factory, "options", ()))
        try:
            merge_options(self.options(), own)
        except ValueError as exc:
            raise ValueError(f"{self.kind} {name!r}: {exc}") from None
        self._entries[name] = Entry(name, factory, help, {**self.defaults, **traits},
                                    merge_options(own))
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

    def options(self) -> tuple[Option, ...]:
        """The options of every registered part, each once, in registration order."""
        return merge_options(*(e.options for e in self._entries.values()))

    def option_values(self, name: str, cfg: Options) -> dict[str, Any]:
        """``{option name: value in cfg}`` for the options of the part ``name``."""
        return {opt.name: getattr(cfg, opt.name) for opt in self[name].options}

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
