"""Feature and score drift, from the tensors the pipeline already assembled.

Per model version (the active model and a canary apart), every monitored model-input column
and the score are binned with the reference's bins and kept in an exact sliding window of the
last ``window_events`` published events (``worker.quality.window``). PSI against the reference
is computed when Prometheus scrapes; a batch only pays for copying its rows, which are binned
(``searchsorted`` per column, two ``bincount`` calls) a thousand events at a time.

Beside drift, over the last ``window_events`` events (in whole batches): the share of each
entity's feature values that fell back to defaults, and of events with a null in each event
field feeding the model. Silent upstream breakage (a feature job that stopped, a producer
that stopped filling a field) looks like drift; these two tell it apart.

Snapshots of the windows (counts per bin and PSI) are handed to ``publish`` every
``snapshot_interval_s`` for ``worker monitor report``'s "PSI over time".
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.pipeline.names import NamedColumn
from worker.quality.reference import Reference
from worker.quality.window import SlidingBins
from worker.records import BatchResult, Delivery, Message, ScoredRows
from worker.runner.observer import Observer

logger = logging.getLogger(__name__)

RETIRED_AFTER_S = 900.0
"""A version that scored nothing for this long is no longer exported."""

SCORE = "$score"
"""The score's name among a window's columns (never a feature name: those have no ``$``)."""


ReferenceOf = Callable[[str, str], Reference | None]
"""The reference of a model (name, version), or None when it has none."""


class VersionWindow:
    """The drift window of one model version: the columns it has bins for, and their counts.

    Batches' rows are kept as they come and binned ``BIN_EVERY`` events at a time (and before
    anything reads the window): binning costs about 25 numpy calls whatever the row count, which
    at 5,000 events/s in batches of ~13 was 16 % of the worker's main thread (py-spy, issue 16):
    63-120 µs a batch binned at once, 12-18 µs deferred (``DriftMonitor.batch_done``
    timed with 11 columns); batches of 2,000 cost the same either way (1.0-1.4 ms)."""

    BIN_EVERY = 1024

    def __init__(self, columns: list[NamedColumn], reference: Reference, capacity: int) -> None:
        self.columns = [c for c in columns if c.name in reference.features]
        self.bins = [reference.features[c.name] for c in self.columns]
        self.score = reference.score
        self.names = [c.name for c in self.columns] + ([SCORE] if self.score is not None else [])
        self.all_bins = [*self.bins, *([self.score] if self.score is not None else [])]
        self.shares = np.concatenate([b.shares for b in self.all_bins]) if self.all_bins else np.zeros(0)
        self.window = SlidingBins([b.size for b in self.all_bins], capacity) if self.all_bins else None
        self.tensors = sorted({c.tensor for c in self.columns})
        self._pending: list[tuple[dict[str, np.ndarray], np.ndarray | None]] = []
        self._pending_events = 0

    def add(self, scored: ScoredRows, rows: np.ndarray) -> None:
        if self.window is None or not len(rows):
            return
        feeds = {t: np.asarray(scored.feeds[t])[rows] for t in self.tensors}  # indexing by rows copies them
        scores = np.asarray(scored.scores)[rows] if self.score is not None else None
        self._pending.append((feeds, scores))
        self._pending_events += len(rows)
        if self._pending_events >= self.BIN_EVERY:
            self.flush()

    def flush(self) -> None:
        """Bins the rows added since the last flush."""
        if self.window is None or not self._pending:
            return
        pending, self._pending, self._pending_events = self._pending, [], 0
        feeds = {t: np.concatenate([p[0][t] for p in pending]) for t in self.tensors}
        parts = [b.index(_column(feeds[c.tensor], c.column)) for c, b in zip(self.columns, self.bins, strict=True)]
        if self.score is not None:
            parts.append(self.score.index(np.concatenate([p[1] for p in pending])))
        self.window.add(np.stack(parts, axis=1))

    @property
    def events(self) -> int:
        self.flush()
        return self.window.filled if self.window is not None else 0

    def psi(self) -> dict[str, float]:
        if self.window is None:
            return {}
        self.flush()
        return dict(zip(self.names, self.window.psi(self.shares).tolist(), strict=True))

    def snapshot(self) -> dict[str, Any]:
        self.flush()
        counts = self.window.column_counts() if self.window is not None else []
        psi = self.psi()
        return {"events": self.events, "columns": {
            name: {"counts": c.tolist(), "psi": _finite(psi[name]), "bins": b.to_json()}
            for name, c, b in zip(self.names, counts, self.all_bins, strict=True)}}


def coverage(columns: Sequence[NamedColumn], reference: Reference) -> tuple[list[str], list[str]]:
    """The watched features the reference has bins for, and those it has none for."""
    names = [c.name for c in columns]
    return [n for n in names if n in reference.features], [n for n in names if n not in reference.features]


def _column(values: np.ndarray, column: int | None) -> np.ndarray:
    return values if column is None else values[:, column]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class BatchShares:
    """Shares over the last ``capacity`` events, counted a batch at a time."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._batches: deque[tuple[int, dict[str, float]]] = deque()
        self._events = 0
        self._totals: dict[str, float] = {}

    def add(self, events: int, counts: dict[str, float]) -> None:
        self._batches.append((events, counts))
        self._events += events
        for name, value in counts.items():
            self._totals[name] = self._totals.get(name, 0.0) + value
        while self._batches and self._events - self._batches[0][0] >= self.capacity:
            gone, old = self._batches.popleft()
            self._events -= gone
            for name, value in old.items():
                self._totals[name] -= value

    def shares(self) -> dict[str, float]:
        return {name: total / self._events for name, total in self._totals.items()} if self._events else {}


class DriftMonitor(Observer, Collector):
    """Watches the batches (an ``Observer``) and exports PSI when scraped (a ``Collector``)."""

    def __init__(self, columns: Sequence[NamedColumn], reference_of: ReferenceOf, window_events: int,
                 min_events: int, entity_widths: dict[str, int], *, publish: Callable[[list[dict[str, Any]]], None]
                 | None = None, snapshot_interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.columns = list(columns)
        self.reference_of = reference_of
        self.capacity = window_events
        self.min_events = min(min_events, window_events)
        self.entity_widths = entity_widths
        self.windows: dict[tuple[str, str], VersionWindow | None] = {}
        self.defaults = BatchShares(window_events)
        self.nulls = BatchShares(window_events)
        self.publish = publish
        self.snapshot_interval_s = snapshot_interval_s
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._last_snapshot = clock()
        self._lock = threading.Lock()

    def register(self, registry: CollectorRegistry) -> DriftMonitor:
        registry.register(self)
        return self

    def batch_done(self, batch: Sequence[Message], result: BatchResult, delivery: Delivery) -> None:
        scored = result.scored
        with self._lock:
            if scored is not None:
                groups = scored.groups or {(result.model_name, result.model_version): slice(None)}
                published = np.asarray(scored.published)
                for key, rows in groups.items():
                    window = self._window(key)
                    if window is not None:
                        window.add(scored, np.flatnonzero(published) if isinstance(rows, slice)
                                   else rows[published[rows]])
            self._count_missing(result)
        self._maybe_publish()

    def idle(self) -> None:
        self._maybe_publish()

    def _window(self, key: tuple[str, str]) -> VersionWindow | None:
        self._seen[key] = self._clock()
        if key not in self.windows:
            reference = self.reference_of(*key)
            self.windows[key] = None if reference is None else VersionWindow(self.columns, reference, self.capacity)
            if reference is None:
                logger.warning("model %s version %s has no reference bins: its drift is not monitored", *key)
        return self.windows[key]

    def _count_missing(self, result: BatchResult) -> None:
        n = len(result.events)
        if not n:
            return
        self.defaults.add(n, {e: c / w for e, c in result.feature_defaults.items()
                              if (w := self.entity_widths.get(e))})
        self.nulls.add(n, {k: float(v) for k, v in result.nulls.items()})

    def live(self) -> list[tuple[tuple[str, str], VersionWindow]]:
        """The windows of versions that scored lately: a retired version's figures (a canary rolled
        back, the version before a promotion) stop being exported, so its alerts clear."""
        now = self._clock()
        return [(key, window) for key, window in self.windows.items()
                if window is not None and now - self._seen[key] <= RETIRED_AFTER_S]

    def snapshot(self) -> list[dict[str, Any]]:
        """Every live version's window: counts per bin, bins and PSI per column."""
        with self._lock:
            return [{"model_name": name, "model_version": version, **window.snapshot()}
                    for (name, version), window in self.live()]

    def _maybe_publish(self) -> None:
        now = self._clock()
        if self.publish is None or now - self._last_snapshot < self.snapshot_interval_s:
            return
        self._last_snapshot = now
        snapshots = [s for s in self.snapshot() if s["events"] >= self.min_events]
        if snapshots:
            self.publish(snapshots)

    def describe(self) -> Iterator[Metric]:
        yield from _families().values()

    def collect(self) -> Iterator[Metric]:
        families = _families()
        feature, score, events = families["feature"], families["score"], families["events"]
        with self._lock:
            for (name, version), window in self.live():
                events.add_metric([name, version], window.events)
                if window.events < self.min_events:
                    continue
                for column, value in window.psi().items():
                    if column == SCORE:
                        score.add_metric([name, version], value)
                    else:
                        feature.add_metric([name, version, column], value)
            for entity, share in self.defaults.shares().items():
                families["defaults"].add_metric([entity], share)
            for field, share in self.nulls.shares().items():
                families["nulls"].add_metric([field], share)
        yield from families.values()


def _families() -> dict[str, GaugeMetricFamily]:
    version = ["model_name", "model_version"]
    return {
        "feature": GaugeMetricFamily("worker_feature_psi", "PSI of a model input against its reference, over the "
                                     "drift window", labels=[*version, "feature"]),
        "score": GaugeMetricFamily("worker_score_psi", "PSI of the score against its reference, over the drift "
                                   "window", labels=version),
        "events": GaugeMetricFamily("worker_drift_window_events", "Events in the drift window", labels=version),
        "defaults": GaugeMetricFamily("worker_feature_default_share", "Share of an entity's feature values that "
                                      "fell back to defaults, over the drift window", labels=["entity"]),
        "nulls": GaugeMetricFamily("worker_event_field_null_share", "Share of events with a null in an event field "
                                   "feeding the model, over the drift window", labels=["field"]),
    }
