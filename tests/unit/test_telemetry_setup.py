"""Telemetry configuration and wiring, the batch log context, and the worker's headers on dead letters."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.configs import changed, fraud_config, write_config
from worker.app.kafka import ClientHooks, required_topics
from worker.app.telemetry import make_telemetry
from worker.config.compile import compile_settings
from worker.config.settings import load_settings
from worker.errors import ConfigError, StartupError
from worker.kafka.sink import Sink
from worker.logs import JsonFormatter, ScopeFilter, TextFormatter, current_scope
from worker.records import DeadLetter, InputMessage
from worker.telemetry.logcontext import BatchLogContext, annotate_trace
from worker.telemetry.tracing import otlp_exporter


@pytest.fixture(autouse=True)
def _no_worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("WORKER_")]:
        monkeypatch.delenv(name)


def settings_with(tmp_path: Path, **changes: Any) -> Any:
    return load_settings(write_config(tmp_path / "c.yaml", changed(fraud_config(), **changes)))


def test_telemetry_is_off_by_default_and_cheap_when_on(tmp_path: Path) -> None:
    t = settings_with(tmp_path).telemetry
    assert (t.port, t.tracing.enabled, t.tracing.sample_ratio, t.tracing.exporter, t.tracing.topic) == (
        0, False, 0.01, "kafka", "otlp_spans")
    telemetry = make_telemetry(settings_with(tmp_path))
    assert [type(o).__name__ for o in telemetry.observers] == ["BatchLogContext"]
    assert telemetry.hooks == ClientHooks() and telemetry.closers == []


def test_environment_variables_reach_nested_telemetry_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_TELEMETRY__TRACING__ENABLED", "true")
    monkeypatch.setenv("WORKER_TELEMETRY__TRACING__SAMPLE_RATIO", "0.5")
    monkeypatch.setenv("WORKER_TELEMETRY__PORT", "9464")
    t = settings_with(tmp_path).telemetry
    assert (t.tracing.enabled, t.tracing.sample_ratio, t.port) == (True, 0.5, 9464)


@pytest.mark.parametrize(("changes", "key", "reason"), [
    ({"telemetry.tracing.sample_rate": 0.1}, "telemetry.tracing.sample_rate", "did you mean 'sample_ratio'?"),
    ({"telemetry.tracing.sample_ratio": 2}, "telemetry.tracing.sample_ratio", "less than or equal to 1"),
    ({"telemetry.tracing.exporter": "jaeger"}, "telemetry.tracing.exporter", "'kafka', 'otlp_grpc'"),
    ({"telemetry.port": 70000}, "telemetry.port", "less than or equal to 65535"),
])
def test_bad_telemetry_settings_are_one_problem_each(tmp_path: Path, changes: dict[str, Any], key: str,
                                                     reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_with(tmp_path, **changes)
    ((found_key, found_reason),) = caught.value.problems
    assert found_key == key and reason in found_reason


@pytest.mark.parametrize(("field", "reason"), [
    ("event_timestamp", "no field 'event_timestamp' in Transaction"),
    ("card_id", "'card_id' is a string; the event time must be a number"),
])
def test_a_bad_event_time_field_is_reported_by_check_config(tmp_path: Path, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_settings(settings_with(tmp_path, **{"telemetry.event_time_field": field}))
    ((key, found),) = caught.value.problems
    assert key == "telemetry.event_time_field" and reason in found


def test_the_event_time_field_of_the_workload_is_accepted(tmp_path: Path) -> None:
    compile_settings(settings_with(tmp_path, **{"telemetry.event_time_field": "event_time"}))


def test_tracing_to_kafka_requires_its_topic_and_closes_cleanly(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, **{"telemetry.tracing": {"enabled": True, "topic": "spans"}})
    assert "spans" in required_topics(settings)
    assert "spans" not in required_topics(settings_with(tmp_path, **{"telemetry.tracing": {"topic": "spans"}}))
    telemetry = make_telemetry(settings)
    try:
        assert [type(o).__name__ for o in telemetry.observers] == ["BatchLogContext", "BatchTracer"]
    finally:
        telemetry.close()


def test_otlp_exporters_come_from_their_optional_package_whose_absence_is_a_startup_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert type(otlp_exporter("otlp_http", "http://127.0.0.1:1/v1/traces")).__module__.endswith("http.trace_exporter")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(StartupError, match=r"pip install 'inference-worker\[otlp\]'"):
        otlp_exporter("otlp_grpc", None)


@pytest.fixture
def log_lines() -> Iterator[tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScopeFilter())
    logger = logging.getLogger("worker.test_scope")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_lines_logged_during_a_batch_carry_its_offsets_and_trace(
        log_lines: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]) -> None:
    logger, stream, handler = log_lines
    handler.setFormatter(JsonFormatter())
    context = BatchLogContext()
    batch = [InputMessage(b"v", None, "in", p, o) for p, o in ((0, 5), (0, 6), (2, 9))]
    context.batch_started(batch, 0)
    annotate_trace("ab" * 16)
    logger.warning("retrying", extra={"batch_size": 99})
    context.idle()
    logger.warning("later")
    assert current_scope() is None
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["batch"] == "in[0]@5-6 in[2]@9-9" and first["trace_id"] == "ab" * 16
    assert first["batch_size"] == 99, "a field given by the call is not overridden"
    assert "batch" not in second and "trace_id" not in second


def test_text_lines_show_the_scope_as_key_values(
        log_lines: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]) -> None:
    logger, stream, handler = log_lines
    handler.setFormatter(TextFormatter())
    BatchLogContext().batch_started([InputMessage(b"v", None, "in", 1, 3)], 0)
    logger.warning("model failed")
    BatchLogContext().stopped()
    assert stream.getvalue().rstrip().endswith("model failed batch=in[1]@3-3 batch_size=1")


def test_batch_headers_never_shadow_the_producers_own_on_a_dead_letter() -> None:
    sink = Sink(lambda _: None, "out", "dlq", "g")  # type: ignore[arg-type,return-value]  # only the header rule is used
    original = InputMessage(b"x", b"k", "in", 1, 7, [("traceparent", b"00-producer"), ("a", b"1")], (1, 5))
    worker_headers: list[tuple[str, str | bytes | None]] = [("traceparent", "00-worker"), ("tracestate", "w=1")]
    headers = sink.dead_letter_headers(DeadLetter(original, "decode", "bad", "EOFError"), worker_headers)
    assert headers[:2] == [("traceparent", b"00-producer"), ("a", b"1")]
    assert headers[-2:] == [("dlq.traceparent", "00-worker"), ("tracestate", "w=1")]
    assert ("dlq.source.offset", b"7") in headers
    bare = InputMessage(b"x", b"k", "in", 1, 8)
    assert sink.dead_letter_headers(DeadLetter(bare, "decode", "bad", "E"), worker_headers)[-2:] == worker_headers
