"""Per-batch feature lookups.

A batch's records are mapped to entity keys (``card:{card_id}``, ``u:{user.id}``, or Feast's
binary entity keys); each distinct key is fetched once, every entity of the batch in one store
round trip. The result keeps the values per distinct key plus, per record, the index of its key,
so that columns are built with one numpy gather instead of a Python loop per event.

Freshness: where an entity knows when its values were written (Feast's ``_ts:<view>``, or a
timestamp field of a plain hash) and has a ``max_age_s``, a row older than that (or whose time
is unknown) is treated as absent, so its features take their defaults, and is counted as stale.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from worker.features.store import FeatureStore, KeyValues, RawValue
from worker.records import Record

Key = str | bytes


class Layout(Protocol):
    """How an entity's values sit in its hash: which fields to read, and how to read the reply."""

    store_fields: tuple[Key, ...]
    written_by: str | None
    """Where the rows' write times come from (for people), or None if the layout has none."""

    def read(self, replies: list[KeyValues]) -> tuple[list[KeyValues], np.ndarray | None]:
        """Replies to ``store_fields`` → per key its feature values (or the error that fails the
        key's events) and, if the layout knows it, when each row was written in Unix seconds: NaN
        where there is no row, -inf where the row's time is unknown (it can never be fresh)."""


class HashLayout:
    """Plain hashes: one field per feature, values as text; optionally a field holding the Unix
    time (seconds) at which the row was written."""

    def __init__(self, fields: Sequence[str], timestamp_field: str | None = None) -> None:
        self.store_fields: tuple[Key, ...] = (*fields, timestamp_field) if timestamp_field else tuple(fields)
        self._timed = timestamp_field is not None
        self.written_by: str | None = f"the hash field {timestamp_field}" if timestamp_field else None

    def __str__(self) -> str:
        return ""

    def read(self, replies: list[KeyValues]) -> tuple[list[KeyValues], np.ndarray | None]:
        if not self._timed:
            return replies, None
        written = np.array([math.nan if isinstance(r, Exception) else _written(r) for r in replies])
        return [r if isinstance(r, Exception) else r[:-1] for r in replies], written


def _written(row: list[RawValue]) -> float:
    """The row's write time: NaN if there is no row, -inf if it has values but no readable time."""
    try:
        return float(row[-1]) if row[-1] is not None else (-math.inf if any(row) else math.nan)
    except ValueError:
        return -math.inf  # an unreadable time cannot show the row is fresh


@dataclass(frozen=True)
class EntitySpec:
    """One kind of entity in the store: how a record names it, its features and defaults, how
    they are laid out (plain hash fields when ``layout`` is None) and how old they may be."""

    name: str
    key: Callable[[Record], Key | None]
    fields: tuple[str, ...]
    defaults: dict[str, Any]
    layout: Layout | None = None
    max_age_s: float | None = None

    @property
    def store_fields(self) -> tuple[Key, ...]:
        return self.layout.store_fields if self.layout is not None else self.fields

    def describe(self) -> str:
        """For ``check-config``: where the entity's values are, and the freshness rule."""
        where = ", ".join(filter(None, (str(self.key), str(self.layout or ""))))
        text = f"{self.name} ({where}, {len(self.fields)} fields)"
        written_by = self.layout.written_by if self.layout is not None else None
        if self.max_age_s is not None:
            return (f"{text}: values written over {self.max_age_s:g} s ago (by {written_by}), or at an unknown "
                    "time, count as missing: their defaults apply and worker_feature_stale_total counts them")
        if written_by:
            return f"{text}: their age (by {written_by}) in worker_feature_age_seconds; no max_age_s"
        return text


@dataclass
class EntityLookup:
    """The values of one entity for a batch: ``values[u][f]`` for distinct key u, field f;
    ``index[i]`` is record i's distinct key, or -1 where the record has no key. ``ages`` (when
    the layout knows write times) is each key's age in seconds (NaN: unknown or no row) and
    ``stale`` the keys set aside as too old."""

    spec: EntitySpec
    keys: list[Key]
    index: np.ndarray
    values: list[KeyValues] = field(default_factory=list)
    ages: np.ndarray | None = None
    stale: np.ndarray | None = None

    def raw_column(self, field_name: str) -> list[Any]:
        """Per distinct key, the value of one field (None where absent, or the key's error)."""
        f = self.spec.fields.index(field_name)
        return [row if isinstance(row, Exception) else row[f] for row in self.values]

    def freshness(self) -> tuple[int, np.ndarray]:
        """The batch's events whose row was stale, and the age in seconds of the row each event
        read (one per event whose row has a known write time)."""
        if self.ages is None or not self.keys:
            return 0, np.empty(0)
        keyed = self.index[self.index >= 0]
        ages = self.ages[keyed]
        stale = int(self.stale[keyed].sum()) if self.stale is not None else 0
        return stale, ages[np.isfinite(ages)]


class FeatureFetcher:
    """Builds the batch's distinct keys per entity and fetches them in one store call."""

    def __init__(self, store: FeatureStore, entities: Sequence[EntitySpec],
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._entities = list(entities)
        self._clock = clock

    @property
    def entities(self) -> list[EntitySpec]:
        return self._entities

    def fetch(self, records: Sequence[Record]) -> dict[str, EntityLookup]:
        lookups = {spec.name: _distinct_keys(spec, records) for spec in self._entities}
        requests = [(spec.store_fields, lookups[spec.name].keys) for spec in self._entities]
        if any(keys for _, keys in requests):
            now = self._clock()
            for spec, replies in zip(self._entities, self._store.fetch(requests), strict=True):
                _fill(lookups[spec.name], replies, now)
        return lookups

    def absent(self, records: Sequence[Record]) -> dict[str, EntityLookup]:
        """Lookups as if the store held none of the keys: every feature takes its default."""
        lookups = {spec.name: _distinct_keys(spec, records) for spec in self._entities}
        for spec in self._entities:
            lookup = lookups[spec.name]
            lookup.values = [[None] * len(spec.fields) for _ in lookup.keys]
        return lookups


def _fill(lookup: EntityLookup, replies: list[KeyValues], now: float) -> None:
    spec = lookup.spec
    values, written = spec.layout.read(replies) if spec.layout is not None else (replies, None)
    lookup.values = values
    if written is None:
        return
    lookup.ages = ages = now - written
    if spec.max_age_s is None:
        return
    stale = ~np.isnan(written) & ~(ages <= spec.max_age_s)  # a row of unknown time (-inf) is never fresh
    for u in np.flatnonzero(stale).tolist():
        values[u] = [None] * len(spec.fields)
    lookup.stale = stale


def _distinct_keys(spec: EntitySpec, records: Sequence[Record]) -> EntityLookup:
    # A key object may split the work: ``render`` per record (cheap: a template's f-string, or the
    # raw join-key values) and ``store_key`` per distinct key only (Feast's binary serialization).
    keys = list(map(getattr(spec.key, "render", spec.key), records))
    distinct = dict.fromkeys(keys)
    distinct.pop(None, None)
    position: dict[Any, int] = {key: i for i, key in enumerate(distinct)}
    position[None] = -1
    index = np.fromiter(map(position.__getitem__, keys), dtype=np.intp, count=len(keys))
    store_key = getattr(spec.key, "store_key", None)
    return EntityLookup(spec, list(map(store_key, distinct)) if store_key else list(distinct), index)
