"""The label join against a real Redis: what is matched, held, late, unmatched and repeated, and the
join processor's handling of bad records and of Redis going away."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import fastavro
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.infra import RedisServer
from worker.codecs.avro import PlainAvroDecoder
from worker.codecs.schemas import parse_schema
from worker.errors import FeatureStoreUnavailable
from worker.monitoring.join import JoinProcessor, LabelFields, MonitorTicker, PredictionFields, RecordReader
from worker.monitoring.metrics import MonitorMetrics
from worker.monitoring.store import KEPT_MS, JoinTimes, Label, MonitorStore, Prediction
from worker.records import InputMessage

pytestmark = pytest.mark.integration

PREDICTION = parse_schema({"type": "record", "name": "P", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "score", "type": "double"},
    {"name": "model_version", "type": "string"}]})
LABEL = parse_schema({"type": "record", "name": "L", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "is_fraud", "type": "boolean"},
    {"name": "labelled_at", "type": "long"}]})
TIMES = JoinTimes(wait_ms=10_000, unmatched_after_ms=1_000, window=3)


@pytest.fixture
def store(redis_client: redis.Redis) -> MonitorStore:
    return MonitorStore(redis_client, "q:", TIMES)


def p(event_id: str, score: float = 0.9, at: int = 1000, version: str = "1") -> Prediction:
    return Prediction(event_id, "fraud", version, score, at)


def lab(event_id: str, positive: bool = True, at: int = 2000) -> Label:
    return Label(event_id, positive, at)


def test_a_join_is_made_once_whichever_half_comes_first_and_whatever_is_read_twice(store: MonitorStore) -> None:
    assert store.add([p("a")], [lab("b")]) == [None, None]  # each waits for its other half
    joined = store.add([p("b", 0.2)], [lab("a", False), lab("a", False)])
    assert [(j.event_id, j.state, j.replay) for j in joined if j] == [("b", "matched", False), ("a", "matched", False),
                                                                      ("a", "matched", True)]
    again = store.add([p("a"), p("b", 0.2)], [lab("b")])
    assert all(j is not None and j.replay for j in again), "read again after a crash: republished, not recounted"
    assert store.totals() == {"received": 2, "matched": 2, "late": 0, "unmatched": 0}
    scores, labels = store.window("fraud", "1")
    assert scores.tolist() == [0.9, 0.2] and labels.tolist() == [False, True]  # newest first


def test_late_labels_count_late_and_stay_out_of_the_window(store: MonitorStore) -> None:
    (joined,) = [j for j in store.add([p("x", at=1000)], [lab("x", at=1000 + TIMES.wait_ms + 1)]) if j]
    assert joined.state == "late"
    assert store.totals()["late"] == 1 and store.versions() == []


def test_a_label_is_unmatched_once_later_predictions_came_without_its_own(store: MonitorStore) -> None:
    store.add([], [lab("ghost", at=5000)])
    assert store.sweep() == 0, "no prediction read yet: a backlog may still hold it"
    store.add([p("other", at=5000 + TIMES.unmatched_after_ms - 1)], [])
    assert store.sweep() == 0
    store.add([p("another", at=5000 + TIMES.unmatched_after_ms)], [])
    assert store.sweep() == 1
    assert store.sweep() == 0, "counted once"
    assert store.add([p("ghost", at=99_999)], []) == [None], "a prediction after that does not join"
    assert store.totals() == {"received": 1, "matched": 0, "late": 0, "unmatched": 1}


def test_joined_records_and_windows_expire(store: MonitorStore, redis_client: redis.Redis) -> None:
    store.add([p("a")], [lab("a")])
    store.add([p("held")], [])
    assert 0 < redis_client.pttl("q:e:a") <= KEPT_MS, "joined: kept only to recognise a replay"
    assert TIMES.wait_ms < redis_client.pttl("q:e:held") <= 2 * TIMES.wait_ms, "unjoined: kept twice the wait"
    assert 0 < redis_client.pttl("q:w:fraud|1") <= TIMES.wait_ms, "a retired version's window goes away"
    redis_client.delete("q:w:fraud|1")
    assert store.versions() == [] and not redis_client.smembers("q:versions")


def test_the_window_keeps_the_last_joins_per_version(store: MonitorStore) -> None:
    ids = [f"e{i}" for i in range(5)]
    store.add([p(e, score=i / 10) for i, e in enumerate(ids)], [lab(e) for e in ids])
    store.add([p("v2", version="2")], [lab("v2")])
    assert store.window("fraud", "1")[0].tolist() == [0.4, 0.3, 0.2]
    assert store.versions() == [("fraud", "1"), ("fraud", "2")]


def avro(schema: object, record: dict[str, object]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)  # type: ignore[arg-type]
    return buf.getvalue()


def processor(store: MonitorStore, publish: bool = True) -> JoinProcessor:
    predictions = RecordReader(PlainAvroDecoder(PREDICTION), vars(PredictionFields("event_id", "score", None,
                                                                                   "model_version")))
    labels = RecordReader(PlainAvroDecoder(LABEL), vars(LabelFields("event_id", "is_fraud", "labelled_at")))
    return JoinProcessor(store, "labels", predictions, labels, ("fraud", "0"), publish, clock_ms=lambda: 1500)


def message(topic: str, value: bytes) -> InputMessage:
    return InputMessage(value, None, topic, 0)


def test_the_processor_publishes_joins_and_dead_letters_bad_records(store: MonitorStore) -> None:
    batch = [message("predictions", avro(PREDICTION, {"event_id": "a", "score": 0.7, "model_version": "3"})),
             message("labels", avro(LABEL, {"event_id": "a", "is_fraud": True, "labelled_at": 1200})),
             message("labels", b"\x00not avro"),
             message("predictions", avro(PREDICTION, {"event_id": "", "score": 0.1, "model_version": "3"}))]
    result = processor(store).process(batch)

    (joined,) = result.outputs
    assert joined.source is batch[1] and joined.key == b"a"
    assert json.loads(joined.value) == {"event_id": "a", "model_name": "fraud", "model_version": "3", "score": 0.7,
                                        "label": True, "scored_at": 1500, "labelled_at": 1200, "late": False}
    assert [(d.message, d.stage) for d in result.dead_letters] == [(batch[2], "decode"), (batch[3], "join")]
    assert "no event id" in result.dead_letters[1].reason


def test_redis_down_holds_the_batch_and_the_figures_go_quiet(make_redis_server: Callable[..., RedisServer]) -> None:
    server = make_redis_server()
    client = redis.Redis(host=server.host, port=server.port, socket_timeout=0.5, socket_connect_timeout=0.5,
                         retry=Retry(NoBackoff(), 0))
    store = MonitorStore(client, "q:", TIMES)
    metrics = MonitorMetrics(store, 0.5, lambda name, version: 0.9)
    store.add([p("a")], [lab("a")])
    names = {m.name for m in metrics.collect()}
    assert {"worker_labels_matched", "worker_model_auc", "worker_model_holdout_auc"} <= names
    server.stop()
    batch = [message("labels", avro(LABEL, {"event_id": "b", "is_fraud": True, "labelled_at": 1}))]
    with pytest.raises(FeatureStoreUnavailable, match="monitor's Redis"):
        processor(store).process(batch)
    MonitorTicker(store, 0.5, 60).tick()  # logs, never raises
    metrics._cached = None
    assert list(metrics.collect()) == []
