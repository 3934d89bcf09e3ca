"""Starting against a broker that does not answer: a few honest lines, one error, a quick Ctrl-C.

The worker runs as its own process with a real Redis and a Kafka address nothing listens on.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.configs import fraud_config, write_config
from tests.support.infra import repo_root
from worker.devtools.local import local_broker

pytestmark = pytest.mark.integration


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def start(tmp_path: Path, redis_url: str, bootstrap: str, timeout_s: int) -> subprocess.Popen[str]:
    config = write_config(tmp_path / "c.yaml", fraud_config())
    env = {**os.environ, "WORKER_LOG_FORMAT": "json", "WORKER_KAFKA__STARTUP_TIMEOUT_S": str(timeout_s)}
    return subprocess.Popen([sys.executable, "-m", "worker", "run", "--config", str(config), "--bootstrap-servers",
                             bootstrap, "--redis-url", redis_url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=repo_root())


def test_an_unreachable_broker_gives_a_few_json_lines_naming_it_and_one_error(tmp_path: Path,
                                                                               redis_url: str) -> None:
    bootstrap = closed_port()
    worker = start(tmp_path, redis_url, bootstrap, timeout_s=12)
    out, _ = worker.communicate(timeout=60)

    lines = out.splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON (librdkafka's included)
    about_kafka = [r for r in records if r["logger"] == "worker.kafka.librdkafka" or "Kafka" in r["message"]]
    assert worker.returncode == 3
    assert len(about_kafka) <= 5, [r["message"] for r in about_kafka]
    assert all(bootstrap in r["message"] or r.get("broker", "").startswith(bootstrap) for r in about_kafka)
    assert sum("not ready after 12s" in r["message"] for r in records) == 1, "the failure is reported once"
    assert any(r["logger"] == "worker.kafka.librdkafka" and "Connection refused" in r["message"] for r in records)


def test_ctrl_c_while_waiting_for_the_broker_stops_at_once(tmp_path: Path, redis_url: str) -> None:
    worker = start(tmp_path, redis_url, closed_port(), timeout_s=60)
    assert worker.stdout is not None
    for line in worker.stdout:
        if "waiting for Kafka" in line:
            break
    interrupted = time.monotonic()
    worker.send_signal(signal.SIGINT)
    out, _ = worker.communicate(timeout=30)
    took = time.monotonic() - interrupted

    assert worker.returncode == 130
    assert "stopping: SIGINT while starting" in out
    assert took < 3, f"took {took:.1f}s"  # about 0.5 s here; generous for a loaded CI machine


def test_a_session_timeout_the_coordinator_refuses_stops_the_worker_naming_the_setting(tmp_path: Path,
                                                                                      redis_url: str) -> None:
    """noida-db, as Kafka, refuses joins below group.min.session.timeout.ms (6 s) with
    INVALID_SESSION_TIMEOUT on every retry: the worker must not retry that for ever in silence."""
    pytest.importorskip("noida_db")
    with local_broker("noida", tmp_path / "noida.log") as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
        topics = ["transactions", "predictions", "transactions-dlq"]
        for created in admin.create_topics([NewTopic(t, 1, 1) for t in topics]).values():
            created.result(10)
        config = write_config(tmp_path / "c.yaml", fraud_config())
        env = {**os.environ, "WORKER_KAFKA__SESSION_TIMEOUT_MS": "3000"}
        worker = subprocess.run([sys.executable, "-m", "worker", "run", "--config", str(config),
                                 "--bootstrap-servers", broker.bootstrap_servers, "--redis-url", redis_url],
                                check=False, capture_output=True, text=True, env=env, cwd=repo_root(), timeout=90)

    assert worker.returncode == 3, worker.stderr[-2000:]
    assert "kafka.session_timeout_ms=3000 (INVALID_SESSION_TIMEOUT)" in worker.stderr
