"""Batch spans: one span per batch, linked to its events' upstream traces, with a child span per
stage, built after the fact from the timings the loop already takes.

The shape follows OpenTelemetry's messaging conventions for batch consumers. A batch mixes
events of many traces, so its span is the root of a trace of its own and *links* to each
event's ``traceparent`` (never a parent: a parent would claim every other event's work for one
producer's trace). Outputs and dead letters carry the batch span's ``traceparent``, so the
consumer of the predictions continues the worker's trace, which links back to the producers.

Sampling is decided before anything else, per batch: a fraction ``ratio`` of batches, plus every
batch with an event whose ``traceparent`` is sampled (the producer's decision is honoured
across the hop). Child spans follow their batch. A batch that is not sampled costs one random
draw and, when following upstream decisions, one header look-up per event; no span is made
and no header written.

The batch span starts when its first event was received and ends when its offsets are
committed: its children are the stages (``decode``, ``features``, ``assemble``, ``inference``,
``encode``, ``produce``), ``deliver`` (until the broker acknowledged the last output) and
``commit``. Stage times are ``perf_counter_ns`` values converted to epoch time once per batch.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Span as ApiSpan
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.util.types import Attributes

from worker.errors import StartupError
from worker.records import BatchResult, DeadLetter, Delivery, Headers, Message, StageTiming
from worker.runner.observer import Observer
from worker.telemetry.context import any_sampled, context_headers, describe_ranges, offset_ranges, upstream_links
from worker.telemetry.logcontext import annotate_trace

logger = logging.getLogger(__name__)

Count = Callable[[str, int], None]


def _ignore(outcome: str, n: int) -> None:
    """The span counter when metrics are off."""


class QueueSpanProcessor(SpanProcessor):
    """Hands finished spans to an exporter on a background thread. ``on_end`` never blocks: when
    ``max_queue`` spans are waiting, a new one is dropped and counted (``count("dropped", 1)``)."""

    def __init__(self, exporter: SpanExporter, max_queue: int = 2048, interval_s: float = 0.5,
                 max_batch: int = 512, count: Count | None = None) -> None:
        self.exporter = exporter
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.interval_s = interval_s
        self.count = count or _ignore
        self._queue: deque[ReadableSpan] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._export_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="span-export", daemon=True)
        self._thread.start()

    def on_end(self, span: ReadableSpan) -> None:
        queue = self._queue
        if len(queue) >= self.max_queue:
            self.count("dropped", 1)
            return
        queue.append(span)
        if len(queue) >= self.max_batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._drain()

    def _drain(self) -> None:
        with self._export_lock:
            queue = self._queue
            while queue:
                spans = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
                try:
                    result = self.exporter.export(spans)
                except Exception as exc:  # an exporter bug must not kill the export thread
                    logger.warning("span export failed: %s", exc)
                    result = SpanExportResult.FAILURE
                self.count("exported" if result is SpanExportResult.SUCCESS else "failed", len(spans))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self._drain()
        return self.exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)
        self._drain()
        self.exporter.shutdown()


def tracer_provider(processor: SpanProcessor, service_name: str, service_version: str,
                    max_links: int = 128) -> TracerProvider:
    """A provider for the worker's spans (not installed globally: the worker passes it around)."""
    resource = Resource.create({"service.name": service_name, "service.version": service_version,
                                "service.instance.id": f"{socket.gethostname()}-{os.getpid()}"})
    provider = TracerProvider(resource=resource, span_limits=SpanLimits(max_links=max(max_links, 128)))
    provider.add_span_processor(processor)
    return provider


class BatchSampler:
    """Samples a share ``ratio`` of batches, and (``follow_upstream``) every batch holding an event
    whose ``traceparent`` is sampled."""

    def __init__(self, ratio: float, follow_upstream: bool = True,
                 draw: Callable[[], float] = random.random) -> None:
        self.ratio = ratio
        self.follow_upstream = follow_upstream
        self._draw = draw

    def sampled(self, batch: Sequence[Message]) -> bool:
        return self._draw() < self.ratio or (self.follow_upstream and any_sampled(batch))


@dataclass
class _Traced:
    """A sampled batch whose span is open."""

    span: Span
    offset_ns: int  # epoch ns minus perf_counter ns, fixed for the batch
    context: Context
    delivery: Delivery | None = None


_STAGE_KINDS = {"features": SpanKind.CLIENT, "produce": SpanKind.PRODUCER}


class BatchTracer(Observer):
    """Makes the spans of sampled batches (see the module note). Put it after ``BatchLogContext``
    in the observer list so that log lines of a traced batch carry its trace id."""

    def __init__(self, tracer: Tracer, sampler: BatchSampler, group: str, output_topic: str,
                 max_links: int = 128, max_events_per_span: int = 16, max_pending: int = 1000) -> None:
        self.tracer = tracer
        self.sampler = sampler
        self.group = group
        self.output_topic = output_topic
        self.max_links = max_links
        self.max_events_per_span = max_events_per_span
        self.max_pending = max_pending
        self._open: _Traced | None = None
        self._pending: deque[_Traced] = deque()

    def batch_started(self, batch: Sequence[Message], received_ns: int) -> Headers | None:
        self._abandon()
        if not self.sampler.sampled(batch):
            return None
        offset = time.time_ns() - time.perf_counter_ns()
        links, dropped = upstream_links(batch, self.max_links)
        attributes = self._batch_attributes(batch, offset_ranges(batch), dropped)
        destination = attributes.get("messaging.destination.name")
        span = self.tracer.start_span(f"process {destination}" if destination else "process", kind=SpanKind.CONSUMER,
                                      links=links, start_time=received_ns + offset, attributes=attributes)
        assert isinstance(span, Span)  # the SDK's tracer makes SDK spans
        self._open = _Traced(span, offset, set_span_in_context(span))
        context = span.get_span_context()
        annotate_trace(f"{context.trace_id:032x}")
        return context_headers(context)

    def _batch_attributes(self, batch: Sequence[Message], ranges: dict[tuple[str, int], tuple[int, int]],
                          links_dropped: int) -> dict[str, str | int | list[str]]:
        attributes: dict[str, str | int | list[str]] = {
            "messaging.system": "kafka", "messaging.operation.type": "process",
            "messaging.operation.name": "process", "messaging.consumer.group.name": self.group,
            "messaging.batch.message_count": len(batch), "worker.kafka.offsets": describe_ranges(ranges),
            "worker.links_dropped": links_dropped,
        }
        topics = {t for t, _ in ranges}
        if len(topics) == 1:
            attributes["messaging.destination.name"] = next(iter(topics))
        if len(ranges) == 1:
            attributes["messaging.destination.partition.id"] = str(next(iter(ranges))[1])
        return attributes

    def dependency_down(self, what: str, error: Exception) -> None:
        if self._open is not None:
            self._open.span.record_exception(error, {"worker.dependency": what})

    def batch_done(self, batch: Sequence[Message], result: BatchResult, delivery: Delivery) -> None:
        traced, self._open = self._open, None
        if traced is None:
            return
        traced.span.set_attributes({"messaging.batch.message_count": len(batch),  # may have grown while held
                                    "worker.model.name": result.model_name,
                                    "worker.model.version": result.model_version,
                                    "worker.outputs": len(result.outputs),
                                    "worker.dead_letters": len(result.dead_letters)})
        by_stage: dict[str, list[DeadLetter]] = {}
        for dead in result.dead_letters:
            by_stage.setdefault(dead.stage, []).append(dead)
        for timing in result.timings:
            self._stage_span(traced, timing, self._stage_attributes(timing.stage, result),
                             by_stage.get(timing.stage, ()))
        traced.delivery = delivery
        self._pending.append(traced)
        if len(self._pending) > self.max_pending:
            self._finish(self._pending.popleft(), None, False)

    def _stage_attributes(self, stage: str, result: BatchResult) -> Attributes:
        if stage == "features":
            return {"db.system.name": "redis", "db.operation.name": "HMGET"}
        if stage == "inference":
            return {"worker.model.name": result.model_name, "worker.model.version": result.model_version}
        if stage == "produce":
            return {"messaging.system": "kafka", "messaging.operation.type": "send",
                    "messaging.destination.name": self.output_topic,
                    "messaging.batch.message_count": len(result.outputs) + len(result.dead_letters)}
        return None

    def _stage_span(self, traced: _Traced, timing: StageTiming, attributes: Attributes,
                    dead: Sequence[DeadLetter] = (), error: str | None = None) -> None:
        span = self.tracer.start_span(timing.stage, traced.context, _STAGE_KINDS.get(timing.stage, SpanKind.INTERNAL),
                                      attributes, start_time=timing.start_ns + traced.offset_ns)
        if dead:
            self._record_dead_letters(span, dead)
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(timing.end_ns + traced.offset_ns)

    def _record_dead_letters(self, span: ApiSpan, dead: Sequence[DeadLetter]) -> None:
        for d in dead[: self.max_events_per_span]:
            m = d.message
            span.add_event("exception", {"exception.type": d.error_type, "exception.message": d.reason[:1000],
                                         "messaging.destination.partition.id": str(m.partition()),
                                         "messaging.kafka.offset": int(m.offset() or 0)})
        span.set_attribute("worker.dead_letters", len(dead))
        span.set_status(Status(StatusCode.ERROR, f"{len(dead)} event(s) dead-lettered"))

    def checkpoint_done(self, timing: StageTiming, committed: bool) -> None:
        pending, self._pending = self._pending, deque()
        for traced in pending:
            self._finish(traced, timing, committed)

    def _finish(self, traced: _Traced, commit: StageTiming | None, committed: bool) -> None:
        delivery = traced.delivery
        if delivery is not None:
            acked = delivery.acked_ns or time.perf_counter_ns()
            self._stage_span(traced, StageTiming("deliver", delivery.published_ns, acked), None,
                             error=None if delivery.acked_ns else "not every output was acknowledged")
        end_ns = time.perf_counter_ns()
        if commit is not None:
            self._stage_span(traced, commit, {"messaging.operation.type": "settle"},
                             error=None if committed else "offsets not committed; the batch will be redone")
            end_ns = commit.end_ns
        traced.span.end(end_ns + traced.offset_ns)

    def _abandon(self) -> None:
        """Ends the span of a batch that was never done (its partitions were revoked while it waited)."""
        if self._open is not None:
            self._open.span.set_attribute("worker.batch.abandoned", True)
            self._open.span.end()
            self._open = None

    def stopped(self) -> None:
        self._abandon()
        pending, self._pending = self._pending, deque()
        for traced in pending:
            self._finish(traced, None, False)


class DiscardingExporter(SpanExporter):
    """Exporter ``none``: spans are made and dropped (tracing's cost without a collector)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def otlp_exporter(kind: str, endpoint: str | None) -> SpanExporter:
    """OpenTelemetry's OTLP exporter over gRPC (``otlp_grpc``) or HTTP (``otlp_http``); without an
    endpoint it follows the ``OTEL_EXPORTER_OTLP_*`` variables."""
    try:
        if kind == "otlp_grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

            return Grpc(endpoint=endpoint) if endpoint else Grpc()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        return Http(endpoint=endpoint) if endpoint else Http()
    except ImportError as exc:
        raise StartupError(f"telemetry.tracing.exporter {kind} needs the OTLP exporters: "
                           f"pip install 'inference-worker[otlp]' ({exc})") from exc
