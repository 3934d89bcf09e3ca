"""What the loop's recovery from an eager rebalance relies on, on a real broker: a partition
sought to an offset in the same poll cycle as its (re-)assignment by an eager assignor is read
from that offset or an earlier one, never a later one (worker/runner/loop.py, ``_fetch_again``).

librdkafka means ``seek`` for partitions already being fetched: before the new assignment's first
fetch, the group's committed offset (or the reset policy, with none) can win over it. Seen once in
the whole suite on tansu, where partition 0 was then read from 0. That is still safe for the loop:
everything it dropped lies at or after the group's committed offset, so reading from there redoes
more and skips nothing."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Producer

from tests.support.kafka_io import create_topic
from worker.kafka.config import consumer_config
from worker.kafka.confluent import ConfluentConsumer
from worker.kafka.port import Rebalance
from worker.records import TP


def test_a_partition_sought_right_after_an_eager_assignment_is_read_from_there(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, f"eager-{uuid.uuid4().hex[:8]}", partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(20):
        producer.produce(topic, b"v%d" % i, partition=i % 2)
    assert producer.flush(30) == 0
    consumer = ConfluentConsumer(consumer_config(kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}", {}, {
        "partition.assignment.strategy": "range", "auto.offset.reset": "earliest", "session.timeout.ms": 6000}))
    assigned: list[TP] = []
    consumer.subscribe([topic], Rebalance(assigned.extend, lambda _: None, lambda _: None))
    deadline = time.monotonic() + 30
    early = []
    while not assigned and time.monotonic() < deadline:
        early += consumer.consume(100, 0.1)
    assert sorted(assigned) == [(topic, 0), (topic, 1)] and not early

    for tp in assigned:
        consumer.seek(tp, 3)  # before anything of the new assignment was handed out
    read: dict[int, list[int]] = {0: [], 1: []}
    while min(max(offsets, default=-1) for offsets in read.values()) < 9 and time.monotonic() < deadline:
        for m in consumer.consume(100, 0.2):
            read[m.partition()].append(m.offset())  # type: ignore[index,arg-type]  # set when consumed
    consumer.close()

    for offsets in read.values():
        assert offsets and offsets[0] <= 3  # from the sought offset, or from an earlier one
        assert set(range(3, 10)) <= set(offsets)  # and nothing after it skipped
