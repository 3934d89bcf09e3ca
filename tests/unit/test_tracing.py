"""Batch spans from the runner's hooks: shape, links, sampling, errors; the export queue and the
Kafka span exporter (with a stand-in producer; the real topic is tested in integration)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, set_span_in_context

from worker.errors import FeatureStoreUnavailable
from worker.kafka.port import Fault
from worker.records import BatchResult, DeadLetter, Delivery, InputMessage, Output, StageTiming
from worker.telemetry.context import parse_traceparent
from worker.telemetry.kafka_exporter import KafkaSpanExporter
from worker.telemetry.tracing import BatchSampler, BatchTracer, QueueSpanProcessor, tracer_provider

STAGES = ("decode", "features", "assemble", "inference", "encode", "produce")


class Traced:
    """A tracer on an in-memory exporter, and the runner's calls for one batch."""

    def __init__(self, ratio: float = 1.0, follow_upstream: bool = True, max_links: int = 128) -> None:
        self.exporter = InMemorySpanExporter()
        self.processor = QueueSpanProcessor(self.exporter, interval_s=60)
        provider = tracer_provider(self.processor, "test-service", "9.9", max_links)
        self.tracer = BatchTracer(provider.get_tracer("test"), BatchSampler(ratio, follow_upstream, lambda: 0.5),
                                  "group", "out", max_links)

    def run_batch(self, batch: Sequence[InputMessage], dead: Sequence[DeadLetter] = (),
                  acked: bool = True) -> tuple[list[tuple[str, str | bytes | None]] | None, BatchResult]:
        received = time.perf_counter_ns()
        headers = self.tracer.batch_started(batch, received)
        result = BatchResult(model_name="fraud", model_version="7")
        result.outputs = [Output(None, b"p", m) for m in batch if all(d.message is not m for d in dead)]
        result.dead_letters = list(dead)
        at = received
        for stage in STAGES:
            result.timings.append(StageTiming(stage, at + 1000, at + 2000))
            at += 2000
        ticket = Delivery(len(batch), consumed_ns=received)
        ticket.published_ns = at
        self.tracer.batch_done(batch, result, ticket)
        if acked:
            ticket.acked_ns = at + 5000
        return headers, result

    def checkpoint(self, committed: bool = True) -> None:
        now = time.perf_counter_ns()
        self.tracer.checkpoint_done(StageTiming("commit", now, now + 1000), committed)

    def spans(self) -> list[ReadableSpan]:
        self.processor.force_flush()
        return list(self.exporter.get_finished_spans())


def upstream(i: int, flags: str = "01") -> tuple[str, bytes]:
    return "traceparent", f"00-{i:032x}-{i:016x}-{flags}".encode()


def batch_of(n: int, flags: str = "01", partition: int = 0, first: int = 1) -> list[InputMessage]:
    """Events at offsets 100... each with its own upstream context (ids ``first``, ``first + 1``, ...)."""
    return [InputMessage(b"v", None, "in", partition, 100 + i, [upstream(first + i, flags)]) for i in range(n)]


def by_name(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def test_a_batch_span_links_its_events_and_parents_its_stages() -> None:
    t = Traced()
    batch = batch_of(3)
    headers, _ = t.run_batch(batch)
    assert t.spans() == [s for s in t.spans() if s.name != "process in"], "the batch span ends at the commit"
    t.checkpoint()
    spans = by_name(t.spans())

    root = spans["process in"]
    assert root.kind is SpanKind.CONSUMER and root.parent is None
    assert headers is not None
    parsed = parse_traceparent(headers[0][1])
    assert parsed is not None and parsed.sampled
    assert (parsed.trace_id, parsed.span_id) == (root.context.trace_id, root.context.span_id)
    assert [(link.context.trace_id, link.context.span_id) for link in root.links] == [(1, 1), (2, 2), (3, 3)]
    assert dict(root.attributes or {}) == {
        "messaging.system": "kafka", "messaging.operation.type": "process", "messaging.operation.name": "process",
        "messaging.consumer.group.name": "group", "messaging.batch.message_count": 3,
        "messaging.destination.name": "in", "messaging.destination.partition.id": "0",
        "worker.kafka.offsets": ("in[0]@100-102",), "worker.links_dropped": 0,
        "worker.model.name": "fraud", "worker.model.version": "7", "worker.outputs": 3, "worker.dead_letters": 0}
    assert set(spans) == {"process in", *STAGES, "deliver", "commit"}
    for name, span in spans.items():
        if name != "process in":
            assert span.parent is not None and span.parent.span_id == root.context.span_id
            assert span.context.trace_id == root.context.trace_id
            assert root.start_time is not None and span.start_time is not None and span.end_time is not None
            assert root.start_time <= span.start_time <= span.end_time <= (root.end_time or 0), name
    assert spans["features"].kind is SpanKind.CLIENT and spans["produce"].kind is SpanKind.PRODUCER
    assert spans["inference"].attributes == {"worker.model.name": "fraud", "worker.model.version": "7"}
    assert (spans["produce"].attributes or {})["messaging.destination.name"] == "out"
    assert root.resource.attributes["service.name"] == "test-service"


def test_stage_times_keep_their_intervals_in_epoch_time() -> None:
    t = Traced()
    t.run_batch(batch_of(1))
    t.checkpoint()
    spans = by_name(t.spans())
    for stage in STAGES:
        span = spans[stage]
        assert span.end_time is not None and span.start_time is not None
        assert span.end_time - span.start_time == 1000
        assert abs(span.start_time - time.time_ns()) < 60e9


def test_dead_letters_are_exception_events_on_the_stage_that_failed() -> None:
    t = Traced()
    batch = batch_of(4)
    dead = [DeadLetter(batch[1], "decode", "not Avro", "EOFError"), DeadLetter(batch[3], "inference", "NaN", "X")]
    t.run_batch(batch, dead)
    t.checkpoint()
    spans = by_name(t.spans())
    decode = spans["decode"]
    assert decode.status.status_code is StatusCode.ERROR
    assert [(e.name, dict(e.attributes or {})) for e in decode.events] == [("exception", {
        "exception.type": "EOFError", "exception.message": "not Avro",
        "messaging.destination.partition.id": "0", "messaging.kafka.offset": 101})]
    assert spans["inference"].status.status_code is StatusCode.ERROR
    assert spans["encode"].status.status_code is StatusCode.UNSET
    assert spans["process in"].attributes is not None and spans["process in"].attributes["worker.dead_letters"] == 2


def test_failures_to_deliver_or_commit_are_errors() -> None:
    t = Traced()
    t.run_batch(batch_of(2), acked=False)
    t.checkpoint(committed=False)
    spans = t.spans()
    named = by_name(spans)
    assert named["deliver"].status.status_code is StatusCode.ERROR
    assert named["commit"].status.status_code is StatusCode.ERROR
    assert "not committed" in (named["commit"].status.description or "")


def test_a_dependency_outage_is_an_exception_event_on_the_batch_span() -> None:
    t = Traced()
    batch = batch_of(2)
    t.tracer.batch_started(batch, time.perf_counter_ns())
    t.tracer.dependency_down("redis", FeatureStoreUnavailable("Redis at x: refused"))
    t.tracer.stopped()  # the batch was never done: its span ends as abandoned
    (span,) = t.spans()
    assert span.attributes is not None and span.attributes["worker.batch.abandoned"] is True
    (event,) = span.events
    assert event.name == "exception" and event.attributes is not None
    assert str(event.attributes["exception.type"]).endswith("FeatureStoreUnavailable")
    assert event.attributes["worker.dependency"] == "redis"


def test_links_beyond_the_limit_are_counted() -> None:
    t = Traced(max_links=2)
    t.run_batch(batch_of(5))
    t.checkpoint()
    root = by_name(t.spans())["process in"]
    assert len(root.links) == 2
    assert root.attributes is not None and root.attributes["worker.links_dropped"] == 3


class NoHeaders(InputMessage):
    def headers(self) -> Any:
        raise AssertionError("headers must not be read for a batch that is not traced")


def test_an_unsampled_batch_costs_no_span_no_header_and_no_header_read() -> None:
    t = Traced(ratio=0.1, follow_upstream=False)  # the draw is 0.5: not sampled
    batch = [NoHeaders(b"v", None, "in", 0, i) for i in range(3)]
    headers, _ = t.run_batch(batch)
    t.checkpoint()
    assert headers is None
    assert t.spans() == []


def test_a_sampled_upstream_context_is_followed_and_an_unsampled_one_is_not() -> None:
    t = Traced(ratio=0.0)
    assert t.run_batch(batch_of(3, flags="00"))[0] is None
    assert t.run_batch([*batch_of(2, flags="00"), *batch_of(1, flags="01", partition=1, first=9)])[0] is not None
    t.checkpoint()
    (root,) = [s for s in t.spans() if s.name.startswith("process")]
    assert len(root.links) == 3 and "messaging.destination.partition.id" not in (root.attributes or {})
    assert Traced(ratio=0.0, follow_upstream=False).run_batch(batch_of(3, flags="01"))[0] is None


def test_a_batch_not_done_is_ended_when_the_next_starts() -> None:
    t = Traced()
    t.tracer.batch_started(batch_of(1), time.perf_counter_ns())
    t.run_batch(batch_of(2))
    t.checkpoint()
    abandoned = [s for s in t.spans() if (s.attributes or {}).get("worker.batch.abandoned")]
    assert len(abandoned) == 1 and abandoned[0].attributes is not None
    assert abandoned[0].attributes["messaging.batch.message_count"] == 1


class BlockedExporter(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.exported: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(10)
        self.exported += spans
        return SpanExportResult.SUCCESS


def test_a_full_export_queue_drops_and_counts_instead_of_blocking() -> None:
    exporter = BlockedExporter()
    counts: dict[str, int] = {}
    processor = QueueSpanProcessor(exporter, max_queue=5, interval_s=0.01, max_batch=1,
                                   count=lambda outcome, n: counts.__setitem__(outcome, counts.get(outcome, 0) + n))
    provider = tracer_provider(processor, "s", "1")
    tracer = provider.get_tracer("t")
    tracer.start_span("first").end()
    assert exporter.entered.wait(5), "the export thread took the first span"
    for i in range(20):
        tracer.start_span(f"span {i}").end()  # returns although the exporter is stuck
    assert counts == {"dropped": 15}
    exporter.release.set()
    processor.shutdown()
    assert len(exporter.exported) == 6
    assert counts == {"dropped": 15, "exported": 6}


class StubProducer:
    """Records what the exporter produces; ``full`` makes produce raise BufferError."""

    def __init__(self, full: bool = False) -> None:
        self.full = full
        self.produced: list[tuple[str, bytes, bytes, Any]] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any = None) -> None:
        if self.full:
            raise BufferError("queue full")
        self.produced.append((topic, value, key, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0


def finished_spans(traces: int, per_trace: int) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    processor = QueueSpanProcessor(exporter, interval_s=60)
    tracer = tracer_provider(processor, "s", "1").get_tracer("t")
    for i in range(traces):
        root = tracer.start_span(f"root {i}", attributes={"padding": "x" * 200})
        for j in range(per_trace - 1):
            tracer.start_span(f"child {i}.{j}", set_span_in_context(root), attributes={"padding": "x" * 200}).end()
        root.end()
    processor.force_flush()
    return list(exporter.get_finished_spans())


def decoded_names(value: bytes) -> set[str]:
    request = ExportTraceServiceRequest.FromString(value)
    return {s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}


def test_the_kafka_exporter_writes_one_otlp_request_per_trace_keyed_by_trace_id() -> None:
    producer = StubProducer()
    spans = finished_spans(traces=3, per_trace=4)
    exporter = KafkaSpanExporter(producer, "otlp_spans")  # type: ignore[arg-type]

    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert len(producer.produced) == 3
    for topic, value, key, _ in producer.produced:
        request = ExportTraceServiceRequest.FromString(value)
        trace_ids = {s.trace_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}
        assert topic == "otlp_spans" and trace_ids == {key.decode()}
        assert len(decoded_names(value)) == 4


def test_a_trace_too_large_for_one_message_is_split() -> None:
    producer = StubProducer()
    spans = finished_spans(traces=1, per_trace=8)
    exporter = KafkaSpanExporter(producer, "t", max_message_bytes=1000)  # type: ignore[arg-type]
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert len(producer.produced) > 1
    assert all(len(value) <= 1000 for _, value, _, _ in producer.produced)
    names = [n for _, value, _, _ in producer.produced for n in decoded_names(value)]
    assert sorted(names) == sorted(s.name for s in spans)


def test_a_full_producer_fails_the_export_and_delivery_errors_are_counted() -> None:
    spans = finished_spans(traces=1, per_trace=2)
    assert KafkaSpanExporter(StubProducer(full=True), "t").export(spans) is SpanExportResult.FAILURE  # type: ignore[arg-type]
    counted: list[tuple[str, int]] = []
    producer = StubProducer()
    exporter = KafkaSpanExporter(producer, "t", count=lambda outcome, n: counted.append((outcome, n)))  # type: ignore[arg-type]
    exporter.export(spans)
    on_delivery = producer.produced[0][3]
    on_delivery(Fault("timed out", "_MSG_TIMED_OUT"), None)
    assert counted == [("undelivered", 2)]


@pytest.mark.parametrize("ratio, draw, sampled", [(0.0, 0.0, False), (1.0, 0.999, True), (0.01, 0.005, True),
                                                  (0.01, 0.02, False)])
def test_the_ratio_decides_for_batches_without_upstream_contexts(ratio: float, draw: float, sampled: bool) -> None:
    assert BatchSampler(ratio, True, lambda: draw).sampled([InputMessage(b"v")]) is sampled
