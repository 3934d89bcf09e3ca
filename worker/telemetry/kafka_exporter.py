"""A span exporter that publishes to a Kafka topic, in the format the OpenTelemetry Collector's
Kafka receiver reads with ``encoding: otlp_proto``: each message value is one serialized
``ExportTraceServiceRequest``.

Spans are grouped by trace, one message per trace keyed by its trace id (hex), so that a trace's
spans share a partition (what tail sampling downstream needs). A trace too large for one message
is split. The exporter runs on the span processor's thread with its own producer, separate from
the one carrying predictions: a checkpoint's flush never waits for traces, and traces are never
part of a transaction. Producing never blocks: a full producer queue fails the export, which the
processor counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from worker.kafka.port import BrokerError, Producer

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 900_000  # under the brokers' default message.max.bytes (1 MB) with room for framing


class KafkaSpanExporter(SpanExporter):
    def __init__(self, producer: Producer, topic: str, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 count: Callable[[str, int], None] | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.max_message_bytes = max_message_bytes
        self.count = count
        self._errors_logged = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        by_trace: dict[int, list[ReadableSpan]] = {}
        for span in spans:
            context = span.context
            by_trace.setdefault(context.trace_id if context else 0, []).append(span)
        ok = True
        for trace_id, group in by_trace.items():
            for value, n in self._messages(group):
                ok = self._produce(f"{trace_id:032x}".encode(), value, n) and ok
        self.producer.poll(0)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def _messages(self, spans: list[ReadableSpan]) -> list[tuple[bytes, int]]:
        """Serialized requests holding ``spans``, halved until each fits in a message."""
        value = encode_spans(spans).SerializeToString()
        if len(value) <= self.max_message_bytes or len(spans) == 1:
            return [(value, len(spans))]
        half = len(spans) // 2
        return self._messages(spans[:half]) + self._messages(spans[half:])

    def _produce(self, key: bytes, value: bytes, n: int) -> bool:
        try:
            self.producer.produce(self.topic, value, key, on_delivery=self._delivered(n))
        except (BufferError, BrokerError) as exc:
            self._log_error(f"cannot queue {n} span(s) for {self.topic}: {exc}")
            return False
        return True

    def _delivered(self, n: int) -> Callable[[object | None, object], None]:
        def report(err: object | None, msg: object) -> None:
            if err is not None:
                self._log_error(f"{n} span(s) not delivered to {self.topic}: {err}")
                if self.count is not None:
                    self.count("undelivered", n)
        return report

    def _log_error(self, text: str) -> None:
        # Traces are best effort: say so a few times, then only count (the metric keeps going).
        if self._errors_logged < 10:
            self._errors_logged += 1
            logger.warning("%s%s", text, " (further span export errors are only counted)"
                           if self._errors_logged == 10 else "")

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.producer.flush(timeout_millis / 1000) == 0

    def shutdown(self) -> None:
        left = self.producer.flush(5)
        if left:
            logger.warning("%d trace message(s) still unsent at shutdown", left)
