"""Deadlines on a real broker: a backlog of events a minute old, then fresh events while the worker
sheds it. With ``batch.max_event_age_ms: 5000`` every stale event goes where ``on_expired`` says
(dead letters byte for byte, skipped but committed, or scored and marked late), every fresh event
is scored correctly and on time, and nothing is lost."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.configs import changed, fraud_config, write_config
from tests.support.faults import Expected
from tests.support.fraud import decode_prediction, workload
from tests.support.kafka_io import TopicReader, Topics, ToSend, committed_offsets, produce
from tests.support.worker_process import StartWorker

pytestmark = pytest.mark.integration

STALE, FRESH = 3000, 1500


@pytest.mark.parametrize("on_expired", ["dead-letter", "skip", "score-late"])
def test_a_stale_backlog_is_shed_while_fresh_events_are_scored_on_time(
        on_expired: str, gen: ModuleType, kafka_bootstrap: str, redis_db_url: str,
        kafka_topics: Callable[..., Topics], topic_reader: Callable[..., TopicReader], start_worker: StartWorker,
        tmp_path: Path) -> None:
    args, events = workload(gen, redis_db_url, n=STALE + FRESH, seed=71)
    topics = kafka_topics(partitions=2, prefix="deadline")
    a_minute_ago = int((time.time() - 60) * 1000)
    stale = [ToSend(m.key, m.value, None, a_minute_ago) for m in events.messages[:STALE]]
    sent = produce(kafka_bootstrap, topics.input, stale)
    config = write_config(tmp_path / "fraud.yaml", changed(fraud_config(), **{
        "batch.max_event_age_ms": 5000, "batch.on_expired": on_expired, "telemetry.event_time_field": None}))
    worker = start_worker(config, topics, redis_db_url)
    reader = topic_reader(topics.output, topics.dlq)
    worker.wait_for_log("assigned")

    fresh_at = int(time.time() * 1000)
    sent += produce(kafka_bootstrap, topics.input, [ToSend(m.key, m.value, None, fresh_at)
                                                    for m in events.messages[STALE:]])
    scored = STALE + FRESH if on_expired == "score-late" else FRESH
    dead = STALE if on_expired == "dead-letter" else 0
    assert reader.read_until(lambda r: r.count(topics.output) >= scored and r.count(topics.dlq) >= dead, 120,
                             alive=worker.alive)
    reader.settle(1.0)
    assert worker.stop() == 0

    stale_ids = {r["event_id"] for r in events.good[:STALE]}
    outputs = reader.on(topics.output)
    tally = Expected(gen, args, events.good if on_expired == "score-late" else events.good[STALE:]).tally(
        m.value for m in outputs)
    assert (tally.missing, tally.wrong, tally.duplicates, tally.unexpected) == ([], [], 0, 0)
    late = {decode_prediction(gen, m.value)["event_id"] for m in outputs if m.headers.get("x-worker-late") == b"1"}
    assert late == (stale_ids if on_expired == "score-late" else set())
    fresh_lag = [m.timestamp_ms - fresh_at for m in outputs
                 if decode_prediction(gen, m.value)["event_id"] not in stale_ids]
    assert len(fresh_lag) == FRESH and max(fresh_lag) < 5000, "every fresh event scored before it could expire"
    dead_letters = reader.on(topics.dlq)
    assert sorted(m.value or b"" for m in dead_letters) == sorted(
        m.value or b"" for m in stale[:dead]), "each stale event, byte for byte"
    assert {m.headers["dlq.error.stage"] for m in dead_letters} <= {b"deadline"}
    ends = {p: 1 + max(s.offset for s in sent if s.partition == p) for p in range(topics.partitions)}
    assert committed_offsets(kafka_bootstrap, topics.group, topics.input, topics.partitions) == ends
