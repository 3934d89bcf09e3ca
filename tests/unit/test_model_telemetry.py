"""Per-version model metrics on Prometheus' default registry."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from worker.inference import FunctionModel, TensorInfo
from worker.lifecycle import metrics as telemetry
from worker.records import BatchResult, Delivery, ModelRun, ShadowComparison
from worker.serving import Serving


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_each_run_is_counted_by_version_and_role() -> None:
    model = f"m-{uuid.uuid4().hex[:6]}"
    result = BatchResult()
    result.runs += [ModelRun("active", model, "1", 90, 0, 0.002), ModelRun("canary", model, "2", 10, 1, 0.001),
                    ModelRun("active", model, "1", 1, 0, 0.0005)]
    result.shadow = ShadowComparison(model, "3", 100, 97, 1.5, 0.25)

    telemetry.ModelMetrics().batch_done([], result, Delivery(0))

    assert value("worker_model_events_total", model=model, version="1", role="active") == 91
    assert value("worker_model_events_total", model=model, version="2", role="canary") == 10
    assert value("worker_model_errors_total", model=model, version="2", role="canary") == 1
    assert value("worker_model_inference_seconds_count", model=model, version="1", role="active") == 2
    assert value("worker_model_shadow_compared_total", model=model, version="3") == 100
    assert value("worker_model_shadow_label_agreements_total", model=model, version="3") == 97
    assert value("worker_model_shadow_abs_score_diff_total", model=model, version="3") == pytest.approx(1.5)
    assert value("worker_model_shadow_max_abs_score_diff", model=model, version="3") == 0.25


def test_what_serves_is_a_gauge_per_version_and_role() -> None:
    def model(version: str) -> FunctionModel:
        return FunctionModel(lambda feeds: {}, [TensorInfo("x", "float32", (None, 1))], [], "g", version)

    telemetry.serving_changed(Serving(model("1"), model("2"), 0.1, model("3"), revision=7))
    assert value("worker_model_serving", model="g", version="2", role="canary") == 1
    assert value("worker_model_canary_share", model="g") == 0.1
    assert value("worker_model_control_revision", model="g") == 7

    telemetry.serving_changed(Serving(model("2"), revision=8))
    assert value("worker_model_serving", model="g", version="2", role="active") == 1
    assert value("worker_model_serving", model="g", version="2", role="canary") is None
    assert value("worker_model_canary_share", model="g") == 0
