"""The monitor's Prometheus metrics, read from the shared store when scraped.

The totals and the accuracy windows belong to the whole monitor group (they live in Redis), so
every replica exports the same figures: aggregate them with ``max``, never ``sum``. They survive
a restart of any replica, and a record read twice is counted once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.monitoring.join import version_accuracy
from worker.monitoring.store import MonitorStore, redis_errors

logger = logging.getLogger(__name__)

VERSION = ["model_name", "model_version"]
GAUGES = {"auc": "ROC AUC", "precision": "Precision at the threshold", "recall": "Recall at the threshold",
          "log_loss": "Log loss"}
COUNTERS = {"received": "Labels read (the group's total)",
            "matched": "Labels joined to their prediction within the wait",
            "unmatched": "Labels whose prediction never came (an unknown event)",
            "late": "Labels that came after the wait (left out of accuracy)"}
CACHE_S = 5.0  # scrapes within this share one reading of Redis


class MonitorMetrics(Collector):
    def __init__(self, store: MonitorStore, threshold: float, holdout_auc: Callable[[str, str], float | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.threshold = threshold
        self.holdout_auc = holdout_auc
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def register(self, registry: CollectorRegistry) -> MonitorMetrics:
        registry.register(self)
        return self

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self._clock()
            if self._cached is None or now - self._cached[0] >= CACHE_S:
                try:
                    self._cached = (now, self._read())
                except redis_errors() as exc:
                    logger.warning("cannot read the monitor's figures from Redis: %s", exc)
                    return
            yield from self._cached[1]

    def describe(self) -> Iterator[Metric]:
        counters, gauges, events, holdout = _families()
        yield from (*counters.values(), *gauges.values(), events, holdout)

    def _read(self) -> list[Metric]:
        totals = self.store.totals()
        counters, gauges, events, holdout = _families()
        for name, counter in counters.items():
            counter.add_metric([], totals[name])
        for model, version, a in version_accuracy(self.store, self.threshold):
            events.add_metric([model, version], a.events)
            for name, gauge in gauges.items():
                value = getattr(a, name)
                if math.isfinite(value):
                    gauge.add_metric([model, version], value)
            card_auc = self.holdout_auc(model, version)
            if card_auc is not None:
                holdout.add_metric([model, version], card_auc)
        return [*counters.values(), *gauges.values(), events, holdout]


def _families() -> tuple[dict[str, CounterMetricFamily], dict[str, GaugeMetricFamily], GaugeMetricFamily,
                         GaugeMetricFamily]:
    counters = {name: CounterMetricFamily(f"worker_labels_{name}", doc) for name, doc in COUNTERS.items()}
    gauges = {name: GaugeMetricFamily(f"worker_model_{name}", f"{doc}, over the labelled window", labels=VERSION)
              for name, doc in GAUGES.items()}
    events = GaugeMetricFamily("worker_model_labelled_events", "Labelled predictions in the window", labels=VERSION)
    holdout = GaugeMetricFamily("worker_model_holdout_auc", "The model card's holdout AUC", labels=VERSION)
    return counters, gauges, events, holdout
