"""The consume → process → produce → checkpoint loop and its lifecycle.

The loop is single-threaded: rebalance callbacks run inside ``consume``/``poll``, so they
never race with a batch being processed. A batch that cannot be processed because a
dependency is down (Redis, Schema Registry) is held, its partitions paused, and retried
with backoff while the consumer keeps polling so the group does not evict this member.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from worker.batching import BatchPolicy
from worker.codecs import RegistryUnavailable
from worker.errors import FeatureStoreUnavailable
from worker.kafka import TP, BatchConsumer, BatchTicket, Checkpointer, DeliveryThread, Sink
from worker.pipeline import Pipeline
from worker.records import BatchResult, Headers, Message, StageTiming

logger = logging.getLogger(__name__)

TRANSIENT = (FeatureStoreUnavailable, RegistryUnavailable)


class Observer:
    """Listens to the loop's units of work (metrics, traces, progress logs); override what you need.

    ``batch_acked`` runs on the delivery-report thread; the others on the loop's thread."""

    def started(self) -> None:
        """The worker subscribed and is about to consume."""

    def batch_started(self, batch: Sequence[Message], received_ns: int) -> Headers | None:
        """A batch was consumed and is about to be processed; headers returned here are added to
        every output and dead letter it produces (a trace context, for instance)."""
        return None

    def idle(self) -> None:
        """A poll found no events: the loop is alive and has caught up with what was fetched."""

    def batch_done(self, batch: Sequence[Message], result: BatchResult, ticket: BatchTicket) -> None:
        """A batch was processed and its outputs handed to the producer (``result.timings`` has every stage)."""

    def batch_acked(self, ticket: BatchTicket) -> None:
        """The broker acknowledged every output of a batch."""

    def checkpoint_done(self, timing: StageTiming, committed: bool) -> None:
        """A checkpoint finished; ``committed`` is False if offsets could not be committed safely."""

    def dependency_down(self, what: str, error: Exception) -> None:
        """A batch is held because a dependency (Redis, Schema Registry) failed."""

    def partitions_changed(self, assigned: list[TP], revoked: list[TP]) -> None:
        """Partitions were assigned to, or taken from, this worker."""

    def stopped(self) -> None:
        """The worker has committed its last offsets and left the group."""


@dataclass(frozen=True)
class LoopSettings:
    max_events: int
    latency_budget_s: float
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0


class Runner:
    def __init__(self, consumer: Consumer, topics: list[str], pipeline: Pipeline, sink: Sink,
                 checkpointer: Checkpointer, settings: LoopSettings, observers: Sequence[Observer] = ()) -> None:
        self.consumer = consumer
        self.topics = topics
        self.pipeline = pipeline
        self.sink = sink
        self.checkpointer = checkpointer
        self.settings = settings
        self.observers = list(observers)
        self.policy = BatchPolicy(settings.max_events, settings.latency_budget_s)
        self.batches = BatchConsumer(consumer, self.policy)
        self.stopping = False
        self.assignment: set[TP] = set()
        sink.tracker.on_batch_acked = self._acked
        self.deliveries = DeliveryThread(sink.producer)

    def run(self, ready: Callable[[], None] | None = None) -> None:
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self.deliveries.start()
        logger.info("consuming %s", ", ".join(self.topics))
        if ready:
            ready()
        try:
            for observer in self.observers:
                observer.started()
            while not self.stopping:
                self.step()
        finally:
            self._shutdown()

    def step(self) -> None:
        batch, received_ns = self.batches.next_batch()
        if batch:
            self._handle(batch, received_ns)
        else:
            for observer in self.observers:
                observer.idle()
        if self.checkpointer.due():
            self._checkpoint()

    def _checkpoint(self) -> bool:
        start = time.perf_counter_ns()
        committed = self.checkpointer.checkpoint()
        timing = StageTiming("commit", start, time.perf_counter_ns())
        for observer in self.observers:
            observer.checkpoint_done(timing, committed)
        return committed

    def stop(self, *_: Any) -> None:
        if self.stopping:
            raise KeyboardInterrupt("second stop signal")
        logger.info("stop requested; finishing the batch in flight")
        self.stopping = True

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def _handle(self, batch: list[Message], received_ns: int) -> None:
        start = time.perf_counter_ns()
        headers = self._batch_started(batch, received_ns)
        result = self._process(batch)
        if result is None:
            return
        self.checkpointer.begin()
        produce_start = time.perf_counter_ns()
        ticket = self.sink.publish(result, received_ns, headers)
        result.timings.append(StageTiming("produce", produce_start, ticket.published_ns))
        self.policy.processed(len(batch), (ticket.published_ns - start) / 1e9)
        self.checkpointer.ledger.track(batch)
        for observer in self.observers:
            observer.batch_done(batch, result, ticket)

    def _batch_started(self, batch: list[Message], received_ns: int) -> Headers | None:
        headers: Headers | None = None
        for observer in self.observers:
            extra = observer.batch_started(batch, received_ns)
            if extra:
                headers = [*(headers or []), *extra]
        return headers

    def _process(self, batch: list[Message]) -> BatchResult | None:
        """Process, retrying while a dependency is down; None if the batch's partitions went away."""
        delay = self.settings.retry_initial_s
        paused: list[TopicPartition] = []
        try:
            while True:
                try:
                    return self.pipeline.process(batch)
                except TRANSIENT as exc:
                    self._notify_down(exc)
                    paused = paused or self._pause()
                    batch = self._wait_and_keep_owned(batch, delay)
                    if not batch or self.stopping:
                        return None
                    delay = min(delay * 2, self.settings.retry_max_s)
        finally:
            if paused:
                self.consumer.resume(paused)
                logger.info("dependency is back; resumed %d partitions", len(paused))

    def _notify_down(self, exc: Exception) -> None:
        logger.warning("cannot process the batch, will retry: %s", exc)
        for observer in self.observers:
            observer.dependency_down(type(exc).__name__, exc)

    def _pause(self) -> list[TopicPartition]:
        partitions = [TopicPartition(t, p) for t, p in self.assignment]
        if partitions:
            self.consumer.pause(partitions)
        return partitions

    def _wait_and_keep_owned(self, batch: list[Message], delay: float) -> list[Message]:
        """Poll while waiting (keeps the membership alive), then drop revoked partitions' events."""
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self.stopping:
            stray = self.consumer.poll(min(0.1, max(deadline - time.monotonic(), 0)))
            if stray is not None and stray.error() is None:
                batch.append(stray)
        return [m for m in batch if (m.topic(), m.partition()) in self.assignment]

    def _acked(self, ticket: BatchTicket) -> None:
        self.policy.acknowledged((ticket.acked_ns - ticket.published_ns) / 1e9)
        for observer in self.observers:
            observer.batch_acked(ticket)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        added = [(p.topic, p.partition) for p in partitions]
        self.assignment.update(added)
        logger.info("assigned %s", _describe(added))
        for observer in self.observers:
            observer.partitions_changed(added, [])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [(p.topic, p.partition) for p in partitions]
        self._checkpoint()
        self._forget(revoked, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget([(p.topic, p.partition) for p in partitions], "lost (not committed)")

    def _forget(self, partitions: list[TP], how: str) -> None:
        self.checkpointer.drop(partitions)
        self.assignment.difference_update(partitions)
        logger.info("%s %s", how, _describe(partitions))
        for observer in self.observers:
            observer.partitions_changed([], partitions)

    def _shutdown(self) -> None:
        logger.info("shutting down: flushing outputs and committing offsets")
        try:
            self._checkpoint()
        finally:
            self.consumer.close()
            self.deliveries.stop()
            self.sink.producer.flush(10)
        for observer in self.observers:
            observer.stopped()
        logger.info("stopped")


def _describe(partitions: list[TP]) -> str:
    if not partitions:
        return "no partitions"
    by_topic: dict[str, list[int]] = {}
    for topic, partition in partitions:
        by_topic.setdefault(topic, []).append(partition)
    return "; ".join(f"{t}{sorted(ps)}" for t, ps in by_topic.items())
