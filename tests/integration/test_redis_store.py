"""RedisFeatureStore against a real redis-server, over sockets."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support.infra import LocalRedisServer, RedisServer
from worker.errors import FeatureStoreUnavailable, StartupError
from worker.features.fetcher import EntitySpec, FeatureFetcher
from worker.features.keys import KeyTemplate
from worker.features.redis_store import RedisAddress, RedisFeatureStore, wait_for_redis
from worker.pipeline.assembly import Assembler, FeatureColumn, TensorSpec

pytestmark = pytest.mark.integration


def store_for(url: str, timeout_s: float = 2.0, password: str | None = None) -> RedisFeatureStore:
    return RedisFeatureStore(RedisAddress.from_url(url, password), timeout_s)


@pytest.fixture
def client(redis_client: redis.Redis) -> redis.Redis:
    return redis_client


@pytest.fixture
def store(redis_db_url: str) -> Iterator[RedisFeatureStore]:
    s = store_for(redis_db_url)
    yield s
    s.close()


def test_hmget_results_for_several_entities_in_one_round_trip(client: redis.Redis, store: RedisFeatureStore) -> None:
    client.hset("card:a", mapping={"count": 3, "avg": "1.5", "other": "x"})
    client.hset("card:b", mapping={"count": 4})
    client.hset("u:1", mapping={"age": 30})

    answer = store.fetch([(["count", "avg"], ["card:a", "card:b", "card:none"]), (["age"], ["u:1", "u:2"]),
                          (["age"], [])])

    assert answer == [[[b"3", b"1.5"], [b"4", None], [None, None]], [[b"30"], [None]], []]


def test_large_batches_span_many_socket_reads(client: redis.Redis, store: RedisFeatureStore) -> None:
    value = "v" * 200
    pipe = client.pipeline(transaction=False)
    for i in range(0, 20_000, 2):  # every other key exists
        pipe.hset(f"k:{i}", mapping={"a": f"{i}", "b": value})
    pipe.execute()
    keys = [f"k:{i}" for i in range(20_000)]

    (rows,) = store.fetch([(["a", "b"], keys)])

    assert len(rows) == 20_000
    assert rows[0] == [b"0", value.encode()]
    assert rows[1] == [None, None]
    assert rows[19_998] == [b"19998", value.encode()]
    assert all(row == [str(i).encode(), value.encode()] for i, row in enumerate(rows) if i % 2 == 0)


def test_a_key_of_the_wrong_type_fails_alone(client: redis.Redis, store: RedisFeatureStore) -> None:
    client.hset("card:a", mapping={"count": 3})
    client.set("card:s", "a string")
    client.rpush("card:l", "x")
    client.hset("card:c", mapping={"count": 5})

    (rows,) = store.fetch([(["count"], ["card:a", "card:s", "card:l", "card:c"])])

    assert rows[0] == [b"3"]
    assert rows[3] == [b"5"]
    for error in (rows[1], rows[2]):
        assert isinstance(error, Exception)
        assert "WRONGTYPE" in str(error)
    store.ping()  # the connection is still in step after error replies


def test_wrong_type_keys_dead_letter_only_their_events(client: redis.Redis, store: RedisFeatureStore) -> None:
    client.hset("card:a", mapping={"count": 3})
    client.set("card:s", "a string")
    card = EntitySpec("card", KeyTemplate("card:{card_id}"), ("count",), {"count": 0})
    events = [{"card_id": c} for c in ("a", "s", "new", "s")]

    lookups = FeatureFetcher(store, [card]).fetch(events)
    assembled = Assembler([TensorSpec("x", "float32", (FeatureColumn("card", "count", 0),))]).assemble(events, lookups)

    assert sorted(assembled.bad) == [1, 3]
    assert "WRONGTYPE" in assembled.bad[1].reason
    assert assembled.feeds["x"][[0, 2], 0].tolist() == [3.0, 0.0]


def test_auth_and_select_from_the_url(make_redis_server: Callable[..., RedisServer]) -> None:
    server = make_redis_server("--requirepass", "s3cret")
    admin = redis.Redis(host=server.host, port=server.port, password="s3cret")
    admin.hset("card:a", mapping={"count": "db0"})
    redis.Redis(host=server.host, port=server.port, password="s3cret", db=3).hset("card:a", mapping={"count": "db3"})
    admin.acl_setuser("reader", enabled=True, passwords=["+reader-pw"], keys=["card:*"],
                      commands=["+hmget", "+ping", "+select"])
    base = f"{server.host}:{server.port}"

    with_password = store_for(f"redis://:s3cret@{base}/3")
    as_user = store_for(f"redis://reader:reader-pw@{base}/3")
    password_option = store_for(f"redis://{base}/0", password="s3cret")
    try:
        assert with_password.fetch([(["count"], ["card:a"])]) == [[[b"db3"]]]
        assert as_user.fetch([(["count"], ["card:a"])]) == [[[b"db3"]]]
        assert password_option.fetch([(["count"], ["card:a"])]) == [[[b"db0"]]]
    finally:
        for s in (with_password, as_user, password_option):
            s.close()
        admin.close()
    assert "s3cret" not in with_password.address.redacted()


@pytest.mark.parametrize(("url", "reason"), [("redis://:wrong@{base}/0", "refused the connection setup"),
                                             ("redis://{base}/0", "NOAUTH")], ids=["wrong-password", "no-password"])
def test_refused_authentication_is_unavailable_not_a_bad_key(make_redis_server: Callable[..., RedisServer], url: str,
                                                             reason: str) -> None:
    server = make_redis_server("--requirepass", "s3cret")
    store = store_for(url.format(base=f"{server.host}:{server.port}"))

    with pytest.raises(FeatureStoreUnavailable, match=reason):
        store.fetch([(["count"], ["card:a", "card:b"])])
    with pytest.raises(FeatureStoreUnavailable, match=reason):
        store.ping()
    store.close()


def test_an_error_answer_for_every_key_is_unavailable(make_redis_server: Callable[..., RedisServer]) -> None:
    """Only WRONGTYPE is about one key; errors such as NOPERM, LOADING or NOAUTH are about the
    server, and must hold the batch for a retry rather than dead-letter its events."""
    server = make_redis_server("--requirepass", "s3cret")
    admin = redis.Redis(host=server.host, port=server.port, password="s3cret")
    admin.acl_setuser("pinger", enabled=True, passwords=["+pw"], keys=["*"], commands=["+ping"])
    store = store_for(f"redis://pinger:pw@{server.host}:{server.port}/0")

    store.ping()
    with pytest.raises(FeatureStoreUnavailable, match="NOPERM"):
        store.fetch([(["count"], ["card:a"])])
    admin.close()


def test_reconnects_after_the_server_restarts(redis_server: RedisServer) -> None:
    store = store_for(redis_server.url, timeout_s=1.0)
    redis.Redis.from_url(redis_server.url).hset("card:a", mapping={"count": 1})
    assert store.fetch([(["count"], ["card:a"])]) == [[[b"1"]]]

    redis_server.stop()
    with pytest.raises(FeatureStoreUnavailable, match="Redis at redis://"):
        store.fetch([(["count"], ["card:a"])])
    with pytest.raises(FeatureStoreUnavailable):
        store.ping()

    redis_server.start()
    redis.Redis.from_url(redis_server.url).hset("card:a", mapping={"count": 2})  # memory only: data is gone
    assert store.fetch([(["count"], ["card:a"])]) == [[[b"2"]]]
    store.close()


def test_unavailable_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = store_for(f"redis://127.0.0.1:{port}/0")

    with pytest.raises(FeatureStoreUnavailable) as caught:
        store.fetch([(["count"], ["card:a"])])

    assert isinstance(caught.value.__cause__, OSError)
    started = time.monotonic()
    with pytest.raises(StartupError, match=f"Redis at redis://127.0.0.1:{port}/0 not ready after 0s"):
        wait_for_redis(store, timeout_s=0.5)
    assert time.monotonic() - started < 5


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        store = store_for(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", timeout_s=0.3)
        started = time.monotonic()

        with pytest.raises(FeatureStoreUnavailable, match="timed out"):
            store.fetch([(["count"], ["card:a"])])

    assert time.monotonic() - started < 3


def test_wait_until_ready_returns_once_redis_comes_back(redis_server: RedisServer) -> None:
    store = store_for(redis_server.url, timeout_s=0.5)
    redis_server.stop()
    restart = threading.Timer(0.8, redis_server.start)
    restart.start()
    try:
        wait_for_redis(store, timeout_s=20)
    finally:
        restart.join()
    store.ping()
    store.close()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs a local redis-server")
def test_unix_socket_with_a_database(tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    server = LocalRedisServer(("--unixsocket", str(path), "--unixsocketperm", "700"))
    server.start()
    try:
        redis.Redis(unix_socket_path=str(path), db=2).hset("card:a", mapping={"count": 9})
        store = store_for(f"unix://{path}?db=2")
        assert store.fetch([(["count"], ["card:a"])]) == [[[b"9"]]]
        store.close()
    finally:
        server.close()
