"""Feature lookup: entity key templates, the feature store port, and per-batch lookups.

A batch's records are mapped to entity keys (``card:{card_id}``, ``u:{user.id}``); each
distinct key is fetched once, every entity of the batch in one store round trip. The result
keeps the raw values per distinct key plus, per record, the index of its key, so that
columns are built with one numpy gather instead of a Python loop per event.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from worker.errors import FeatureStoreUnavailable

Record = dict[str, Any]
RawValue = bytes | None
# A store answers a key with its field values, or with the error it got for that key alone
# (a key holding another Redis type, say), which dead-letters only the events that use it.
KeyValues = list[RawValue] | Exception


class FeatureStore(Protocol):
    """Reads hash fields for many keys in one round trip."""

    def fetch(self, requests: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[list[KeyValues]]:
        """For each ``(fields, keys)``: one list per key with the raw value of each field."""

    def ping(self) -> None:
        """Raise ``FeatureStoreUnavailable`` unless the store answers."""

    def close(self) -> None: ...


def path_getter(path: str) -> Callable[[Record], Any]:
    """A function returning the value at a dotted path, or None where a level is null."""
    parts = path.split(".")
    if len(parts) == 1:
        name = parts[0]
        return lambda record: record[name]

    def get(record: Record) -> Any:
        value: Any = record
        for part in parts:
            if value is None:
                return None
            value = value[part]
        return value

    return get


class KeyTemplate:
    """``"card:{card_id}"`` → a function from a record to ``"card:c00001"`` (None if a part is null)."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.literals: list[str] = []
        self.paths: list[str] = []
        for literal, name, spec, conversion in string.Formatter().parse(template):
            if spec or conversion:
                raise ValueError(f"'{{{name}:{spec}}}': format specs and conversions are not supported")
            self.literals.append(literal)
            if name is not None:
                if not name:
                    raise ValueError("an empty '{}' names no field")
                self.paths.append(name)
        if not self.paths:
            raise ValueError("names no event field (write it like 'card:{card_id}')")
        self.render = self._single() if len(self.paths) == 1 else self._general()

    def __call__(self, record: Record) -> str | None:
        return self.render(record)

    def _single(self) -> Callable[[Record], str | None]:
        # The common one-field template as one f-string: ten times cheaper than the general loop.
        head, tail = self.literals[0], "".join(self.literals[1:])
        path = self.paths[0]
        if "." not in path:
            def top_level(record: Record) -> str | None:
                value = record[path]
                return None if value is None else f"{head}{value}{tail}"
            return top_level
        getter = path_getter(path)

        def nested(record: Record) -> str | None:
            value = getter(record)
            return None if value is None else f"{head}{value}{tail}"
        return nested

    def _general(self) -> Callable[[Record], str | None]:
        getters = [path_getter(p) for p in self.paths]
        literals = [*self.literals[1:], ""][: len(getters)]

        def render(record: Record) -> str | None:
            parts = [self.literals[0]]
            for getter, literal in zip(getters, literals, strict=True):
                value = getter(record)
                if value is None:
                    return None
                parts.append(f"{value}{literal}")
            return "".join(parts)
        return render


@dataclass(frozen=True)
class EntitySpec:
    """One kind of entity in the store: its key template, fields and defaults."""

    name: str
    template: KeyTemplate
    fields: tuple[str, ...]
    defaults: dict[str, Any]


@dataclass
class EntityLookup:
    """The values of one entity for a batch: ``values[u][f]`` for distinct key u, field f;
    ``index[i]`` is record i's distinct key, or -1 where the record has no key."""

    spec: EntitySpec
    keys: list[str]
    index: np.ndarray
    values: list[KeyValues] = field(default_factory=list)

    def raw_column(self, field_name: str) -> list[RawValue | Exception]:
        """Per distinct key, the raw value of one field (None where absent, or the key's error)."""
        f = self.spec.fields.index(field_name)
        return [row if isinstance(row, Exception) else row[f] for row in self.values]


class FeatureFetcher:
    """Builds the batch's distinct keys per entity and fetches them in one store call."""

    def __init__(self, store: FeatureStore, entities: Sequence[EntitySpec]) -> None:
        self._store = store
        self._entities = list(entities)

    @property
    def entities(self) -> list[EntitySpec]:
        return self._entities

    def fetch(self, records: Sequence[Record]) -> dict[str, EntityLookup]:
        lookups = {spec.name: _distinct_keys(spec, records) for spec in self._entities}
        requests = [(spec.fields, lookups[spec.name].keys) for spec in self._entities]
        if any(keys for _, keys in requests):
            for spec, values in zip(self._entities, self._store.fetch(requests), strict=True):
                lookups[spec.name].values = values
        return lookups

    def absent(self, records: Sequence[Record]) -> dict[str, EntityLookup]:
        """Lookups as if the store held none of the keys: every feature takes its default."""
        lookups = {spec.name: _distinct_keys(spec, records) for spec in self._entities}
        for spec in self._entities:
            lookup = lookups[spec.name]
            lookup.values = [[None] * len(spec.fields) for _ in lookup.keys]
        return lookups


def _distinct_keys(spec: EntitySpec, records: Sequence[Record]) -> EntityLookup:
    keys = list(map(spec.template.render, records))
    distinct = dict.fromkeys(keys)
    distinct.pop(None, None)
    position: dict[str | None, int] = {key: i for i, key in enumerate(distinct)}
    position[None] = -1
    index = np.fromiter(map(position.__getitem__, keys), dtype=np.intp, count=len(keys))
    return EntityLookup(spec, list(distinct), index)  # type: ignore[arg-type]  # None was popped


class InMemoryFeatureStore:
    """The feature store's in-memory twin: ``{key: {field: value}}``."""

    def __init__(self, data: dict[str, dict[str, Any]] | None = None) -> None:
        self.data = data if data is not None else {}
        self.calls = 0
        self.available = True

    def fetch(self, requests: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[list[KeyValues]]:
        self.ping()
        self.calls += 1
        return [[[_raw(self.data.get(key, {}).get(f)) for f in fields] for key in keys]
                for fields, keys in requests]

    def ping(self) -> None:
        if not self.available:
            raise FeatureStoreUnavailable("in-memory store switched off")

    def close(self) -> None:
        pass


def _raw(value: Any) -> RawValue:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()
