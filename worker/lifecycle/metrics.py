"""Per-version model metrics on Prometheus' default registry (``worker_model_*``), recorded by
a runner observer from each batch's model runs, and by the manager when what serves changes."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

from worker.records import BatchResult, Delivery, Message, ShadowComparison
from worker.runner.observer import Observer
from worker.serving import Serving

_VERSION = ["model", "version", "role"]

EVENTS = Counter("worker_model_events", "Events scored, by model version and role (active, canary, shadow)",
                 _VERSION)
ERRORS = Counter("worker_model_errors", "Events a model version failed on (a canary's are then scored by the "
                 "active model)", _VERSION)
INFERENCE = Histogram("worker_model_inference_seconds", "Time of one model call on a batch, by version and role",
                      _VERSION, buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25, 1.0))
SERVING = Gauge("worker_model_serving", "1 for each model version serving now, by role", _VERSION)
CANARY_SHARE = Gauge("worker_model_canary_share", "Share of keys the canary scores (0 without a canary)", ["model"])
REVISION = Gauge("worker_model_control_revision", "The control revision this replica serves", ["model"])
REFUSALS = Counter("worker_model_refusals", "Model versions refused by validation", ["model", "version"])
ROLLBACKS = Counter("worker_model_canary_rollbacks", "Canaries rolled back automatically for breaching a bound",
                    ["model", "version"])
SHADOW_COMPARED = Counter("worker_model_shadow_compared", "Events scored by the shadow and published by the "
                          "serving model(s)", ["model", "version"])
SHADOW_AGREEMENTS = Counter("worker_model_shadow_label_agreements", "Compared events whose shadow label equals the "
                            "published label", ["model", "version"])
SHADOW_DIFF = Counter("worker_model_shadow_abs_score_diff", "Sum of |shadow score - published score| (divided by "
                      "worker_model_shadow_compared_total: the mean difference)", ["model", "version"])
SHADOW_DIFF_MAX = Gauge("worker_model_shadow_max_abs_score_diff", "Largest |shadow score - published score| in the "
                        "latest batch", ["model", "version"])


def serving_changed(serving: Serving) -> None:
    SERVING.clear()
    SERVING.labels(serving.active.name, serving.active.version, "active").set(1)
    if serving.canary is not None:
        SERVING.labels(serving.canary.name, serving.canary.version, "canary").set(1)
    if serving.shadow is not None:
        SERVING.labels(serving.shadow.name, serving.shadow.version, "shadow").set(1)
    CANARY_SHARE.labels(serving.active.name).set(serving.canary_share if serving.canary is not None else 0.0)
    REVISION.labels(serving.active.name).set(serving.revision)


def refused(model: str, version: str) -> None:
    REFUSALS.labels(model, version).inc()


def canary_rolled_back(model: str, version: str) -> None:
    ROLLBACKS.labels(model, version).inc()


class ModelMetrics(Observer):
    """Counts each batch's model runs per version and role, and the shadow's agreement."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, str], tuple[Counter, Counter, Histogram]] = {}

    def batch_done(self, batch: Sequence[Message], result: BatchResult, delivery: Delivery) -> None:
        for run in result.runs:
            events, errors, seconds = self._child(run.model, run.version, run.role)
            events.inc(run.events)
            if run.errors:
                errors.inc(run.errors)
            seconds.observe(run.seconds)
        if result.shadow is not None:
            self._compare(result.shadow)

    def _child(self, model: str, version: str, role: str) -> tuple[Counter, Counter, Histogram]:
        key = (model, version, role)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = (EVENTS.labels(*key), ERRORS.labels(*key), INFERENCE.labels(*key))
        return child

    @staticmethod
    def _compare(shadow: ShadowComparison) -> None:
        labels = (shadow.model, shadow.version)
        SHADOW_COMPARED.labels(*labels).inc(shadow.compared)
        SHADOW_AGREEMENTS.labels(*labels).inc(shadow.label_agreements)
        SHADOW_DIFF.labels(*labels).inc(shadow.abs_diff_sum)
        SHADOW_DIFF_MAX.labels(*labels).set(shadow.abs_diff_max)
