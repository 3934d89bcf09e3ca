"""Prometheus metrics from the runner's hooks: exact counts, per-stage histograms, event age,
consumer lag in messages and seconds, Kafka client errors."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.support.telemetry import metric_samples, total
from worker.errors import FeatureStoreUnavailable
from worker.kafka.port import Fault
from worker.records import BatchResult, DeadLetter, Delivery, InputMessage, Output, StageTiming
from worker.runner.stall import OUTPUT_HELD, Stall
from worker.telemetry.metrics import ConsumerLag, Metrics, WeightedHistogram


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def batch_of(n: int, partition: int = 0, first_offset: int = 0, timestamp_ms: int = 0,
             topic: str = "in") -> list[InputMessage]:
    return [InputMessage(b"v", None, topic, partition, first_offset + i, None, (1, timestamp_ms or 1))
            for i in range(n)]


def result_for(batch: Sequence[InputMessage], dead: Sequence[DeadLetter] = (), version: str = "1",
               defaults: dict[str, int] | None = None) -> BatchResult:
    result = BatchResult(model_name="m", model_version=version)
    dead_messages = {id(d.message) for d in dead}
    result.outputs = [Output(None, b"p", m) for m in batch if id(m) not in dead_messages]
    result.dead_letters = list(dead)
    result.timings = [StageTiming(s, 0, 1_000_000) for s in ("decode", "features", "inference")]
    result.feature_defaults = defaults or {}
    result.events = [{"t": 1_000} for _ in batch]
    return result


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return metric_samples(generate_latest(registry).decode())


def feed(metrics: Metrics, batch: Sequence[InputMessage], result: BatchResult) -> None:
    delivery = Delivery(len(batch), consumed_ns=1_000, published_ns=3_000_000, acked_ns=5_000_000)
    metrics.batch_started(batch, 1_000)
    metrics.batch_done(batch, result, delivery)
    metrics.batch_acked(delivery)


def test_counts_are_exact_per_batch_stage_and_reason() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, "0.1.0")
    first, second = batch_of(100), batch_of(7, first_offset=100)
    dead = [DeadLetter(second[0], "decode", "bad", "EOFError"), DeadLetter(second[3], "features", "bad", "ValueError")]
    feed(metrics, first, result_for(first, defaults={"card": 3, "merchant": 0}))
    explained = result_for(second, dead, defaults={"card": 2})
    explained.explained, explained.explain_failures = 4, 1
    feed(metrics, second, explained)
    metrics.checkpoint_done(StageTiming("commit", 0, 2_000_000), committed=False)

    s = samples(registry)
    assert total(s, "worker_events_consumed_total") == 107
    assert total(s, "worker_predictions_total") == 105
    assert total(s, "worker_dead_letters_total", stage="decode", error_type="EOFError") == 1
    assert total(s, "worker_dead_letters_total", stage="features") == 1
    assert total(s, "worker_batch_size_count") == 2 and total(s, "worker_batch_size_sum") == 107
    assert total(s, "worker_stage_duration_seconds_count", stage="inference") == 2
    assert total(s, "worker_stage_duration_seconds_sum", stage="inference") == pytest.approx(0.002)
    assert total(s, "worker_stage_duration_seconds_sum", stage="deliver") == pytest.approx(0.004)
    assert total(s, "worker_stage_duration_seconds_count", stage="commit") == 1
    assert total(s, "worker_added_latency_seconds_sum") == pytest.approx(2 * 0.004999)
    assert total(s, "worker_feature_defaults_total", entity="card") == 5
    assert ("worker_feature_defaults_total", (("entity", "merchant"),)) not in s
    assert total(s, "worker_commit_failures_total") == 1
    assert total(s, "worker_explanations_total", outcome="explained") == 4
    assert total(s, "worker_explanations_total", outcome="failed") == 1
    assert total(s, "worker_info", worker_version="0.1.0", model_name="m", model_version="1") == 1
    assert total(s, "process_cpu_seconds_total") > 0


def test_the_model_info_follows_a_swap() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    batch = batch_of(2)
    feed(metrics, batch, result_for(batch, version="1"))
    feed(metrics, batch, result_for(batch, version="2"))
    s = samples(registry)
    assert total(s, "worker_info", model_version="2") == 1
    assert total(s, "worker_info", model_version="1") == 0 and total(s, "worker_info") == 1


def test_event_age_counts_every_event_from_a_few_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    monkeypatch.setattr("worker.telemetry.metrics.time.time", lambda: 100.0)
    batch = batch_of(1000, timestamp_ms=99_000)  # 1 s old
    feed(metrics, batch, result_for(batch))
    untimed = [InputMessage(b"v", None, "in", 0, 5, None, (0, 0))]  # no timestamp: not counted
    feed(metrics, untimed, result_for(untimed))
    s = samples(registry)
    assert total(s, "worker_event_age_seconds_count") == 1000
    assert total(s, "worker_event_age_seconds_sum") == pytest.approx(1000.0)
    assert total(s, "worker_event_age_seconds_bucket", le="0.5") == 0
    assert total(s, "worker_event_age_seconds_bucket", le="1.0") == 1000


def test_event_age_can_come_from_an_event_field(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, event_time_field="t", event_time_unit="s")
    monkeypatch.setattr("worker.telemetry.metrics.time.time", lambda: 1_030.0)
    batch = batch_of(10)
    feed(metrics, batch, result_for(batch))  # events hold t = 1000 s
    assert total(samples(registry), "worker_event_age_seconds_sum") == pytest.approx(300.0)


def test_a_weighted_histogram_is_cumulative() -> None:
    registry = CollectorRegistry()
    histogram = WeightedHistogram("h_seconds", "doc", (1.0, 2.0), registry)
    histogram.observe(0.5, 3)
    histogram.observe(1.5, 2)
    histogram.observe(9.0)
    s = samples(registry)
    assert [total(s, "h_seconds_bucket", le=le) for le in ("1.0", "2.0", "+Inf")] == [3, 5, 6]
    assert total(s, "h_seconds_sum") == pytest.approx(0.5 * 3 + 1.5 * 2 + 9)


def test_stale_lookups_and_feature_ages_per_entity() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    batch = batch_of(4)
    first, second = result_for(batch), result_for(batch)
    first.feature_stale, first.feature_ages = {"card": 2}, {"card": np.array([5.0, 30.0, 7200.0, 7200.0])}
    second.feature_stale, second.feature_ages = {"card": 0}, {"card": np.array([0.5]), "device": np.array([90.0])}

    feed(metrics, batch, first)
    feed(metrics, batch, second)

    s = samples(registry)
    assert total(s, "worker_feature_stale_total", entity="card") == 2
    assert ("worker_feature_stale_total", (("entity", "device"),)) not in s, "only entities with a max_age_s"
    card = [total(s, "worker_feature_age_seconds_bucket", entity="card", le=le) for le in ("1.0", "60.0", "3600.0",
                                                                                           "10800.0", "+Inf")]
    assert card == [1, 3, 3, 5, 5]
    assert total(s, "worker_feature_age_seconds_count", entity="device") == 1
    assert total(s, "worker_feature_age_seconds_sum", entity="card") == pytest.approx(14435.5)


def test_expired_events_by_action() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    batch = batch_of(5)
    result = result_for(batch)
    result.expired = {"dead-letter": 3}

    feed(metrics, batch, result)
    feed(metrics, batch, result)

    assert total(samples(registry), "worker_events_expired_total", action="dead-letter") == 6


def stats(*partitions: tuple[int, int, int]) -> dict[str, object]:
    """librdkafka statistics for topic ``in``: (partition, hi_offset, committed_offset) each."""
    return {"topics": {"in": {"partitions": {
        str(p): {"hi_offset": hi, "committed_offset": committed} for p, hi, committed in partitions} | {
        "-1": {"hi_offset": -1, "committed_offset": -1001}}}}}


def test_lag_before_anything_is_known_is_absent() -> None:
    lag = ConsumerLag(clock=Clock())
    lag.assigned([("in", 0)])
    assert lag.values() == [(("in", 0), None, None)]


def test_lag_follows_processing_idle_polls_and_statistics() -> None:
    clock = Clock(1_000.0)
    lag = ConsumerLag(clock=clock)
    lag.assigned([("in", 0), ("in", 1)])
    lag.statistics(stats((0, 500, 100), (1, 50, 50)))
    assert lag.values() == [(("in", 0), 400, None), (("in", 1), 0, 0.0)], "from committed offsets until events come"

    lag.busy()
    lag.processed(batch_of(100, partition=0, first_offset=100, timestamp_ms=990_000))
    clock.now = 1_004.0
    (tp, messages, seconds), _ = lag.values()
    assert (tp, messages) == (("in", 0), 300) and seconds == pytest.approx(14.0), "behind: the last event's age"

    lag.statistics(stats((0, 200, 100), (1, 50, 50)))  # statistics since then: nothing more on partition 0
    assert lag.values()[0] == (("in", 0), 0, 0.0)

    lag.busy()  # a batch of partition 1 arrives; partition 0 is no longer known to be caught up...
    lag.processed(batch_of(10, partition=1, first_offset=50, timestamp_ms=1_003_000))
    clock.now = 1_005.0
    first, second = lag.values()
    assert first == (("in", 0), 0, 0.0), "...but statistics taken after its last event show nothing waiting"
    assert second[:2] == (("in", 1), 0) and second[2] == pytest.approx(2.0)
    lag.idle()
    assert lag.values() == [(("in", 0), 0, 0.0), (("in", 1), 0, 0.0)]

    lag.revoked([("in", 1)])
    assert [tp for tp, _, _ in lag.values()] == [("in", 0)]


def test_a_held_batch_shows_growing_lag_in_seconds() -> None:
    clock = Clock(1_000.0)
    lag = ConsumerLag(clock=clock)
    lag.assigned([("in", 0)])
    lag.busy()
    lag.processed(batch_of(5, timestamp_ms=999_000))
    lag.idle()
    assert lag.values()[0][2] == 0.0
    lag.busy()  # the next batch is held (Redis down): it is never processed
    clock.now = 1_060.0
    assert lag.values()[0][2] == pytest.approx(61.0)


def test_lag_metrics_by_topic_and_partition() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.partitions_changed([("in", 0), ("in", 1)], [])
    metrics.kafka_statistics(json.dumps(stats((0, 20, -1001), (1, 7, 7))))
    metrics.kafka_statistics("not json")
    batch = batch_of(10, partition=0)
    feed(metrics, batch, result_for(batch))
    metrics.idle()
    s = samples(registry)
    assert total(s, "worker_consumer_lag_messages", topic="in", partition="0") == 10
    assert total(s, "worker_consumer_lag_messages", topic="in", partition="1") == 0
    assert total(s, "worker_consumer_lag_seconds") == 0
    assert total(s, "worker_assigned_partitions") == 2
    metrics.partitions_changed([], [("in", 1)])
    s = samples(registry)
    assert total(s, "worker_assigned_partitions") == 1
    assert total(s, "worker_rebalances_total", change="assigned") == 1
    assert total(s, "worker_rebalances_total", change="revoked") == 1


def test_dependency_and_kafka_errors_are_counted_and_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.dependency_down("redis", FeatureStoreUnavailable("x"))
    on_error = metrics.kafka_errors_of("consumer")
    for _ in range(3):
        on_error(Fault("broker down", "_TRANSPORT"))
    s = samples(registry)
    assert total(s, "worker_dependency_errors_total", dependency="redis") == 1
    assert total(s, "worker_kafka_errors_total", client="consumer", error="_TRANSPORT") == 3
    assert [r.getMessage() for r in caplog.records] == ["Kafka consumer error: broker down"]


def test_stalled_partitions_are_counted_by_reason_and_cleared_when_reading_resumes() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    assert total(samples(registry), "worker_stalled_partitions", reason="open_transaction") == 0
    metrics.stalled([Stall(("in", 0), "open_transaction", ""), Stall(("in", 1), "open_transaction", ""),
                     Stall(("in", 2), "no_fetch_position", "")])
    s = samples(registry)
    assert total(s, "worker_stalled_partitions", reason="open_transaction") == 2
    assert total(s, "worker_stalled_partitions", reason="no_fetch_position") == 1
    assert total(s, "worker_stalled_partitions", reason="not_fetched") == 0
    metrics.stalled([])
    assert total(samples(registry), "worker_stalled_partitions") == 0


def test_held_output_partitions_are_counted_and_cleared_when_the_transaction_ends() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    assert total(samples(registry), "worker_held_output_partitions") == 0
    metrics.outputs_held([Stall(("out", 0), OUTPUT_HELD, ""), Stall(("dlq", 0), OUTPUT_HELD, "")])
    assert total(samples(registry), "worker_held_output_partitions") == 2
    metrics.outputs_held([])
    assert total(samples(registry), "worker_held_output_partitions") == 0
