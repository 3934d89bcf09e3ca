"""The consume → process → produce → checkpoint loop and its lifecycle.

The loop is single-threaded: rebalance callbacks run inside ``consume``/``poll``, so they
never race with a batch being processed. The loop never blocks without polling the consumer
for long, so the group does not evict this member while something is down:

- a batch that cannot be processed because a dependency is down (Redis, Schema Registry) is
  held, its partitions paused, and retried with capped backoff; Redis is probed with PING
  meanwhile so the batch is retried as soon as it answers. With ``degrade_after`` set, a batch
  is instead scored with default features after that many failed attempts, and marked;
- a batch whose outputs would push the producer's unacknowledged backlog past its cap (the
  broker is slow or gone), or that must wait for a transaction to finish committing, is held
  the same way until the broker catches up.

Revoked partitions are committed in the revoke callback before they move, and no output is
published for an event whose partition was revoked while its batch was in hand.

The loop talks to Kafka only through the port (``worker.kafka.port``), so its unit tests run it on
the in-memory broker (``worker.kafka.memory``), step by step.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from worker.errors import BrokerUnavailable, FeatureStoreUnavailable, RegistryUnavailable, WorkerError
from worker.kafka.checkpoint import Checkpointer
from worker.kafka.port import Consumer, Rebalance
from worker.kafka.sink import DeliveryThread, Sink, output_bytes
from worker.records import TP, BatchResult, Delivery, Headers, Message, StageTiming
from worker.runner.batching import FIXED, Adaptive, BatchConsumer, BatchPolicy
from worker.runner.observer import Observer
from worker.runner.stall import OutputWatch, Stall, StallWatch

logger = logging.getLogger(__name__)

TRANSIENT = (FeatureStoreUnavailable, RegistryUnavailable)


class BatchProcessor(Protocol):
    """What the loop needs of the pipeline (``worker.pipeline.pipeline.Pipeline``)."""

    def process(self, messages: Sequence[Message], degraded: bool = False) -> BatchResult:
        """Score a batch (with default features if ``degraded``); raises ``FeatureStoreUnavailable``
        or ``RegistryUnavailable`` while a dependency is down, so the batch can be retried."""


@dataclass(frozen=True)
class LoopSettings:
    max_events: int
    latency_budget_s: float
    retry_initial_s: float = 0.1
    retry_max_s: float = 1.0
    probe_interval_s: float = 0.2
    degrade_after: int | None = None  # failed attempts before scoring with default features; None: never
    assignment_timeout_s: float = 60.0  # no assignment this long after joining: leave and join again
    stall_report_s: float = 30.0  # assigned partitions with events waiting, nothing received this long: say why
    adaptive: Adaptive = FIXED  # how batches linger while the broker is slow


DEGRADED_HEADER: Headers = [("x-worker-degraded", b"1")]


class Runner:
    """The loop. ``run`` is ``start``, ``step`` until ``stop``, then ``close``; tests drive the steps
    themselves. ``serve_deliveries`` starts a thread that serves the producer's delivery reports as
    they arrive (without it, they are served when the loop polls the producer). ``outputs`` watches the
    output partitions for transactions left open on them (exactly-once mode)."""

    def __init__(self, consumer: Consumer, topics: list[str], pipeline: BatchProcessor, sink: Sink,
                 checkpointer: Checkpointer, settings: LoopSettings, observers: Sequence[Observer] = (),
                 probe: Callable[[], None] | None = None, serve_deliveries: bool = True,
                 outputs: OutputWatch | None = None) -> None:
        self.consumer = consumer
        self.topics = topics
        self.pipeline = pipeline
        self.sink = sink
        self.checkpointer = checkpointer
        self.settings = settings
        self.observers = list(observers)
        self.probe = probe  # raises FeatureStoreUnavailable while the feature store is down
        self.policy = BatchPolicy(settings.max_events, settings.latency_budget_s, settings.adaptive)
        self.batches = BatchConsumer(consumer, self.policy)
        self.stopping = False
        self.assignment: set[TP] = set()
        self.degraded = False
        self._paused = False
        self._held: list[Message] = []  # polled while paused; processed next
        self._revoked: set[TP] = set()  # taken away since the batch in hand was fetched
        self._restart_from: dict[TP, int] = {}  # their last commit when they were taken away
        self._stale = False  # the consumer was rewound since the batch in hand was fetched
        self._last_probe = 0.0
        self._fatal: WorkerError | None = None  # raised by a rebalance callback; re-raised by the loop
        self._listener = Rebalance(self._on_assign, self._on_revoke, self._on_lost)
        self._joining_since: float | None = None  # joined (or lost its partitions), no assignment yet
        self.stalls = StallWatch(consumer, settings.stall_report_s)
        self.outputs = outputs
        sink.on_acknowledged(self._acked)
        checkpointer.on_rewind = self._rewound
        self.deliveries = DeliveryThread(sink) if serve_deliveries else None

    def run(self, ready: Callable[[], None] | None = None) -> None:
        self.start()
        if ready:
            ready()
        try:
            for observer in self.observers:
                observer.started()
            while not self.stopping:
                self.step()
        finally:
            self.close()

    def start(self) -> None:
        """Join the group (partitions come with the next polls)."""
        self.consumer.subscribe(self.topics, self._listener)
        self._joining_since = time.monotonic()
        if self.deliveries is not None:
            self.deliveries.start()
        logger.info("consuming %s", ", ".join(self.topics))

    def step(self) -> None:
        batch, received_ns = self._next_batch()
        if batch:
            self.stalls.received(batch)
            self._handle(batch, received_ns)
        else:
            for observer in self.observers:
                observer.idle()
        if self.checkpointer.due():
            self._checkpoint(complete=False)
        if self._joining_since is not None:
            self._watch_join()
        self._watch_progress()
        self._watch_outputs()
        if self._fatal is not None:
            raise self._fatal

    def _watch_join(self) -> None:
        """A join that never completes must not leave the worker silent: a broker's coordinator can
        lose it (seen on tansu when another member leaves during the join; README, broker notes).
        After ``assignment_timeout_s`` without an assignment (even an empty one), say so and join
        again."""
        waited = time.monotonic() - (self._joining_since or 0.0)
        if waited < self.settings.assignment_timeout_s:
            return
        logger.warning("no partition assignment %.0f s after joining the group: the group coordinator has not "
                       "completed the join; leaving and joining again", waited)
        self.consumer.unsubscribe()
        self.consumer.subscribe(self.topics, self._listener)
        self._joining_since = time.monotonic()
        for observer in self.observers:
            observer.rejoined(waited)

    def _watch_progress(self) -> None:
        """Assigned partitions with events waiting that hand out nothing for ``stall_report_s`` must not
        leave the worker silent: say, once per period, what their reading waits for (an open
        transaction, a fetch position that never came, a broker that returns nothing)."""
        stalls = self.stalls.check()
        if stalls is None:
            return
        if stalls:
            logger.warning("no events for %.0f s from %d assigned partitions although events wait there: %s",
                           self.settings.stall_report_s, len(stalls), _describe_stalls(stalls))
        for observer in self.observers:
            observer.stalled(stalls)

    def _watch_outputs(self) -> None:
        """Outputs scored and acknowledged but held from read_committed readers by a transaction nobody
        ends must not go unsaid either: the worker's own progress looks normal meanwhile."""
        held = self.outputs.check() if self.outputs is not None else None
        if held is None:
            return
        if held:
            logger.warning("outputs held from read_committed readers on %d partitions: %s", len(held),
                           _describe_stalls(held))
        for observer in self.observers:
            observer.outputs_held(held)

    def _next_batch(self) -> tuple[list[Message], int]:
        """The next batch: events held while paused first, then what the consumer hands out;
        without events of partitions revoked meanwhile, and none at all if the consumer was
        rewound meanwhile (everything after the last commit comes again)."""
        self._revoked.clear()
        self._restart_from.clear()
        self._stale = False
        batch, received_ns = self.batches.next_batch()
        if self._held:
            batch, self._held = self._held + batch, []
            received_ns = received_ns or time.perf_counter_ns()
        if self._stale:
            return [], 0
        if not self._revoked:
            return batch, received_ns
        self._fetch_again(batch)
        return self._owned(batch), received_ns

    def _fetch_again(self, batch: list[Message]) -> None:
        """Partitions revoked and assigned again while the batch was gathered (an eager assignor,
        range or roundrobin, gives every partition back at each rebalance): their events in the
        batch are dropped with the old assignment's, yet some may have been handed out again after
        the new assignment, from the last commit, and the consumer's position is past them. Fetch
        them again from the first one dropped, or the next batch's commit skips them (seen in the
        noida-db exactly-once soak: 10 events never scored, their offsets committed). From the last
        commit, if it is earlier: a revocation whose commit did not go through (its flush timed out)
        leaves work before the batch uncommitted, and the new assignment starts there. Where nothing
        of the new assignment was fetched yet, the group's committed offset may win over the seek
        (librdkafka means seek for partitions already fetched): it is never past what was dropped,
        so that redoes more and skips nothing (tests/integration/test_eager_rebalance.py)."""
        again = self._revoked & self.assignment
        first: dict[TP, int] = {}
        for message in batch:
            tp: TP = (message.topic(), message.partition())  # type: ignore[assignment]  # set when consumed
            if tp in again:
                offset: int = message.offset()  # type: ignore[assignment]
                first[tp] = min(first.get(tp, offset), offset)
        for tp, dropped in first.items():
            offset = min(dropped, self._restart_from.get(tp, dropped))
            logger.info("fetching %s[%d] again from offset %d: assigned again while a batch was gathered",
                        tp[0], tp[1], offset)
            try:
                self.consumer.seek(tp, offset)
            except WorkerError as exc:  # stop before a commit skips them: a restart starts from the last one
                raise WorkerError(f"cannot fetch {tp[0]}[{tp[1]}] again from offset {offset} after a rebalance; "
                                  f"stopping so that they are redone from the last commit: {exc}") from exc

    def _checkpoint(self, complete: bool = True) -> bool:
        start = time.perf_counter_ns()
        committed = self.checkpointer.checkpoint(complete=complete)
        timing = StageTiming("commit", start, time.perf_counter_ns())
        for observer in self.observers:
            observer.checkpoint_done(timing, committed)
        return committed

    def stop(self, *_: Any) -> None:
        if self.stopping:
            raise KeyboardInterrupt("second stop signal")
        logger.info("stopping: finishing the batch in flight, then committing (a second signal stops at once)")
        self.stopping = True

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop()

    def _handle(self, batch: list[Message], received_ns: int) -> None:
        start = time.perf_counter_ns()
        headers = self._batch_started(batch, received_ns)
        processed = self._process(batch)
        if processed is None:
            return
        batch, result = processed
        if not self._wait_until_publishable(result):
            return
        if self._revoked:
            batch = self._owned(batch)
            owned_only(result, self._is_owned)
        self.checkpointer.begin()
        produce_start = time.perf_counter_ns()
        if result.degraded:
            headers = [*(headers or []), *DEGRADED_HEADER]
        ticket = self.sink.publish(result, received_ns, headers)
        delivery = ticket.delivery
        result.timings.append(StageTiming("produce", produce_start, delivery.published_ns))
        self.policy.processed(len(batch), (delivery.published_ns - start) / 1e9)
        self.checkpointer.track(batch, ticket)
        for observer in self.observers:
            observer.batch_done(batch, result, delivery)

    def _batch_started(self, batch: list[Message], received_ns: int) -> Headers | None:
        headers: Headers | None = None
        for observer in self.observers:
            extra = observer.batch_started(batch, received_ns)
            if extra:
                headers = [*(headers or []), *extra]
        return headers

    # --- a dependency (Redis, Schema Registry) down ---------------------------------------------

    def _process(self, batch: list[Message]) -> tuple[list[Message], BatchResult] | None:
        """Process, retrying while a dependency is down (partitions paused, consumer polled);
        None if the batch's partitions went away, the consumer was rewound, or the worker stops."""
        delay, attempt = self.settings.retry_initial_s, 0
        try:
            while True:
                try:
                    return batch, self._run_pipeline(batch)
                except TRANSIENT as exc:
                    attempt += 1
                    self._notify_down(exc)
                    self._pause()
                    if self._may_degrade(exc, attempt):
                        continue
                    batch = self._wait_and_keep_owned(batch, delay, isinstance(exc, FeatureStoreUnavailable))
                    if not batch or self.stopping or self._stale:
                        return None
                    delay = min(delay * 2, self.settings.retry_max_s)
        finally:
            if self._paused:
                self._resume("dependency is back")

    def _run_pipeline(self, batch: list[Message]) -> BatchResult:
        if self.degraded and self._probe_due() and self._probe_ok():
            self.degraded = False
            logger.info("the feature store answers again; scoring with features")
        result = self.pipeline.process(batch, degraded=self.degraded)
        result.degraded = self.degraded
        return result

    def _may_degrade(self, exc: Exception, attempt: int) -> bool:
        limit = self.settings.degrade_after
        if limit is None or not isinstance(exc, FeatureStoreUnavailable) or attempt <= limit:
            return False
        logger.warning("the feature store is down; scoring with default features until it answers")
        self.degraded = True
        self._last_probe = time.monotonic()
        return True

    def _notify_down(self, exc: Exception) -> None:
        logger.warning("cannot process the batch, will retry: %s", exc)
        for observer in self.observers:
            observer.dependency_down("redis" if isinstance(exc, FeatureStoreUnavailable) else "schema_registry", exc)

    def _wait_and_keep_owned(self, batch: list[Message], delay: float, probe: bool) -> list[Message]:
        """Poll while waiting (keeps the membership alive), ending early when a feature store probe
        answers; then drop revoked partitions' events."""
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self.stopping:
            self._poll_paused(min(self.settings.probe_interval_s / 2, max(deadline - time.monotonic(), 0)))
            if probe and self._probe_due() and self._probe_ok():
                break
        return self._owned(batch)

    def _probe_due(self) -> bool:
        return self.probe is not None and time.monotonic() - self._last_probe >= self.settings.probe_interval_s

    def _probe_ok(self) -> bool:
        assert self.probe is not None
        self._last_probe = time.monotonic()
        try:
            self.probe()
        except FeatureStoreUnavailable:
            return False
        return True

    # --- the broker slow or down ---------------------------------------------------------------

    def _wait_until_publishable(self, result: BatchResult) -> bool:
        """Wait, partitions paused and consumer polled, while the producer's backlog is at its cap
        or a transaction is being finished; False if the batch must be dropped meanwhile (the
        consumer was rewound, or the worker stops: it is redone from the last commit)."""
        count, nbytes = len(result.outputs) + len(result.dead_letters), output_bytes(result)
        if self.checkpointer.ready() and self.sink.has_room(count, nbytes):
            return True
        logger.warning("holding the batch: %d outputs await acknowledgement%s", self.sink.pending,
                       "" if self.checkpointer.ready() else " and a transaction awaits its commit")
        down = BrokerUnavailable(f"{self.sink.pending} outputs unacknowledged")
        for observer in self.observers:
            observer.dependency_down("kafka", down)
        self._pause()
        try:
            while not (self.stopping or self._stale):
                self._poll_paused(0.1)
                if not self.checkpointer.ready() or self.checkpointer.due():
                    self._checkpoint(complete=False)
                if self.checkpointer.ready() and self.sink.has_room(count, nbytes):
                    return not self._stale
            return False
        finally:
            self._resume("the broker caught up")

    # --- pausing, rebalances, rewinds ----------------------------------------------------------

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self.consumer.pause(sorted(self.assignment))

    def _resume(self, why: str) -> None:
        self._paused = False
        self.stalls.restart()
        partitions = sorted(self.assignment)
        self.consumer.resume(partitions)
        logger.info("%s; resumed %d partitions", why, len(partitions))

    def _poll_paused(self, timeout_s: float) -> None:
        """Poll while paused: serves the group protocol and rebalance callbacks; an event that
        still arrives is held for the next batch."""
        stray = self.consumer.poll(timeout_s)
        if stray is not None:
            self._held.append(stray)

    def _is_owned(self, message: Message) -> bool:
        tp = (message.topic(), message.partition())
        return tp in self.assignment and tp not in self._revoked

    def _owned(self, messages: list[Message]) -> list[Message]:
        return [m for m in messages if self._is_owned(m)]

    def _rewound(self) -> None:
        self._held = []
        self._stale = True

    def _acked(self, delivery: Delivery) -> None:
        self.policy.acknowledged((delivery.acked_ns - delivery.published_ns) / 1e9, delivery.size)
        for observer in self.observers:
            observer.batch_acked(delivery)

    def _on_assign(self, added: list[TP]) -> None:
        self._joining_since = None
        self.assignment.update(added)
        if self._paused:
            self.consumer.pause(added)
        self.stalls.assigned(added)
        logger.info("assigned %s", _describe(added))
        for observer in self.observers:
            observer.partitions_changed(added, [])

    def _on_revoke(self, revoked: list[TP]) -> None:
        try:
            self._checkpoint()
        except WorkerError as exc:  # raised once the callback returned: the rebalance must complete
            self._fatal = exc
        self._restart_from.update(self.checkpointer.last_commits(revoked))
        self.checkpointer.drop(revoked)
        self._forget(revoked, "revoked")

    def _on_lost(self, lost: list[TP]) -> None:
        self._joining_since = time.monotonic()  # the consumer joins again; the next assignment ends it
        try:
            self.checkpointer.lost(lost)
        except WorkerError as exc:
            self._fatal = exc
        self._forget(lost, "lost (not committed)")

    def _forget(self, partitions: list[TP], how: str) -> None:
        self.assignment.difference_update(partitions)
        self.stalls.revoked(partitions)
        self._revoked.update(partitions)
        self._held = self._owned(self._held)
        logger.info("%s %s", how, _describe(partitions))
        for observer in self.observers:
            observer.partitions_changed([], partitions)

    def close(self) -> None:
        """Commit what was done (after flushing), leave the group and stop producing."""
        logger.info("shutting down: flushing outputs and committing offsets")
        try:
            if self._fatal is None:
                self._checkpoint()
        finally:
            try:
                self.consumer.close()
            finally:
                self.checkpointer.close()
                if self.deliveries is not None:
                    self.deliveries.stop()
                self.sink.flush(10)
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


def _describe_stalls(stalls: list[Stall], most: int = 5) -> str:
    shown = "; ".join(f"{t}[{p}]: {s.detail}" for s in stalls[:most] for t, p in [s.partition])
    return shown + (f"; and {len(stalls) - most} more" if len(stalls) > most else "")


def owned_only(result: BatchResult, owned: Callable[[Message], bool]) -> None:
    """Drop the outputs (shadow ones too) and dead letters of events whose partitions this worker
    no longer owns."""
    result.outputs = [o for o in result.outputs if owned(o.source)]
    result.shadow_outputs = [o for o in result.shadow_outputs if owned(o.source)]
    result.dead_letters = [d for d in result.dead_letters if owned(d.message)]
