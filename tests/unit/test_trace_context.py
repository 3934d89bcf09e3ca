"""W3C trace context in Kafka headers: parsing agrees with OpenTelemetry's propagator, links are
capped and deduplicated, and the cheap sampled-flag scan agrees with the full parse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from worker.records import InputMessage
from worker.telemetry.context import (
    any_sampled,
    context_headers,
    describe_ranges,
    offset_ranges,
    parse_traceparent,
    upstream_links,
)

VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def traceparent(trace_id: int, span_id: int, flags: str = "01") -> bytes:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags}".encode()


def message(offset: int, *headers: tuple[str, bytes | str | None], partition: int = 0,
            topic: str = "in") -> InputMessage:
    return InputMessage(b"v", None, topic, partition, offset, list(headers) or None)


@pytest.mark.parametrize("value", [VALID, VALID.encode(), f" {VALID} ", "01-" + VALID[3:] + "-future-fields"])
def test_valid_traceparents_parse(value: str | bytes) -> None:
    parsed = parse_traceparent(value)
    assert parsed is not None
    assert (parsed.trace_id, parsed.span_id, parsed.sampled) == (0x0AF7651916CD43DD8448EB211C80319C,
                                                                  0xB7AD6B7169203331, True)


@pytest.mark.parametrize("value", [
    None, "", "garbage", VALID.upper(), VALID[:-1], VALID + "-extra",  # version 00 has exactly four fields
    "ff" + VALID[2:], "00-" + "0" * 32 + VALID[35:], VALID[:36] + "0" * 16 + "-01", "00-" + "g" * 32 + VALID[35:],
    b"\xff\xfe" + VALID.encode()[2:],
])
def test_invalid_traceparents_are_refused(value: str | bytes | None) -> None:
    assert parse_traceparent(value) is None


HEX = "0123456789abcdefABCDEF-x "


def hex_digits(n: int) -> st.SearchStrategy[str]:
    return st.text("0123456789abcdef", min_size=n, max_size=n)


@given(st.one_of(
    st.text(alphabet=HEX, min_size=50, max_size=70),
    st.builds(lambda v, t, s, f, rest: f"{v}-{t}-{s}-{f}{rest}", hex_digits(2), hex_digits(32), hex_digits(16),
              hex_digits(2), st.sampled_from(["", "-", "-x", " "])),
))
def test_parsing_agrees_with_opentelemetrys_propagator(value: str) -> None:
    span = get_current_span(TraceContextTextMapPropagator().extract({"traceparent": value}))
    theirs = span.get_span_context()
    ours = parse_traceparent(value)
    if ours is None:
        assert not theirs.is_valid
    else:
        assert (theirs.trace_id, theirs.span_id, int(theirs.trace_flags)) == tuple(ours)


def test_context_headers_carry_traceparent_and_tracestate() -> None:
    context = SpanContext(0xABC, 0xDEF, False, TraceFlags(1), TraceState([("vendor", "v1")]))
    assert context_headers(context) == [("traceparent", f"00-{0xABC:032x}-{0xDEF:016x}-01"),
                                        ("tracestate", "vendor=v1")]
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(NonRecordingSpan(context)))
    assert dict(context_headers(context)) == carrier


def test_links_are_deduplicated_capped_and_carry_partition_and_offset() -> None:
    batch = [message(0, ("traceparent", traceparent(1, 1)), ("tracestate", b"a=b"), partition=2),
             message(1, ("traceparent", traceparent(1, 1))),  # the same context again: one link
             message(2, ("other", b"x")),
             message(3),
             message(4, ("traceparent", b"not a traceparent")),
             message(5, ("traceparent", traceparent(2, 2, "00"))),
             message(6, ("traceparent", traceparent(3, 3))),
             message(7, ("traceparent", traceparent(4, 4)))]

    links, dropped = upstream_links(batch, limit=3)

    assert [(link.context.trace_id, link.context.span_id) for link in links] == [(1, 1), (2, 2), (3, 3)]
    assert dropped == 1
    first = links[0]
    assert first.context.is_remote and first.context.trace_flags.sampled
    assert first.context.trace_state == TraceState([("a", "b")])
    assert dict(first.attributes or {}) == {"messaging.destination.partition.id": "2", "messaging.kafka.offset": 0}
    assert not links[1].context.trace_flags.sampled


def test_links_of_a_batch_without_headers_are_none() -> None:
    assert upstream_links([message(i) for i in range(5)], 128) == ([], 0)


def test_any_sampled_sees_only_valid_sampled_contexts() -> None:
    assert not any_sampled([message(0), message(1, ("traceparent", traceparent(5, 5, "00")))])
    assert not any_sampled([message(0, ("traceparent", b"00-" + b"z" * 32 + traceparent(5, 5)[35:]))])
    assert any_sampled([message(0), message(1, ("traceparent", traceparent(5, 5, "03")))])
    assert any_sampled([message(0, ("traceparent", VALID))])  # str values too


def test_offset_ranges_per_partition() -> None:
    batch = [message(10, partition=0), message(11, partition=0), message(7, partition=1), message(12, partition=0),
             message(3, partition=0, topic="other")]
    ranges = offset_ranges(batch)
    assert ranges == {("in", 0): (10, 12), ("in", 1): (7, 7), ("other", 0): (3, 3)}
    assert describe_ranges(ranges) == ["in[0]@10-12", "in[1]@7-7", "other[0]@3-3"]
