"""Per-batch feature lookups.

A batch's records are mapped to entity keys (``card:{card_id}``, ``u:{user.id}``); each
distinct key is fetched once, every entity of the batch in one store round trip. The result
keeps the raw values per distinct key plus, per record, the index of its key, so that
columns are built with one numpy gather instead of a Python loop per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.features.keys import KeyTemplate
from worker.features.store import FeatureStore, KeyValues, RawValue
from worker.records import Record


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
