"""Health probes and the small HTTP server that serves them with the metrics.

- ``/livez``: the loop is alive: it came round (a batch, an empty poll, a retry while a
  dependency is down, a checkpoint) within ``liveness_timeout_s``. It answers 200 while the
  worker is still starting (waiting for Redis or Kafka has its own timeout).
- ``/readyz``: the worker can score: every check passes (the model is loaded, Redis answers a
  PING from a probe thread on its own connection, the consumer group was joined). 503 with the
  failing checks otherwise, and once the worker is stopping.
- ``/metrics``: the Prometheus registry.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from worker.errors import FeatureStoreUnavailable, StartupError
from worker.features.store import FeatureStore
from worker.records import TP, BatchResult, Delivery, Headers, Message, StageTiming
from worker.runner.observer import Observer

logger = logging.getLogger(__name__)

Check = Callable[[], bool]


class Health(Observer):
    """Liveness (a heartbeat from every loop hook) and readiness (named checks, plus ``group``)."""

    def __init__(self, liveness_timeout_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.liveness_timeout_s = liveness_timeout_s
        self.checks: dict[str, Check] = {"model": lambda: False}
        self._clock = clock
        self._beat = clock()
        self._looping = self._joined = self._stopping = False

    def _alive(self) -> None:
        self._beat = self._clock()

    def started(self) -> None:
        self._looping = True
        self._alive()

    def batch_started(self, batch: Sequence[Message], received_ns: int) -> Headers | None:
        self._alive()
        return None

    def idle(self) -> None:
        self._alive()

    def batch_done(self, batch: Sequence[Message], result: BatchResult, delivery: Delivery) -> None:
        self._alive()

    def checkpoint_done(self, timing: StageTiming, committed: bool) -> None:
        self._alive()

    def dependency_down(self, what: str, error: Exception) -> None:
        self._alive()

    def partitions_changed(self, assigned: list[TP], revoked: list[TP]) -> None:
        self._joined = True
        self._alive()

    def stopped(self) -> None:
        self._stopping = True

    def liveness(self) -> tuple[bool, str]:
        if not self._looping:
            return True, "starting"
        quiet = self._clock() - self._beat
        if quiet > self.liveness_timeout_s:
            return False, f"the loop has not come round for {quiet:.0f}s"
        return True, "ok"

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        results = {name: _passes(check) for name, check in self.checks.items()}
        results["group"] = self._joined
        results["running"] = self._looping and not self._stopping
        return all(results.values()), results


def _passes(check: Check) -> bool:
    try:
        return bool(check())
    except Exception:  # a broken check reports not ready rather than failing the probe
        logger.exception("readiness check failed")
        return False


class RedisProbe:
    """PINGs the feature store every ``interval_s`` on a connection of its own; ``up()`` says
    whether the last PING was answered. Changes are logged once each."""

    def __init__(self, store: FeatureStore, interval_s: float = 2.0, where: str = "Redis") -> None:
        self.store = store
        self.interval_s = interval_s
        self.where = where
        self._up = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-probe", daemon=True)

    def up(self) -> bool:
        return self._up

    def start(self) -> None:
        self.check()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()

    def check(self) -> bool:
        try:
            self.store.ping()
        except FeatureStoreUnavailable as exc:
            if self._up:
                logger.warning("readiness: %s does not answer: %s", self.where, exc)
            self._up = False
        else:
            if not self._up:
                logger.info("readiness: %s answers", self.where)
            self._up = True
        return self._up

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.interval_s + 1)
        self.store.close()


class TelemetryServer:
    """``/metrics``, ``/livez`` and ``/readyz`` on one port, served from a background thread."""

    def __init__(self, host: str, port: int, health: Health, registry: CollectorRegistry) -> None:
        handler = type("Handler", (_Handler,), {"health": health, "registry": registry})
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise StartupError(f"telemetry.port: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="telemetry-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    health: Health
    registry: CollectorRegistry
    server_version = "worker-telemetry"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encoder(self.registry), content_type)
        elif path == "/livez":
            alive, reason = self.health.liveness()
            self._reply(200 if alive else 503, f"{reason}\n".encode(), "text/plain; charset=utf-8")
        elif path == "/readyz":
            ready, checks = self.health.readiness()
            body = json.dumps({"ready": ready, "checks": checks}).encode() + b"\n"
            self._reply(200 if ready else 503, body, "application/json")
        else:
            self._reply(404, b"not found: try /metrics, /livez or /readyz\n", "text/plain; charset=utf-8")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds: no line per request."""
