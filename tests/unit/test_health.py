"""Liveness and readiness, the Redis probe, and the HTTP server that serves them with /metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from tests.support.telemetry import http_get
from worker.errors import FeatureStoreUnavailable, StartupError
from worker.features.store import InMemoryFeatureStore
from worker.records import InputMessage, StageTiming
from worker.telemetry.health import Health, RedisProbe, TelemetryServer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_alive_while_starting_then_only_while_the_loop_comes_round() -> None:
    clock = Clock()
    health = Health(liveness_timeout_s=30, clock=clock)
    clock.now += 1000
    assert health.liveness() == (True, "starting")
    health.started()
    clock.now += 29
    assert health.liveness()[0]
    health.idle()
    clock.now += 29
    health.batch_started([InputMessage(b"v")], 0)
    clock.now += 29
    health.dependency_down("redis", FeatureStoreUnavailable("down"))
    clock.now += 29
    health.checkpoint_done(StageTiming("commit", 0, 1), True)
    clock.now += 31
    alive, reason = health.liveness()
    assert not alive and "31s" in reason


def test_ready_only_with_the_model_every_check_and_the_group() -> None:
    health = Health()
    redis_up = [True]
    health.checks["redis"] = lambda: redis_up[0]
    assert health.readiness() == (False, {"model": False, "redis": True, "group": False, "running": False})
    health.checks["model"] = lambda: True
    health.started()
    health.partitions_changed([], [])  # joined, with no partition to own: still a ready member
    assert health.readiness() == (True, {"model": True, "redis": True, "group": True, "running": True})
    redis_up[0] = False
    assert health.readiness()[0] is False
    redis_up[0] = True
    health.stopped()
    assert health.readiness() == (False, {"model": True, "redis": True, "group": True, "running": False})


def test_a_check_that_raises_reads_as_not_ready() -> None:
    health = Health()
    health.checks["model"] = lambda: 1 / 0 > 0
    assert health.readiness()[1]["model"] is False


class FlakyStore(InMemoryFeatureStore):
    def __init__(self) -> None:
        super().__init__({})
        self.down = False
        self.closed = False

    def ping(self) -> None:
        if self.down:
            raise FeatureStoreUnavailable("Redis at x: refused")

    def close(self) -> None:
        self.closed = True


def test_the_redis_probe_reports_and_logs_each_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="worker")
    store = FlakyStore()
    probe = RedisProbe(store, interval_s=3600, where="Redis at x")
    assert probe.check() and probe.up()
    store.down = True
    assert not probe.check() and not probe.check()
    store.down = False
    assert probe.check()
    assert [r.getMessage() for r in caplog.records] == [
        "readiness: Redis at x answers", "readiness: Redis at x does not answer: Redis at x: refused",
        "readiness: Redis at x answers"]
    probe.start()
    probe.stop()
    assert store.closed


@pytest.fixture
def served() -> Iterator[tuple[str, Health, CollectorRegistry]]:
    registry = CollectorRegistry()
    health = Health()
    server = TelemetryServer("127.0.0.1", 0, health, registry)
    server.start()
    yield f"http://127.0.0.1:{server.port}", health, registry
    server.close()


def test_the_server_answers_probes_and_metrics(served: tuple[str, Health, CollectorRegistry]) -> None:
    base, health, registry = served
    Counter("worker_test_things", "things", registry=registry).inc(3)
    assert http_get(f"{base}/livez") == (200, "starting\n")
    status, body = http_get(f"{base}/readyz")
    assert status == 503 and json.loads(body) == {"ready": False, "checks": {
        "model": False, "group": False, "running": False}}
    health.checks["model"] = lambda: True
    health.started()
    health.partitions_changed([("in", 0)], [])
    status, body = http_get(f"{base}/readyz?verbose")
    assert status == 200 and json.loads(body)["ready"] is True
    status, body = http_get(f"{base}/metrics")
    assert status == 200 and "worker_test_things_total 3.0" in body
    assert http_get(f"{base}/nothing")[0] == 404


def test_a_port_in_use_is_a_startup_error(served: tuple[str, Health, CollectorRegistry]) -> None:
    port = int(served[0].rsplit(":", 1)[1])
    with pytest.raises(StartupError, match=f"telemetry.port: cannot listen on 127.0.0.1:{port}"):
        TelemetryServer("127.0.0.1", port, Health(), CollectorRegistry())
