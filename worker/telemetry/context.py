"""W3C Trace Context in Kafka headers: reading ``traceparent``/``tracestate`` from input events
and writing the worker's own context on outputs.

Reading is the only per-event work tracing does, so it is split by cost: ``any_sampled`` looks
at one byte of each ``traceparent`` (to honour a producer's sampling decision); the full parse
into span links runs only for a batch that is traced.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from opentelemetry.trace import Link, SpanContext, TraceFlags, TraceState

from worker.records import Headers, Message

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# The same grammar as OpenTelemetry's TraceContextTextMapPropagator (lowercase hex, optional
# fields after the flags for versions above 00).
_TRACEPARENT = re.compile(rb"\s*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\s*", re.S)
_ODD_HEX = frozenset(b"13579bdf")  # last digit of the flags when the sampled bit is set


class Upstream(NamedTuple):
    """A parsed ``traceparent``."""

    trace_id: int
    span_id: int
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & TraceFlags.SAMPLED)


def parse_traceparent(value: bytes | str | None) -> Upstream | None:
    """The context in a ``traceparent`` value, or None if it is absent or invalid."""
    if value is None:
        return None
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    match = _TRACEPARENT.fullmatch(raw)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return Upstream(trace_id, span_id, int(flags_hex, 16))


def format_traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def context_headers(context: SpanContext) -> Headers:
    """Headers carrying ``context`` to whoever consumes the worker's outputs."""
    headers: Headers = [(TRACEPARENT, format_traceparent(context))]
    if context.trace_state:
        headers.append((TRACESTATE, context.trace_state.to_header()))
    return headers


def any_sampled(batch: Sequence[Message]) -> bool:
    """Whether any event carries a ``traceparent`` whose sampled flag is set (checked fully only
    for candidates whose last flag digit is odd, so events without headers cost one call each)."""
    for message in batch:
        headers = message.headers()
        if not headers:
            continue
        for key, value in headers:
            if key == TRACEPARENT and value is not None and len(value) >= 55:
                raw = value.encode() if isinstance(value, str) else value
                if raw[54] in _ODD_HEX or len(raw) > 55:
                    upstream = parse_traceparent(raw)
                    if upstream is not None and upstream.sampled:
                        return True
    return False


def _trace_state(value: bytes | str | None) -> TraceState | None:
    if not value:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return TraceState.from_header([text])


def upstream_links(batch: Sequence[Message], limit: int) -> tuple[list[Link], int]:
    """Links to the distinct upstream contexts of the batch's events, at most ``limit``, each with
    its event's partition and offset; and how many events with a context came after the limit
    (they are only counted, not parsed: a batch may hold thousands)."""
    links: list[Link] = []
    seen: set[tuple[int, int]] = set()
    dropped = 0
    for message in batch:
        headers = message.headers()
        if not headers:
            continue
        if len(links) >= limit:
            dropped += any(key == TRACEPARENT for key, _ in headers)
            continue
        parent = state = None
        for key, value in headers:
            if key == TRACEPARENT:
                parent = value
            elif key == TRACESTATE:
                state = value
        upstream = parse_traceparent(parent)
        if upstream is None or (upstream.trace_id, upstream.span_id) in seen:
            continue
        seen.add((upstream.trace_id, upstream.span_id))
        context = SpanContext(upstream.trace_id, upstream.span_id, is_remote=True,
                              trace_flags=TraceFlags(upstream.flags & 0xFF), trace_state=_trace_state(state))
        links.append(Link(context, {"messaging.destination.partition.id": str(message.partition()),
                                    "messaging.kafka.offset": int(message.offset() or 0)}))
    return links, dropped


def offset_ranges(batch: Sequence[Message]) -> dict[tuple[str, int], tuple[int, int]]:
    """First and last offset of the batch on each partition it holds (a consumer receives each
    partition's messages in offset order)."""
    first: dict[tuple[str | None, int | None], int | None] = {}
    last: dict[tuple[str | None, int | None], Message] = {}
    for message in batch:
        tp = (message.topic(), message.partition())
        if tp not in first:
            first[tp] = message.offset()
        last[tp] = message
    return {(str(t), int(p or 0)): (int(first[(t, p)] or 0), int(m.offset() or 0)) for (t, p), m in last.items()}


def describe_ranges(ranges: dict[tuple[str, int], tuple[int, int]]) -> list[str]:
    """``topic[partition]@first-last`` for each partition."""
    return [f"{t}[{p}]@{first}-{last}" for (t, p), (first, last) in sorted(ranges.items())]
