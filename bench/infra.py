"""Kafka and Redis plumbing for the benchmark: topics, offsets, producing, reading back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


@dataclass(frozen=True)
class Infra:
    bootstrap: str
    redis_url: str

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap})

    def topic(self, prefix: str, partitions: int = 4) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.admin().create_topics([NewTopic(name, partitions, 1)])[name].result(30)
        return name

    def produce(self, topic: str, items: Iterable[tuple[bytes, bytes]], rate: float = 0.0) -> int:
        """Produce ``(key, value)`` pairs, paced at ``rate`` per second if given; returns the count."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5,
                             "queue.buffering.max.messages": 1_000_000})
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

    def end_offsets(self, topic: str) -> dict[int, int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "bench-probe"})
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        finally:
            consumer.close()

    def caught_up(self, group: str, topic: str) -> bool:
        """Has ``group`` committed every partition of ``topic`` up to its end?"""
        ends = self.end_offsets(topic)
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

    def read_all(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        """Every message of ``topic`` as ``(key, value)``, read by assignment (no group join)."""
        ends = self.end_offsets(topic)
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "bench-reader",
                             "enable.auto.commit": False})
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out: list[tuple[bytes | None, bytes]] = []
        left = {p: e for p, e in ends.items() if e > 0}
        deadline = time.monotonic() + 120
        while left and time.monotonic() < deadline:
            for m in consumer.consume(10_000, 0.5):
                if m.error():
                    continue
                out.append((m.key(), m.value()))
                if m.offset() + 1 >= left.get(m.partition(), 0):
                    left.pop(m.partition(), None)
        consumer.close()
        return out
