"""Quiet, honest start-up: waiting for a dependency, librdkafka's own lines, a stop while starting."""

from __future__ import annotations

import logging

import pytest

from worker import startup
from worker.errors import StartupError
from worker.kafka.confluent import ClientLines

FAIL = ("FAIL", "rdkafka#consumer-1", "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to "
        "ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)")


def librdkafka_record(args: tuple[str, str, str] = FAIL) -> logging.LogRecord:
    """A record as confluent-kafka logs it: ``logger.log(level, "%s [%s] %s", facility, client, text)``."""
    return logging.LogRecord("worker.kafka.librdkafka", logging.ERROR, "", 0, "%s [%s] %s", args, None)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_librdkafka_line_becomes_the_workers_with_its_parts_as_fields() -> None:
    record = librdkafka_record()

    assert ClientLines(clock=Clock()).filter(record)

    assert record.getMessage() == ("librdkafka FAIL: Connect to ipv4#127.0.0.1:1 failed: Connection refused "
                                   "(after 0ms in state CONNECT)")
    assert (record.kafka_client, record.broker) == ("rdkafka#consumer-1", "127.0.0.1:1/bootstrap")  # type: ignore[attr-defined]


def test_repeats_are_held_back_and_counted_per_facility_and_broker() -> None:
    clock = Clock()
    lines = ClientLines(interval_s=60, clock=clock)
    other_broker = ("FAIL", "rdkafka#producer-2", "[thrd:10.0.0.2:9092/2]: 10.0.0.2:9092/2: Connect failed")

    shown = [lines.filter(librdkafka_record()) for _ in range(20)]
    assert shown == [True] + [False] * 19
    assert lines.filter(librdkafka_record(other_broker)), "another broker's line is a line of its own"
    clock.now = 61
    again = librdkafka_record()
    assert lines.filter(again)
    assert again.getMessage().endswith("(19 more like it in the last 60s)")


def test_the_workers_own_lines_pass_untouched() -> None:
    record = logging.LogRecord("worker.x", logging.INFO, "", 0, "assigned %s", ("in[0]",), None)
    assert ClientLines().filter(record) and record.getMessage() == "assigned in[0]"


def test_waiting_reports_the_address_attempt_and_time_left_then_at_most_every_ten_seconds(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup, "_why", [])
    clock = Clock()
    caplog.set_level(logging.INFO, "worker.startup")

    with pytest.raises(StartupError) as caught:
        startup.wait_until_ready(lambda: "refused", "Kafka", "broker:9092", 30, clock=clock, sleep=clock.sleep)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0] == "waiting for Kafka at broker:9092 (attempt 1, giving up in 30s): refused"
    assert 3 <= len(warnings) <= 4, warnings
    assert str(caught.value).startswith("Kafka at broker:9092 not ready after 30s (")
    assert str(caught.value).endswith("attempts): refused")


def test_ready_after_a_few_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup, "_why", [])
    clock = Clock()
    answers = iter(["down", "down", None])

    assert startup.wait_until_ready(lambda: next(answers), "Redis", "redis://r:6379/0", 30, clock=clock,
                                    sleep=clock.sleep) == 3
    assert clock.now == pytest.approx(1.5), "backing off: 0.5 s, then 1 s"


def test_a_stop_requested_while_waiting_ends_the_wait_with_one_line(caplog: pytest.LogCaptureFixture,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup, "_why", [])
    clock = Clock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now >= 2:
            startup.request_stop("SIGINT")  # as the signal handler does

    with pytest.raises(KeyboardInterrupt):
        startup.wait_until_ready(lambda: "refused", "Kafka", "broker:9092", 30, clock=clock, sleep=sleep)

    assert clock.now < 2.2, "noticed within a step"
    assert [r.getMessage() for r in caplog.records if "stopping" in r.getMessage()] == [
        "stopping: SIGINT while starting"]
