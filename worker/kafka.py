"""Kafka adapters: batched consumption, producing with delivery tracking, and checkpoints.

A checkpoint is Kafka's at-least-once contract made explicit: flush the producer, make sure
every output and dead letter since the last checkpoint was acknowledged, and only then
commit the input offsets. If any delivery failed, nothing is committed and the affected
partitions are rewound to their last committed offsets, so the work is redone rather than
lost (duplicates are possible only for that in-flight work). A producer that hit a fatal
error (the idempotent producer's sequence broke, say) is replaced before the work is redone.
The exactly-once sibling, which commits through Kafka transactions, is in ``worker.transactions``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from worker.batching import BatchPolicy
from worker.errors import StartupError, WorkerError
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
        # With the prefetch queue capped (memory bound), librdkafka's default 1 s back-off after
        # reaching the cap starves the loop; refill promptly instead.
        "fetch.queue.backoff.ms": 20,
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
        "linger.ms": 1,
        "batch.num.messages": 10_000,
        "partitioner": "murmur2_random",  # keys land on the partitions Java clients would pick
        **common,
        **own,
        "enable.idempotence": True,
        "acks": "all",
    }


class BatchConsumer:
    """Hands out bounded batches: what is buffered at once, else the first event to arrive;
    then, if the policy's latency budget allows and more events are expected, a little more."""

    def __init__(self, consumer: Consumer, policy: BatchPolicy, idle_timeout_s: float = 0.1) -> None:
        self.consumer = consumer
        self.policy = policy
        self._idle = idle_timeout_s
        self._errors_logged = 0

    def next_batch(self) -> tuple[list[Message], int]:
        """The batch and when its first event was received (``perf_counter_ns``; 0 if empty)."""
        consumer, policy = self.consumer, self.policy
        messages = consumer.consume(policy.max_events, 0)
        if not messages:
            first = consumer.poll(self._idle)
            if first is None:
                policy.arrived(0, time.perf_counter())
                return [], 0
            messages = [first, *consumer.consume(policy.max_events - 1, 0)]
        received_ns = time.perf_counter_ns()
        policy.arrived(len(messages), received_ns / 1e9)
        wait = policy.wait_s(len(messages))
        if wait > 0:
            more = consumer.consume(policy.max_events - len(messages), wait)
            policy.arrived(len(more), time.perf_counter())
            messages += more
        return self._without_errors(messages), received_ns

    def _without_errors(self, messages: list[Any]) -> list[Message]:
        good = [m for m in messages if m.error() is None]
        if len(good) != len(messages):
            for m in messages:
                if m.error() is not None and self._errors_logged < 100:
                    self._errors_logged += 1
                    logger.warning("consumer error: %s", m.error())
        return good


def produce_when_room(producer: Producer, topic: str, value: bytes | None, key: bytes | None,
                      on_delivery: Callable[..., None], headers: Headers | None = None) -> None:
    """Produce, serving delivery reports while the producer's queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, on_delivery=on_delivery, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)


class BatchTicket:
    """Delivery callback for one batch's messages; when the last is acknowledged it reports
    the batch, with its timestamps, to the tracker's listener.

    Callbacks run on the delivery thread and, during a flush, on the loop's thread, hence the lock."""

    __slots__ = ("acked_ns", "consumed_ns", "failed", "generation", "left", "nbytes", "published_ns", "size",
                 "tracker")

    def __init__(self, tracker: DeliveryTracker, size: int, nbytes: int, consumed_ns: int) -> None:
        self.tracker = tracker
        self.generation = tracker.generation
        self.size = self.left = size
        self.nbytes = nbytes
        self.consumed_ns = consumed_ns
        self.published_ns = self.acked_ns = 0
        self.failed = False

    @property
    def acknowledged(self) -> bool:
        """Every output and dead letter of the batch is acknowledged by the broker."""
        return self.left == 0 and not self.failed

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        tracker = self.tracker
        with tracker.lock:
            self.left -= 1
            done = self.left == 0
            current = self.generation == tracker.generation
            if err is not None:
                self.failed = True
            if current:
                tracker.pending -= 1
                if done:
                    tracker.pending_bytes -= self.nbytes
                if err is not None:
                    tracker.failed.append(f"{msg.topic()}: {err}")
        if done and err is None and current and tracker.on_batch_acked is not None:
            self.acked_ns = time.perf_counter_ns()
            tracker.on_batch_acked(self)


class DeliveryTracker:
    """Counts outputs awaiting acknowledgement (and their bytes) and remembers failures.

    ``reset`` starts a new generation when the producer is replaced or a transaction aborted:
    reports about the earlier messages no longer count (their work is redone from the last commit)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending = 0
        self.pending_bytes = 0
        self.generation = 0
        self.failed: list[str] = []
        self.on_batch_acked: Callable[[BatchTicket], None] | None = None

    def ticket(self, size: int, consumed_ns: int, nbytes: int = 0) -> BatchTicket:
        with self.lock:
            self.pending += size
            self.pending_bytes += nbytes
            return BatchTicket(self, size, nbytes, consumed_ns)

    def fail(self, reason: str) -> None:
        with self.lock:
            self.failed.append(reason)

    def has_failures(self) -> bool:
        return bool(self.failed)

    def take_failures(self) -> list[str]:
        with self.lock:
            failed, self.failed = self.failed, []
        return failed

    def reset(self) -> None:
        with self.lock:
            self.generation += 1
            self.pending = self.pending_bytes = 0
            self.failed = []


class DeliveryThread(threading.Thread):
    """Serves the producer's delivery reports as they arrive, so acknowledgements are seen (and
    timed) when the broker sends them rather than whenever the loop next polls."""

    def __init__(self, sink: Sink, interval_s: float = 0.05) -> None:
        super().__init__(name="delivery-reports", daemon=True)
        self.sink = sink
        self.interval_s = interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            self.sink.producer.poll(self.interval_s)  # read each time: the sink may replace its producer

    def stop(self) -> None:
        self._stopped.set()
        self.join(self.interval_s * 4)


ProducerFactory = Callable[[Callable[[KafkaError], None]], Producer]


class Sink:
    """Produces predictions and dead letters, tracking every delivery.

    ``has_room`` tells the loop when the outputs awaiting acknowledgement reach the in-flight cap,
    so that it can wait (pausing its partitions and polling the consumer) before producing more,
    rather than blocking inside ``produce`` where the consumer is not polled. Given a factory
    (called with an error callback) rather than a producer, a producer that reports a fatal error
    is replaced by ``rebuild`` (the caller redoes the work since the last commit)."""

    def __init__(self, producer: Producer | ProducerFactory, output_topic: str, dlq_topic: str, group_id: str,
                 max_pending: int = 50_000, max_pending_bytes: int = 32 << 20) -> None:
        factory = callable(producer) and not isinstance(producer, Producer)
        self._new_producer: ProducerFactory | None = producer if factory else None  # type: ignore[assignment]
        self.producer: Producer = producer(self._on_error) if factory else producer  # type: ignore[operator,assignment]
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.group_id = group_id
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.tracker = DeliveryTracker()
        self.fatal: KafkaError | None = None

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err
            logger.error("the producer hit a fatal error: %s", err)
        else:
            logger.debug("producer: %s", err)  # transient (broker down...): librdkafka retries

    def has_room(self, count: int, nbytes: int) -> bool:
        tracker = self.tracker
        if tracker.pending == 0:
            return True
        return tracker.pending + count <= self.max_pending and tracker.pending_bytes + nbytes <= self.max_pending_bytes

    def rebuild(self) -> None:
        """Replace the producer (after a fatal error); what the old one held is dropped."""
        if self._new_producer is None:
            raise WorkerError(f"the producer hit a fatal error and cannot be replaced: {self.fatal}")
        old = self.producer
        old.purge(in_queue=True, in_flight=True)
        old.flush(0)
        self.tracker.reset()
        self.fatal = None
        self.producer = self._new_producer(self._on_error)
        logger.warning("producer replaced; redoing the work since the last commit")

    def publish(self, result: BatchResult, consumed_ns: int, headers: Headers | None = None) -> BatchTicket:
        callback = self.tracker.ticket(len(result.outputs) + len(result.dead_letters), consumed_ns,
                                       output_bytes(result))
        try:
            self._produce(result, callback, headers)
        except KafkaException as exc:
            # A fatal or transaction-state error: the checkpoint that follows redoes this work.
            error = exc.args[0] if exc.args else exc
            self.tracker.fail(f"produce refused: {error}")
            if isinstance(error, KafkaError) and error.fatal() and self.fatal is None:
                self.fatal = error
        callback.published_ns = time.perf_counter_ns()
        self.producer.poll(0)
        return callback

    def _produce(self, result: BatchResult, callback: BatchTicket, headers: Headers | None) -> None:
        produce, topic = self.producer.produce, self.output_topic
        for output in result.outputs:
            try:
                produce(topic, output.value, output.key, on_delivery=callback, headers=headers)
            except BufferError:
                # Rare: the loop waits for room before a batch; only a batch bigger than the slack
                # between that soft cap and the producer's own queue limit gets here.
                produce_when_room(self.producer, topic, output.value, output.key, callback, headers)
        for dead in result.dead_letters:
            produce_when_room(self.producer, self.dlq_topic, dead.message.value(), dead.message.key(), callback,
                              self.dead_letter_headers(dead, headers))

    def dead_letter_headers(self, dead: DeadLetter, extra: Headers | None) -> Headers:
        """The original headers first, then ``dlq.*`` ones; a batch header (``traceparent``) whose name
        the original already uses is written as ``dlq.<name>``, so the producer's stays the only one."""
        m = dead.message
        own = [
            ("source.topic", str(m.topic())), ("source.partition", str(m.partition())),
            ("source.offset", str(m.offset())), ("source.timestamp", str(m.timestamp()[1])),
            ("error.stage", dead.stage), ("error.type", dead.error_type),
            ("error.reason", dead.reason[:_REASON_LIMIT]), ("worker.group", self.group_id),
        ]
        original: Headers = m.headers() or []
        taken = {k for k, _ in original}
        added = [(DLQ_HEADER_PREFIX + k if k in taken else k, v) for k, v in extra or []]
        return [*original, *((DLQ_HEADER_PREFIX + k, v.encode()) for k, v in own), *added]


def output_bytes(result: BatchResult) -> int:
    """Bytes a batch puts in the producer's queue (values; keys and headers are small)."""
    return sum(len(o.value) for o in result.outputs) + sum(len(d.message.value() or b"") for d in result.dead_letters)


def owned_only(result: BatchResult, owned: Callable[[Message], bool]) -> None:
    """Drop the outputs (shadow ones too) and dead letters of events whose partitions this worker
    no longer owns."""
    result.outputs = [o for o in result.outputs if owned(o.source)]
    result.shadow_outputs = [o for o in result.shadow_outputs if owned(o.source)]
    result.dead_letters = [d for d in result.dead_letters if owned(d.message)]


@dataclass
class OffsetLedger:
    """Per partition: ``done``, the offset after the work whose outputs are all acknowledged;
    ``committed``, the last commit; and ``waiting``, produced batches (the offset after each, and
    its ticket) still awaiting acknowledgement, in order."""

    done: dict[TP, int] = field(default_factory=dict)
    committed: dict[TP, int] = field(default_factory=dict)
    waiting: dict[TP, deque[tuple[int, BatchTicket | None]]] = field(default_factory=dict)

    def track(self, messages: Sequence[Message], ticket: BatchTicket | None = None) -> None:
        """A batch was produced; without a ticket its work counts as done at once."""
        ends: dict[TP, int] = {}
        committed = self.committed
        for m in messages:
            tp: TP = (m.topic(), m.partition())  # type: ignore[assignment]  # set on consumed messages
            offset: int = m.offset()  # type: ignore[assignment]
            if tp not in committed:
                committed[tp] = offset  # nothing committed by us yet: rewinding starts here
            ends[tp] = offset + 1
        for tp, end in ends.items():
            self.waiting.setdefault(tp, deque()).append((end, ticket))
        self.settle()

    def settle(self, everything: bool = False) -> None:
        """Move each partition's leading acknowledged batches to ``done`` (all of them when a
        transaction makes them visible together with the offsets)."""
        for tp, queue in self.waiting.items():
            while queue and (everything or _settled(queue[0][1])):
                self.done[tp] = queue.popleft()[0]

    def uncommitted(self) -> dict[TP, int]:
        return {tp: o for tp, o in self.done.items() if self.committed.get(tp) != o}

    def rewound(self) -> None:
        """Everything after the last commit is redone."""
        self.done = dict(self.committed)
        self.waiting.clear()

    def forget(self, partitions: Iterable[TP]) -> None:
        for tp in partitions:
            self.done.pop(tp, None)
            self.committed.pop(tp, None)
            self.waiting.pop(tp, None)


def _settled(ticket: BatchTicket | None) -> bool:
    return ticket is None or ticket.acknowledged


class Checkpointer:
    """At-least-once checkpoints: commit offsets only past work whose every output the broker
    has acknowledged.

    A complete checkpoint (on revocation and shutdown) flushes the producer first, so that all
    work done is committed. The periodic one does not wait: it commits up to the acknowledged
    batches (tracked by their tickets) and leaves the rest for the next, so the loop never stalls
    on the broker's acknowledgements. A delivery that failed (or a producer that hit a fatal
    error) rewinds the consumer to the last commit instead: ``on_rewind`` then tells the loop to
    drop the work it holds, which is redone from there."""

    def __init__(self, consumer: Consumer, sink: Sink, interval_s: float, timeout_s: float = 10.0) -> None:
        self.consumer = consumer
        self.sink = sink
        self.ledger = OffsetLedger()
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.on_rewind: Callable[[], None] = lambda: None
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.interval_s

    def ready(self) -> bool:
        """Whether a batch may be produced now (a transaction being finished holds it back)."""
        return True

    def begin(self) -> None:
        """Called before a batch is produced (transactions start here; nothing to do otherwise)."""

    def checkpoint(self, partitions: Iterable[TP] | None = None, complete: bool = True) -> bool:
        """Commit what is acknowledged (after flushing, if ``complete``); returns False if nothing
        could be committed safely."""
        self._last = time.monotonic()
        if complete and (remaining := self.sink.producer.flush(self.timeout_s)):
            logger.warning("%d outputs still unacknowledged after %.0fs; offsets not committed (will retry)",
                           remaining, self.timeout_s)
            return False
        failures = self.sink.tracker.take_failures()
        if failures or self.sink.fatal is not None:
            self._redo(failures)
            return False
        self.ledger.settle()
        return self._commit(partitions)

    def _redo(self, failures: list[str]) -> None:
        logger.error("%d outputs were not delivered (first: %s); rewinding to the last commit to redo them",
                     len(failures), failures[0] if failures else self.sink.fatal)
        if self.sink.fatal is not None:
            self.sink.rebuild()
        self.rewind()

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

    def rewind(self) -> None:
        """Seek every owned partition back to its last commit; the loop drops what it holds."""
        for (topic, partition), offset in self.ledger.committed.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                logger.warning("cannot rewind %s[%d]: %s", topic, partition, exc)
        self.ledger.rewound()
        self.on_rewind()

    def drop(self, partitions: Iterable[TP]) -> None:
        """Partitions were revoked (after a checkpoint): forget them."""
        self.ledger.forget(partitions)

    def lost(self, partitions: Iterable[TP]) -> None:
        """Partitions were taken away without a chance to commit (their work may be redone elsewhere)."""
        self.ledger.forget(partitions)

    def close(self) -> None:
        """The worker is stopping, after its last checkpoint."""
        self.sink.producer.flush(self.timeout_s)


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
