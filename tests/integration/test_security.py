"""Security on real servers: the fraud example over TLS and mutual TLS to Kafka (``stunnel`` in front
of tansu, which cannot terminate TLS) and to ``redis-server`` (built with TLS), with a least-privilege
ACL user; and each wrong setting (CA, client certificate, password, SASL credentials) failing start-up
at once with one line naming it, never a secret.

A full SASL/SCRAM run needs Kafka or Redpanda: it runs when ``KAFKA_SASL_BOOTSTRAP_SERVERS`` names one
(with ``KAFKA_SASL_USERNAME``, ``KAFKA_SASL_PASSWORD`` and, default SCRAM-SHA-256, ``KAFKA_SASL_MECHANISM``).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import onnxruntime as ort
import pytest
import redis

from tests.integration.test_example_e2e import CONFIG, ENV, MODEL, TOLERANCE, fresh_names, read_until
from tests.support.certs import KEY_PASSWORD
from tests.support.configs import fraud_config, write_config
from tests.support.infra import repo_root
from tests.support.tls import Pkis, TlsTerminator, make_pkis
from tests.unit.test_example_model import data
from worker.app.tools import acl_setuser, create_topics, make_sender, topic_reader
from worker.codecs.schemas import load_schema
from worker.config.settings import load_settings
from worker.devtools.local import LocalBroker, LocalProcess, LocalRedis, free_port
from worker.devtools.sender import send_all

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "redis-admin-secret"
WORKER_PASSWORD = "worker-redis-secret"
LOADER_PASSWORD = "loader-redis-secret"
SASL_PASSWORD = "sasl-secret-password"
SECRETS = (KEY_PASSWORD, ADMIN_PASSWORD, WORKER_PASSWORD, LOADER_PASSWORD, SASL_PASSWORD)


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> Pkis:
    return make_pkis(tmp_path_factory.mktemp("pki"))


@dataclass
class TlsBroker:
    bootstrap: str
    broker: LocalBroker
    terminator: TlsTerminator


def tls_broker(pkis: Pkis, directory: Path, require_client_cert: bool) -> Iterator[TlsBroker]:
    """tansu advertising the port ``stunnel`` listens on with TLS."""
    port = free_port()
    with LocalBroker(log_path=directory / "broker.log", advertised_port=port) as broker, \
            TlsTerminator(pkis.good, broker.port, directory, require_client_cert, port) as terminator:
        yield TlsBroker(f"127.0.0.1:{port}", broker, terminator)


@pytest.fixture(scope="module")
def kafka_tls(pkis: Pkis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    yield from tls_broker(pkis, tmp_path_factory.mktemp("kafka-tls"), require_client_cert=False)


@pytest.fixture(scope="module")
def kafka_mtls(pkis: Pkis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    yield from tls_broker(pkis, tmp_path_factory.mktemp("kafka-mtls"), require_client_cert=True)


def tls_redis(pkis: Pkis, directory: Path, auth_clients: str) -> Iterator[LocalRedis]:
    """``redis-server`` listening with TLS only; its default user needs ``ADMIN_PASSWORD``."""
    p = pkis.good
    port = free_port()
    options = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(p.server_cert), "--tls-key-file",
               str(p.server_key), "--tls-ca-cert-file", str(p.ca), "--tls-auth-clients", auth_clients,
               "--requirepass", ADMIN_PASSWORD]
    with LocalRedis(port, directory / "redis.log", directory, options) as server:
        yield server


@pytest.fixture(scope="module")
def redis_tls(pkis: Pkis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    yield from tls_redis(pkis, tmp_path_factory.mktemp("redis-tls"), "no")


@pytest.fixture(scope="module")
def redis_mtls(pkis: Pkis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    yield from tls_redis(pkis, tmp_path_factory.mktemp("redis-mtls"), "yes")


def kafka_env(pkis: Pkis, broker: TlsBroker, client_cert: bool) -> dict[str, str]:
    env = {"WORKER_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap, "WORKER_KAFKA__SECURITY_PROTOCOL": "SSL",
           "WORKER_KAFKA__SSL_CA_LOCATION": str(pkis.good.ca)}
    if client_cert:
        env |= {"WORKER_KAFKA__SSL_CERTIFICATE_LOCATION": str(pkis.good.client_cert),
                "WORKER_KAFKA__SSL_KEY_LOCATION": str(pkis.good.client_key),
                "WORKER_KAFKA__SSL_KEY_PASSWORD": KEY_PASSWORD}
    return env


def redis_env(pkis: Pkis, server: LocalRedis, user: str, password: str, client_cert: bool) -> dict[str, str]:
    env = {"WORKER_REDIS__URL": f"rediss://{user}@127.0.0.1:{server.port}/0", "WORKER_REDIS__PASSWORD": password,
           "WORKER_REDIS__CA_FILE": str(pkis.good.ca)}
    if client_cert:
        env |= {"WORKER_REDIS__CERT_FILE": str(pkis.good.client_cert),
                "WORKER_REDIS__KEY_FILE": str(pkis.good.client_key), "WORKER_REDIS__KEY_PASSWORD": KEY_PASSWORD}
    return env


def settings_of(env: dict[str, str], names: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(CONFIG, {"kafka": names})


def worker_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env={**ENV, **env}, cwd=repo_root())


def add_users(pkis: Pkis, server: LocalRedis, settings: Any) -> None:
    """The worker's and the loader's least-privilege users, from ``worker features acl``'s lines."""
    admin = redis.Redis(host="127.0.0.1", port=server.port, ssl=True, ssl_ca_certs=str(pkis.good.ca),
                        password=ADMIN_PASSWORD, ssl_certfile=str(pkis.good.client_cert),
                        ssl_keyfile=str(pkis.good.client_key), ssl_password=KEY_PASSWORD)
    for user, password, writer in (("worker", WORKER_PASSWORD, False), ("loader", LOADER_PASSWORD, True)):
        line = acl_setuser(settings, user, writer)
        admin.execute_command(*line.split(), f">{password}")
    admin.close()


def score_example(env: dict[str, str], settings: Any, log: Path, n: int = 300) -> list[str]:
    """The example's events through a worker process with ``env``: every score equals ONNX Runtime's on
    the features the example defines (so they were read from Redis), one per event. Returns the log."""
    k = settings.kafka
    world = data.make_world()
    records = list(data.events(n, seed=21))
    create_topics(settings, partitions=2)
    tally = send_all(make_sender(settings, "card.id"), [(r["event_id"], r) for r in records])
    assert (tally.delivered, tally.rejected) == (n, 0)
    reader = topic_reader(settings, [k.output_topic], from_beginning=True)
    command = [sys.executable, "-m", "worker", "run", "--config", str(CONFIG), "--input-topic", k.input_topics[0],
               "--output-topic", k.output_topic, "--dlq-topic", k.dlq_topic, "--group-id", k.group_id]
    with LocalProcess("worker", command, log, env={**ENV, **env}) as worker:
        messages = read_until(reader, lambda ms: len(ms) >= n, 120, worker)
        lines = worker.log_lines()
    reader.close()
    schema = load_schema(settings.avro.output_schema)
    predictions = {p["event_id"]: p for p in (fastavro.schemaless_reader(io.BytesIO(m.value()), schema)
                                              for m in messages)}
    assert len(predictions) == n, f"{n - len(predictions)} missing"
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    expected = session.run(["probabilities"], {"features": data.feature_matrix(records, world)})[0][:, 1]
    published = np.array([predictions[r["event_id"]]["score"] for r in records])
    assert np.abs(published - expected).max() <= TOLERANCE
    return lines



def no_secret_in(lines: list[str] | str) -> None:
    text = "\n".join(lines) if isinstance(lines, list) else lines
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"secrets in the log: {leaked}"


def test_kafka_over_tls_and_redis_over_tls_as_a_least_privilege_user(
        pkis: Pkis, kafka_tls: TlsBroker, redis_tls: LocalRedis, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    names = fresh_names()
    env = kafka_env(pkis, kafka_tls, client_cert=False) | redis_env(pkis, redis_tls, "loader", LOADER_PASSWORD,
                                                                     client_cert=False)
    settings = settings_of(env, names, monkeypatch)
    add_users(pkis, redis_tls, settings)
    features = ["features", "load", "--config", str(CONFIG), "--generator", "models/fraud/data.py:features"]
    loaded = worker_cli(env, *features)
    assert loaded.returncode == 0, loaded.stderr
    as_reader = worker_cli({**env, "WORKER_REDIS__URL": env["WORKER_REDIS__URL"].replace("loader@", "worker@"),
                            "WORKER_REDIS__PASSWORD": WORKER_PASSWORD}, *features)
    assert as_reader.returncode == 1, "the worker's user cannot write features"
    assert "no permissions to run the 'hset' command" in as_reader.stderr

    worker_env = {**env, **redis_env(pkis, redis_tls, "worker", WORKER_PASSWORD, client_cert=False)}
    lines = score_example(worker_env, settings, tmp_path / "worker.log")
    no_secret_in(lines)


def test_kafka_and_redis_over_mutual_tls(pkis: Pkis, kafka_mtls: TlsBroker, redis_mtls: LocalRedis, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    names = fresh_names()
    env = kafka_env(pkis, kafka_mtls, client_cert=True) | redis_env(pkis, redis_mtls, "default", ADMIN_PASSWORD,
                                                                    client_cert=True)
    settings = settings_of(env, names, monkeypatch)
    loaded = worker_cli(env, "features", "load", "--config", str(CONFIG), "--generator",
                        "models/fraud/data.py:features")
    assert loaded.returncode == 0, loaded.stderr
    lines = score_example(env, settings, tmp_path / "worker.log")
    no_secret_in(lines)


def refused_start(env: dict[str, str], tmp_path: Path, redis_url: str | None = None,
                  bootstrap: str = "127.0.0.1:9") -> tuple[int, str, float]:
    """``worker run`` on the test config with ``env``: its exit code, output and how long it took."""
    config = write_config(tmp_path / "c.yaml", fraud_config())
    base = {"WORKER_KAFKA__STARTUP_TIMEOUT_S": "40", "WORKER_REDIS__STARTUP_TIMEOUT_S": "40"}
    args = ["--bootstrap-servers", bootstrap, *(["--redis-url", redis_url] if redis_url else [])]
    started = time.monotonic()
    done = worker_cli({**base, **env}, "run", "--config", str(config), *args, timeout=90)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def assert_refused_at_once(result: tuple[int, str, float], setting: str) -> None:
    code, output, seconds = result
    assert code == 3, output
    assert seconds < 30, f"took {seconds:.0f}s: a refusal is not waited for"
    lines = [line for line in output.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and setting in lines[0], output
    no_secret_in(output)


def test_kafka_with_a_wrong_ca_fails_at_once_naming_the_setting(pkis: Pkis, kafka_tls: TlsBroker, redis_url: str,
                                                                tmp_path: Path) -> None:
    env = {**kafka_env(pkis, kafka_tls, client_cert=False), "WORKER_KAFKA__SSL_CA_LOCATION": str(pkis.other.ca)}
    assert_refused_at_once(refused_start(env, tmp_path, redis_url, kafka_tls.bootstrap), "kafka.ssl_ca_location")


@pytest.mark.parametrize("client", ["none", "stranger"])
def test_kafka_refusing_the_client_certificate_fails_at_once_naming_the_setting(
        pkis: Pkis, kafka_mtls: TlsBroker, redis_url: str, tmp_path: Path, client: str) -> None:
    env = kafka_env(pkis, kafka_mtls, client_cert=client == "stranger")
    if client == "stranger":
        env |= {"WORKER_KAFKA__SSL_CERTIFICATE_LOCATION": str(pkis.other.client_cert),
                "WORKER_KAFKA__SSL_KEY_LOCATION": str(pkis.other.client_key)}
    assert_refused_at_once(refused_start(env, tmp_path, redis_url, kafka_mtls.bootstrap),
                           "kafka.ssl_certificate_location")


def test_wrong_sasl_credentials_fail_at_once_naming_the_settings(redis_url: str, tmp_path: Path) -> None:
    # tansu --authentication answers SCRAM handshakes, and knows no user here: any credentials are wrong.
    with LocalBroker(log_path=tmp_path / "broker.log", options=["--authentication"]) as broker:
        env = {"WORKER_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT", "WORKER_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
               "WORKER_KAFKA__SASL_USERNAME": "worker", "WORKER_KAFKA__SASL_PASSWORD": SASL_PASSWORD}
        result = refused_start(env, tmp_path, redis_url, broker.bootstrap_servers)
    assert_refused_at_once(result, "kafka.sasl_username")
    assert result[1].count("SASL authentication") <= 3, "no retry storm"


@pytest.mark.parametrize("wrong, setting", [("ca", "redis.ca_file"), ("password", "redis.password"),
                                            ("no client certificate", "redis.cert_file"),
                                            ("a stranger's certificate", "redis.cert_file"),
                                            ("key password", "redis.key_password")])
def test_redis_refusals_fail_at_once_naming_the_setting(pkis: Pkis, redis_mtls: LocalRedis, tmp_path: Path,
                                                        wrong: str, setting: str) -> None:
    env = redis_env(pkis, redis_mtls, "default", ADMIN_PASSWORD, client_cert=wrong != "no client certificate")
    env |= {"ca": {"WORKER_REDIS__CA_FILE": str(pkis.other.ca)},
            "password": {"WORKER_REDIS__PASSWORD": "not-" + ADMIN_PASSWORD[::-1]},
            "no client certificate": {},
            "a stranger's certificate": {"WORKER_REDIS__CERT_FILE": str(pkis.other.client_cert),
                                         "WORKER_REDIS__KEY_FILE": str(pkis.other.client_key)},
            "key password": {"WORKER_REDIS__KEY_PASSWORD": "not-" + KEY_PASSWORD[::-1]}}[wrong]
    url = env.pop("WORKER_REDIS__URL")
    assert_refused_at_once(refused_start(env, tmp_path, url), setting)


@pytest.mark.skipif(not os.environ.get("KAFKA_SASL_BOOTSTRAP_SERVERS"),
                    reason="a full SASL/SCRAM run needs Kafka or Redpanda: set KAFKA_SASL_BOOTSTRAP_SERVERS")
def test_the_example_over_sasl(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"WORKER_KAFKA__BOOTSTRAP_SERVERS": os.environ["KAFKA_SASL_BOOTSTRAP_SERVERS"],
           "WORKER_KAFKA__SECURITY_PROTOCOL": os.environ.get("KAFKA_SASL_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
           "WORKER_KAFKA__SASL_MECHANISM": os.environ.get("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
           "WORKER_KAFKA__SASL_USERNAME": os.environ["KAFKA_SASL_USERNAME"],
           "WORKER_KAFKA__SASL_PASSWORD": os.environ["KAFKA_SASL_PASSWORD"], "WORKER_REDIS__URL": redis_url}
    names = fresh_names()
    settings = settings_of(env, names, monkeypatch)
    loaded = worker_cli(env, "features", "load", "--config", str(CONFIG), "--generator",
                        "models/fraud/data.py:features")
    assert loaded.returncode == 0, loaded.stderr
    score_example(env, settings, tmp_path / "worker.log")
