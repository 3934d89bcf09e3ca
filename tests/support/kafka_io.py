"""Kafka I/O for tests: unique topics, producing with delivery positions, reading topics.

Topics are read with ``assign()`` on explicit partitions, never through a consumer group: no
group join to wait for, and nothing the worker's group could notice.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True)
class Topics:
    """One test's input, output and dead-letter topics and the worker's consumer group."""

    input: str
    output: str
    dlq: str
    group: str
    partitions: int


def create_topics(bootstrap: str, partitions: int = 1, prefix: str = "t") -> Topics:
    """Creates fresh, uniquely named input/output/dead-letter topics."""
    uid = uuid.uuid4().hex[:10]
    topics = Topics(f"{prefix}-in-{uid}", f"{prefix}-out-{uid}", f"{prefix}-dlq-{uid}", f"{prefix}-group-{uid}",
                    partitions)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(t, partitions, 1) for t in (topics.input, topics.output, topics.dlq)])
    for future in futures.values():
        future.result(timeout=30)
    return topics


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


@dataclass(frozen=True)
class Sent:
    """A produced message and where it landed."""

    key: bytes | None
    value: bytes | None
    headers: Headers | None
    partition: int
    offset: int


@dataclass(frozen=True)
class ToSend:
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None
    timestamp_ms: int = 0  # the message's Kafka timestamp; 0: the producer's clock


def make_producer(bootstrap: str, **config: Any) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True, **config})


def produce(bootstrap: str, topic: str, messages: Iterable[ToSend], producer: Producer | None = None) -> list[Sent]:
    """Produces every message and waits for its acknowledgement; returns them in order with their offsets."""
    p = producer or make_producer(bootstrap)
    sent: list[Sent | None] = []
    errors: list[str] = []

    def report(i: int, msg: ToSend) -> Callable[[KafkaError | None, Any], None]:
        def delivered(err: KafkaError | None, m: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                sent[i] = Sent(msg.key, msg.value, msg.headers, m.partition(), m.offset())
        return delivered

    for i, msg in enumerate(messages):
        sent.append(None)
        while True:
            try:
                p.produce(topic, msg.value, msg.key, headers=msg.headers, on_delivery=report(i, msg),
                          timestamp=msg.timestamp_ms)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(30)
    assert not errors and not left, f"{len(errors)} not delivered ({errors[:3]}), {left} unacknowledged"
    return [s for s in sent if s is not None]


@dataclass(frozen=True)
class Consumed:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes | None]
    header_list: list[tuple[str, bytes | None]]
    timestamp_ms: int = 0


@dataclass
class TopicReader:
    """Reads whole topics from the beginning by partition assignment, accumulating messages."""

    bootstrap: str
    topics: Sequence[str]
    messages: list[Consumed] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        metadata = self._consumer.list_topics(timeout=10)
        assignment = [TopicPartition(t, p, OFFSET_BEGINNING)
                      for t in self.topics for p in sorted(metadata.topics[t].partitions)]
        self._consumer.assign(assignment)

    def poll(self, timeout_s: float = 0.2) -> int:
        """Reads what has arrived (waiting up to ``timeout_s`` for the first); returns how many."""
        batch = self._consumer.consume(10_000, timeout_s)
        good = [m for m in batch if m.error() is None]
        for m in good:
            raw = m.headers() or []
            pairs = raw.items() if isinstance(raw, dict) else raw
            headers = [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]
            self.messages.append(Consumed(str(m.topic()), int(m.partition() or 0), int(m.offset() or 0), m.key(),
                                          m.value(), dict(headers), headers, m.timestamp()[1]))
        return len(good)

    def read_until(self, done: Callable[[TopicReader], bool], timeout_s: float,
                   alive: Callable[[], bool] = lambda: True) -> bool:
        """Reads until ``done(self)`` or the timeout; stops early if ``alive()`` turns false."""
        deadline = time.monotonic() + timeout_s
        while not done(self):
            if time.monotonic() > deadline or not alive():
                self.poll(0.5)
                return done(self)
            self.poll()
        return True

    def settle(self, quiet_s: float = 1.0) -> None:
        """Keeps reading until nothing arrives for ``quiet_s`` (late duplicates would show up here)."""
        while self.poll(quiet_s):
            pass

    def on(self, topic: str) -> list[Consumed]:
        return [m for m in self.messages if m.topic == topic]

    def count(self, topic: str) -> int:
        return sum(1 for m in self.messages if m.topic == topic)

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (negative where nothing is committed)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found}


class RateProducer(threading.Thread):
    """Produces messages at a steady rate in the background, recording where each landed."""

    def __init__(self, bootstrap: str, topic: str, messages: Sequence[ToSend], rate: float, **config: Any) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.messages, self.rate = bootstrap, topic, messages, rate
        self.config = config
        self.sent: list[Sent] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        producer = make_producer(self.bootstrap, **{"linger.ms": 1, **self.config})
        chunk = max(1, int(self.rate / 20))
        try:
            for start in range(0, len(self.messages), chunk):
                began = time.monotonic()
                self.sent += produce(self.bootstrap, self.topic, self.messages[start:start + chunk], producer)
                time.sleep(max(0.0, 0.05 - (time.monotonic() - began)))
        except BaseException as exc:  # reported by the test that joins this thread
            self.error = exc
