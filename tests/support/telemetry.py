"""Reading what the worker's telemetry publishes: OTLP spans (as the Collector's Kafka receiver
would) and its HTTP endpoints."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from prometheus_client.parser import text_string_to_metric_families

KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = 1, 2, 3, 4, 5
STATUS_ERROR = 2


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


@dataclass(frozen=True)
class SpanLink:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class SpanRecord:
    """One decoded OTLP span, ids in lowercase hex."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: list[SpanLink]
    status_code: int
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any] = field(default_factory=dict)


def decode_request(value: bytes) -> list[SpanRecord]:
    """The spans in one serialized ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest.FromString(value)
    out = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                links = [SpanLink(link.trace_id.hex(), link.span_id.hex(), _attributes(link.attributes))
                         for link in s.links]
                events = [(e.name, _attributes(e.attributes)) for e in s.events]
                out.append(SpanRecord(s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name, s.kind,
                                      s.start_time_unix_nano, s.end_time_unix_nano, _attributes(s.attributes),
                                      links, s.status.code, events, resource))
    return out


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def wait_http(url: str, want: Callable[[int, str], bool], timeout_s: float = 60.0,
              alive: Callable[[], bool] = lambda: True) -> tuple[int, str]:
    """GETs ``url`` until ``want(status, body)``; returns the last answer (fails on timeout)."""
    deadline = time.monotonic() + timeout_s
    last: tuple[int, str] = (0, "")
    while time.monotonic() < deadline and alive():
        try:
            last = http_get(url)
        except OSError as exc:  # not listening yet
            last = (0, str(exc))
        if want(*last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered as wanted within {timeout_s:.0f}s; last: {last}")


def readiness(url: str) -> dict[str, Any]:
    status, body = http_get(url)
    data: dict[str, Any] = json.loads(body)
    data["status"] = status
    return data


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))
