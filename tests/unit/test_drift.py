"""Drift in the worker: the pipeline hands over what the model saw and said, and the drift monitor
keeps each model version's window apart and exports PSI, defaults and null shares."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_model_router import pipeline_with, versioned
from tests.unit.test_pipeline import POISON_AMOUNT, payment
from worker.pipeline.assembly import ConstColumn, EventColumn, FeatureColumn, TensorSpec
from worker.pipeline.names import NamedColumn, named_columns
from worker.quality.bins import Bins, psi
from worker.quality.reference import Reference
from worker.records import BatchResult, Delivery
from worker.serving import Serving, canary_mask
from worker.telemetry.drift import RETIRED_AFTER_S, SCORE, DriftMonitor, VersionWindow

AMOUNT = Bins(np.array([50.0, 100.0, 150.0]), np.array([0.25, 0.25, 0.25, 0.25]))
COUNT = Bins(np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.3, 0.3, 0.3]))
SCORES = Bins(np.array([0.5, 0.9]), np.array([0.2, 0.4, 0.4]))
REFERENCE = Reference({"amount": AMOUNT, "card.count": COUNT}, SCORES)
COLUMNS = [NamedColumn("x", 0, "amount"), NamedColumn("x", 1, "card.count")]


def samples(monitor: DriftMonitor) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    monitor.register(registry)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode()) for s in family.samples}


def run(monitor: DriftMonitor, serving: Serving, messages: list[Any]) -> BatchResult:
    result = pipeline_with(serving).process(messages)
    monitor.batch_done(messages, result, Delivery(len(messages)))
    return result


def test_features_are_named_by_the_card_or_by_their_source() -> None:
    tensors = [TensorSpec("x", "float32", (EventColumn("amount"), FeatureColumn("card", "count", 0),
                                           ConstColumn(1.0))),
               TensorSpec("tier", "string", (EventColumn("tier"),)), TensorSpec("n", "int64", (EventColumn("n"),), 1)]
    assert [(c.tensor, c.column, c.name) for c in named_columns(tensors, None)] == [
        ("x", 0, "amount"), ("x", 1, "card.count"), ("n", None, "n")]
    single = tensors[:1]
    assert [c.name for c in named_columns(single, ["a", "b", "c"])] == ["a", "b", "c"]
    assert [c.name for c in named_columns(single, ["a", "b"])] == ["amount", "card.count"], "widths differ"


def test_each_version_has_its_own_window_of_the_rows_it_scored() -> None:
    monitor = DriftMonitor(COLUMNS, lambda name, version: REFERENCE, window_events=1000, min_events=10,
                           entity_widths={"card": 1})
    messages = [payment(i, card=f"k{i}") for i in range(200)]
    result = run(monitor, Serving(versioned("1", 1.0), versioned("2", 0.5), 0.5), messages)

    to_canary = canary_mask([f"k{i}".encode() for i in range(200)], 0.5)
    got = samples(monitor)
    for version, rows in (("2", to_canary), ("1", ~to_canary)):
        amounts = np.arange(200, dtype=np.float64)[rows]
        labels = (("feature", "amount"), ("model_name", "twin"), ("model_version", version))
        want = psi(np.bincount(AMOUNT.index(amounts), minlength=4), AMOUNT.shares)
        assert got[("worker_feature_psi", labels)] == pytest.approx(want)
        assert got[("worker_drift_window_events", labels[1:])] == rows.sum()
    scored = result.scored
    assert scored is not None and scored.groups is not None
    published = np.asarray(scored.scores)[scored.groups[("twin", "2")]]
    want = psi(np.bincount(SCORES.index(published), minlength=3), SCORES.shares)
    assert got[("worker_score_psi", (("model_name", "twin"), ("model_version", "2")))] == pytest.approx(want)


def test_dead_lettered_events_stay_out_and_psi_waits_for_enough_events() -> None:
    monitor = DriftMonitor(COLUMNS, lambda name, version: REFERENCE, window_events=1000, min_events=50,
                           entity_widths={"card": 1})
    messages = [payment(i, amount=POISON_AMOUNT if i % 10 == 0 else None) for i in range(40)]
    run(monitor, Serving(versioned("1", 1.0)), messages)

    got = samples(monitor)
    assert got[("worker_drift_window_events", (("model_name", "twin"), ("model_version", "1")))] == 36
    assert not [k for k in got if k[0] == "worker_feature_psi"], "36 events < min_events: no PSI yet"
    run(monitor, Serving(versioned("1", 1.0)), [payment(i) for i in range(40, 60)])
    assert ("worker_feature_psi", (("feature", "amount"), ("model_name", "twin"), ("model_version", "1"))) \
        in samples(monitor)


def test_defaults_and_nulls_are_shares_of_the_window() -> None:
    monitor = DriftMonitor(COLUMNS, lambda name, version: None, window_events=100, min_events=10,
                           entity_widths={"card": 1})
    messages = [payment(i, card="nohash" if i < 5 else None) for i in range(20)]
    run(monitor, Serving(versioned("1", 1.0)), messages)

    got = samples(monitor)
    assert got[("worker_feature_default_share", (("entity", "card"),))] == pytest.approx(5 / 20)
    assert got[("worker_event_field_null_share", (("field", "amount"),))] == 0
    assert not [k for k in got if k[0] == "worker_drift_window_events"], "no reference: no window"


def test_snapshots_are_published_on_their_interval_with_counts_and_bins() -> None:
    published: list[list[dict[str, Any]]] = []
    now = [0.0]
    monitor = DriftMonitor(COLUMNS, lambda name, version: REFERENCE, 1000, 10, {"card": 1},
                           publish=published.append, snapshot_interval_s=60, clock=lambda: now[0])
    run(monitor, Serving(versioned("1", 1.0)), [payment(i) for i in range(30)])
    assert not published
    now[0] = 61.0
    monitor.idle()
    ((window,),) = published
    assert window["events"] == 30 and set(window["columns"]) == {"amount", "card.count", SCORE}
    assert sum(window["columns"]["amount"]["counts"]) == 30
    assert window["columns"]["amount"]["bins"] == AMOUNT.to_json()


def test_a_version_that_stopped_scoring_is_no_longer_exported() -> None:
    now = [0.0]
    monitor = DriftMonitor(COLUMNS, lambda name, version: REFERENCE, 1000, 10, {"card": 1}, clock=lambda: now[0])
    run(monitor, Serving(versioned("1", 1.0)), [payment(i) for i in range(30)])
    now[0] = RETIRED_AFTER_S / 2
    run(monitor, Serving(versioned("2", 1.0)), [payment(i) for i in range(30)])  # promoted: v1 scores no more
    now[0] = RETIRED_AFTER_S + 1
    versions = {dict(labels)["model_version"] for name, labels in samples(monitor) if name == "worker_feature_psi"}
    assert versions == {"2"}
    assert [s["model_version"] for s in monitor.snapshot()] == ["2"]


def test_small_batches_are_binned_a_thousand_at_a_time_and_reads_see_every_one() -> None:
    """Binning is deferred for cost; what a scrape sees is still the exact window of the last events."""
    monitor = DriftMonitor(COLUMNS, lambda name, version: REFERENCE, window_events=300, min_events=10,
                           entity_widths={"card": 1})
    serving = Serving(versioned("1", 1.0))
    amounts: list[float] = []
    for start in range(0, 1400, 7):  # 200 batches of 7
        run(monitor, serving, [payment(i, amount=float(i % 211)) for i in range(start, start + 7)])
        amounts += [float(i % 211) for i in range(start, start + 7)]
        window = monitor.windows[("twin", "1")]
        assert window is not None and window.window is not None
        assert window.window.filled == (300 if len(amounts) >= VersionWindow.BIN_EVERY else 0), \
            "binned once a thousand events wait, not before"

    labels = (("feature", "amount"), ("model_name", "twin"), ("model_version", "1"))
    want = psi(np.bincount(AMOUNT.index(np.array(amounts[-300:])), minlength=4), AMOUNT.shares)
    got = samples(monitor)
    assert got[("worker_feature_psi", labels)] == pytest.approx(want)
    assert got[("worker_drift_window_events", labels[1:])] == 300
    assert sum(monitor.snapshot()[0]["columns"]["amount"]["counts"]) == 300
