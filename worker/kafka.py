"""Kafka adapters: batched consumption, producing with delivery tracking, and checkpoints.

A checkpoint is Kafka's at-least-once contract made explicit: flush the producer, make sure
every output and dead letter since the last checkpoint was acknowledged, and only then
commit the input offsets. If any delivery failed, nothing is committed and the affected
partitions are rewound to their last committed offsets, so the work is redone rather than
lost (duplicates are possible only for that in-flight work).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from worker.errors import StartupError
from worker.records import BatchResult, DeadLetter, Headers, Message

logger = logging.getLogger(__name__)

TP = tuple[str, int]
DLQ_HEADER_PREFIX = "dlq."
_REASON_LIMIT = 2000


def consumer_config(bootstrap_servers: str, group_id: str, common: dict[str, Any],
                    own: dict[str, Any]) -> dict[str, Any]:
    """The consumer's librdkafka config: the worker's required settings win over user tuning."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "partition.assignment.strategy": "cooperative-sticky",
        "fetch.wait.max.ms": 10,
        **common,
        **own,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
    }


def producer_config(bootstrap_servers: str, common: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap_servers,
        "linger.ms": 2,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 200_000,
        "partitioner": "murmur2_random",  # keys land on the partitions Java clients would pick
        **common,
        **own,
        "enable.idempotence": True,
        "acks": "all",
    }


class BatchConsumer:
    """Hands out bounded batches: what is buffered at once, else waits for the first event;
    then, if ``max_wait_s`` allows, waits a little for the batch to fill."""

    def __init__(self, consumer: Consumer, idle_timeout_s: float = 0.1) -> None:
        self.consumer = consumer
        self._idle = idle_timeout_s
        self._errors_logged = 0

    def next_batch(self, max_events: int, max_wait_s: float) -> list[Message]:
        consumer = self.consumer
        messages = consumer.consume(max_events, 0)
        if not messages:
            first = consumer.poll(self._idle)
            if first is None:
                return []
            messages = [first, *consumer.consume(max_events - 1, 0)]
        if len(messages) < max_events and max_wait_s > 0:
            messages += consumer.consume(max_events - len(messages), max_wait_s)
        return self._without_errors(messages)

    def _without_errors(self, messages: list[Any]) -> list[Message]:
        good = [m for m in messages if m.error() is None]
        if len(good) != len(messages):
            for m in messages:
                if m.error() is not None and self._errors_logged < 100:
                    self._errors_logged += 1
                    logger.warning("consumer error: %s", m.error())
        return good


class DeliveryTracker:
    """Counts delivery reports since the last checkpoint and remembers failures."""

    def __init__(self) -> None:
        self.pending = 0
        self.failed: list[str] = []
        self.failed_partitions: set[TP] = set()
        self.on_batch_acked: Callable[[int, int], None] | None = None

    def batch_callback(self, size: int, consumed_ns: int) -> Callable[[KafkaError | None, Any], None]:
        """A delivery callback for one batch's messages; reports the batch when the last is acked."""
        left = size
        self.pending += size

        def delivered(err: KafkaError | None, msg: Any) -> None:
            nonlocal left
            self.pending -= 1
            left -= 1
            if err is not None:
                self.failed.append(f"{msg.topic()}: {err}")
            elif left == 0 and self.on_batch_acked is not None:
                self.on_batch_acked(size, consumed_ns)

        return delivered


class Sink:
    """Produces predictions and dead letters; blocks (serving callbacks) while the queue is full."""

    def __init__(self, producer: Producer, output_topic: str, dlq_topic: str, group_id: str) -> None:
        self.producer = producer
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.group_id = group_id
        self.tracker = DeliveryTracker()

    def publish(self, result: BatchResult, consumed_ns: int, headers: Headers | None = None) -> None:
        size = len(result.outputs) + len(result.dead_letters)
        if not size:
            return
        callback = self.tracker.batch_callback(size, consumed_ns)
        produce, topic = self.producer.produce, self.output_topic
        for output in result.outputs:
            try:
                produce(topic, output.value, output.key, on_delivery=callback, headers=headers)
            except BufferError:
                self._produce_when_room(topic, output.value, output.key, callback, headers)
        for dead in result.dead_letters:
            self._produce_when_room(self.dlq_topic, dead.message.value(), dead.message.key(), callback,
                                    self.dead_letter_headers(dead, headers))
        self.producer.poll(0)

    def _produce_when_room(self, topic: str, value: bytes | None, key: bytes | None,
                           callback: Callable[..., None], headers: Headers | None) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=callback, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.05)

    def dead_letter_headers(self, dead: DeadLetter, extra: Headers | None) -> Headers:
        m = dead.message
        own = [
            ("source.topic", str(m.topic())), ("source.partition", str(m.partition())),
            ("source.offset", str(m.offset())), ("source.timestamp", str(m.timestamp()[1])),
            ("error.stage", dead.stage), ("error.type", dead.error_type),
            ("error.reason", dead.reason[:_REASON_LIMIT]), ("worker.group", self.group_id),
        ]
        return [*(m.headers() or []), *((DLQ_HEADER_PREFIX + k, v.encode()) for k, v in own), *(extra or [])]


@dataclass
class OffsetLedger:
    """Per partition: the offset to commit next (``done``) and the last committed one."""

    done: dict[TP, int] = field(default_factory=dict)
    committed: dict[TP, int] = field(default_factory=dict)

    def track(self, messages: Sequence[Message]) -> None:
        done, committed = self.done, self.committed
        for m in messages:
            tp: TP = (m.topic(), m.partition())  # type: ignore[assignment]  # set on consumed messages
            offset: int = m.offset()  # type: ignore[assignment]
            if tp not in committed:
                committed[tp] = offset  # nothing committed by us yet: rewinding starts here
            done[tp] = offset + 1

    def uncommitted(self) -> dict[TP, int]:
        return {tp: o for tp, o in self.done.items() if self.committed.get(tp) != o}

    def forget(self, partitions: Iterable[TP]) -> None:
        for tp in partitions:
            self.done.pop(tp, None)
            self.committed.pop(tp, None)


class Checkpointer:
    """At-least-once checkpoints: flush, verify every delivery, then commit offsets."""

    def __init__(self, consumer: Consumer, sink: Sink, interval_s: float, flush_timeout_s: float = 30.0) -> None:
        self.consumer = consumer
        self.sink = sink
        self.ledger = OffsetLedger()
        self.interval_s = interval_s
        self.flush_timeout_s = flush_timeout_s
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.interval_s

    def begin(self) -> None:
        """Called before a batch is produced (transactions start here; nothing to do otherwise)."""

    def checkpoint(self, partitions: Iterable[TP] | None = None) -> bool:
        """Commit what is acknowledged; returns False if nothing could be committed safely."""
        self._last = time.monotonic()
        remaining = self.sink.producer.flush(self.flush_timeout_s)
        if remaining:
            logger.warning("%d outputs still unacknowledged after %.0fs; offsets not committed",
                           remaining, self.flush_timeout_s)
            return False
        tracker = self.sink.tracker
        if tracker.failed:
            self._rewind(tracker.failed)
            return False
        return self._commit(partitions)

    def _commit(self, partitions: Iterable[TP] | None) -> bool:
        todo = self.ledger.uncommitted()
        if partitions is not None:
            wanted = set(partitions)
            todo = {tp: o for tp, o in todo.items() if tp in wanted}
        if not todo:
            return True
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in todo.items()], asynchronous=False)
        except KafkaException as exc:
            logger.warning("offset commit failed, will retry at the next checkpoint: %s", exc)
            return False
        self.ledger.committed.update(todo)
        return True

    def _rewind(self, failures: list[str]) -> None:
        logger.error("%d outputs were not delivered (first: %s); rewinding to the last commit to redo them",
                     len(failures), failures[0])
        for (topic, partition), offset in self.ledger.committed.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                logger.warning("cannot rewind %s[%d]: %s", topic, partition, exc)
        self.ledger.done = dict(self.ledger.committed)
        failures.clear()

    def drop(self, partitions: Iterable[TP]) -> None:
        self.ledger.forget(partitions)


def wait_for_topics(consumer: Consumer, topics: Sequence[str], timeout_s: float) -> None:
    """Block until the brokers answer and every topic exists, logging progress; else raise."""
    deadline = time.monotonic() + timeout_s
    attempt, delay = 0, 0.5
    while True:
        attempt += 1
        problem = _topics_problem(consumer, topics)
        if problem is None:
            logger.info("Kafka is ready; topics present: %s", ", ".join(topics))
            return
        if time.monotonic() + delay > deadline:
            raise StartupError(f"Kafka not ready after {timeout_s:.0f}s: {problem}")
        logger.warning("waiting for Kafka (attempt %d): %s", attempt, problem)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def _topics_problem(consumer: Consumer, topics: Sequence[str]) -> str | None:
    try:
        metadata = consumer.list_topics(timeout=5)
    except KafkaException as exc:
        return f"brokers unreachable ({exc.args[0] if exc.args else exc})"
    missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error is not None]
    if missing:
        return f"topic(s) {', '.join(missing)} do not exist (create them, e.g. `worker topics create`)"
    return None
