"""Kafka and Redis plumbing for the benchmark: topics, offsets, producing, reading back.

End offsets come from the producer's own delivery reports, not from the broker's
watermarks: tansu reports wrong high watermarks, and the benchmark must work on it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


@dataclass
class Infra:
    bootstrap: str
    redis_url: str
    ends: dict[str, dict[int, int]] = field(default_factory=dict)  # topic → partition → next offset

    def topic(self, prefix: str, partitions: int = 4) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})  # must outlive the future
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
        return name

    def produce(self, topic: str, items: Iterable[tuple[bytes, bytes]], rate: float = 0.0, **config: Any) -> int:
        """Produce ``(key, value)`` pairs, paced at ``rate`` per second if given; returns the count.
        ``config`` adds producer properties (``partitioner``, say)."""
        ends = self.ends.setdefault(topic, {})

        def delivered(err: object, msg: object) -> None:
            if err is None:
                partition, offset = msg.partition(), msg.offset()  # type: ignore[attr-defined]
                ends[partition] = max(ends.get(partition, 0), offset + 1)

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "on_delivery": delivered,
                             "queue.buffering.max.messages": 1_000_000, **config})
        start = time.perf_counter()
        n = 0
        for n, (key, value) in enumerate(items, start=1):
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
            if rate and (ahead := n / rate - (time.perf_counter() - start)) > 0:
                time.sleep(ahead)
        producer.flush(120)
        return n

    def caught_up(self, group: str, topic: str) -> bool:
        """Has ``group`` committed, on every partition of ``topic``, all that was produced to it?"""
        ends = self.ends.get(topic, {})
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=10)
        finally:
            consumer.close()
        return all(tp.offset >= ends[tp.partition] for tp in committed)

    def wait_caught_up(self, group: str, topic: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.caught_up(group, topic):
                return True
            time.sleep(0.5)
        return False

    def read_all(self, topic: str, expected: int, idle_s: float = 3.0) -> list[tuple[bytes | None, bytes]]:
        """``topic`` from the start as ``(key, value)``, by assignment (no group join): until
        ``expected`` messages and then ``idle_s`` without more (so duplicates show), or idle."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "bench-reader",
                             "enable.auto.commit": False})
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[tuple[bytes | None, bytes]] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < (idle_s if len(out) >= expected else 30.0):
            batch = [m for m in consumer.consume(10_000, 0.5) if not m.error()]
            if batch:
                quiet_since = time.monotonic()
                out += [(m.key(), m.value()) for m in batch]
        consumer.close()
        return out
