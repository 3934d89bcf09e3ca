"""What the loop's recovery from an eager rebalance relies on, on a real broker: a partition
sought to an offset in the same poll cycle as its (re-)assignment by an eager assignor is read
from that offset, not from the group's committed one (worker/runner/loop.py, ``_fetch_again``)."""

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
    got: list[tuple[int | None, int | None]] = []
    while len(got) < 14 and time.monotonic() < deadline:
        got += [(m.partition(), m.offset()) for m in consumer.consume(100, 0.2)]
    consumer.close()

    assert sorted(got) == [(p, o) for p in (0, 1) for o in range(3, 10)]
