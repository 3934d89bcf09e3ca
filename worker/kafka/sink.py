"""Producing predictions and dead letters, tracking every delivery.

Each batch's outputs share one ticket (whose callback each is produced with), which counts them down as the
broker acknowledges them; the checkpoints (``worker.kafka.checkpoint``) commit input offsets
only past batches whose ticket is settled. A producer that hit a fatal error is replaced
(``Sink.rebuild``) and the work since the last commit redone.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

from worker.kafka.port import BrokerError, DeliveryCallback, Fault, Producer, ProducerFactory
from worker.records import BatchResult, DeadLetter, Delivery, Headers

logger = logging.getLogger(__name__)

DLQ_HEADER_PREFIX = "dlq."
_REASON_LIMIT = 2000


def produce_when_room(producer: Producer, topic: str, value: bytes | None, key: bytes | None,
                      on_delivery: DeliveryCallback, headers: Headers | None = None) -> None:
    """Produce, serving delivery reports while the producer's queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, on_delivery=on_delivery, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)


class BatchTicket:
    """One batch's deliveries: ``on_delivery``, the callback each of its messages is produced with,
    counts them down as the broker acknowledges them; the last stamps the batch's ``Delivery`` and
    reports it to the tracker's listener.

    Per message the callback does as little as it can (a call, a test, ``next`` of a counter): it
    runs for every output. A method taking the tracker's lock per message took 515 ns a report,
    this 90-107 ns (``callback_alone_ns`` of ``python -m bench.deliveries``), beside the
    2-3 µs of CPU librdkafka spends per message. ``next`` of an ``itertools.count`` runs under the GIL
    in one step, so reports served on two threads at once (the delivery thread, a flush on the
    loop's) count each message once; the lock is taken per batch and per failure."""

    __slots__ = ("_reported", "delivery", "failed", "generation", "on_delivery", "settled", "tracker")

    def __init__(self, tracker: DeliveryTracker, delivery: Delivery) -> None:
        self.tracker = tracker
        self.generation = tracker.generation
        self.delivery = delivery
        self.failed = False
        self.settled = delivery.size == 0
        self._reported = False
        self.on_delivery = self._callback()

    def _callback(self) -> DeliveryCallback:
        counted, size, failure, settle = itertools.count(1), self.delivery.size, self._failure, self._settle

        def delivered(err: object | None, msg: object) -> None:
            if err is not None:
                failure(err, msg)
            if next(counted) == size:
                settle()
        return delivered

    @property
    def acknowledged(self) -> bool:
        """Every output and dead letter of the batch is acknowledged by the broker."""
        return self.settled and not self.failed

    def _failure(self, err: object, msg: object) -> None:
        tracker = self.tracker
        with tracker.lock:
            self.failed = True
            if self.generation == tracker.generation:
                tracker.failed.append(f"{msg.topic()}: {err}")  # type: ignore[attr-defined]  # a message

    def _settle(self) -> None:
        tracker = self.tracker
        with tracker.lock:
            if not self._release() or self.failed:
                return
            self.delivery.acked_ns = time.perf_counter_ns()
            report = self._report_once()
        if report and tracker.on_batch_acked is not None:
            tracker.on_batch_acked(self.delivery)

    def abandon(self) -> None:
        """Producing the batch failed partway: what was produced may still be reported, but the batch
        is settled as failed now, and no longer counts as awaiting acknowledgement."""
        with self.tracker.lock:
            self.failed = True
            self._release()

    def _release(self) -> bool:
        """Under the lock: settle the batch (once) and take it out of the tracker's count; True if this
        call did so in the tracker's current generation."""
        if self.settled:
            return False
        self.settled = True
        tracker = self.tracker
        if self.generation != tracker.generation:
            return False
        tracker.pending -= self.delivery.size
        tracker.pending_bytes -= self.delivery.nbytes
        return True

    def published(self) -> None:
        """The batch is handed to the producer: stamp it, and report an acknowledgement that came first."""
        with self.tracker.lock:
            self.delivery.published_ns = time.perf_counter_ns()
            acked_early = self.delivery.acked_ns != 0
            if acked_early:  # acknowledged while its last messages were still being produced: no wait at all
                self.delivery.acked_ns = self.delivery.published_ns
            report = acked_early and self._report_once()
        if report and self.tracker.on_batch_acked is not None:
            self.tracker.on_batch_acked(self.delivery)

    def _report_once(self) -> bool:
        """Under the lock: True the first time the batch is both published and acknowledged."""
        if self._reported or not self.delivery.published_ns or not self.delivery.acked_ns:
            return False
        self._reported = True
        return True


class DeliveryTracker:
    """Counts the outputs of batches awaiting acknowledgement (and their bytes; a batch leaves the
    count when its last report comes) and remembers failures.

    ``reset`` starts a new generation when the producer is replaced or a transaction aborted:
    reports about the earlier messages no longer count (their work is redone from the last commit)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending = 0
        self.pending_bytes = 0
        self.generation = 0
        self.failed: list[str] = []
        self.on_batch_acked: Callable[[Delivery], None] | None = None

    def ticket(self, size: int, consumed_ns: int, nbytes: int = 0) -> BatchTicket:
        with self.lock:
            self.pending += size
            self.pending_bytes += nbytes
            return BatchTicket(self, Delivery(size, nbytes, consumed_ns))

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
        reported = False
        while not self._stopped.is_set():
            try:
                self.sink.producer.poll(self.interval_s)  # read each time: the sink may replace its producer
            except BrokerError as exc:  # the loop handles it (a fatal error replaces or fences the producer)
                if not reported:
                    logger.debug("delivery reports: %s", exc)
                    reported = True
                self._stopped.wait(self.interval_s)

    def stop(self) -> None:
        self._stopped.set()
        self.join(self.interval_s * 4)


class Sink:
    """Produces predictions and dead letters, tracking every delivery.

    ``has_room`` tells the loop when the outputs awaiting acknowledgement reach the in-flight cap,
    so that it can wait (pausing its partitions and polling the consumer) before producing more,
    rather than blocking inside ``produce`` where the consumer is not polled. The producer comes
    from a factory (called with an error callback), so that one that reports a fatal error can be
    replaced by ``rebuild`` (the caller redoes the work since the last commit)."""

    def __init__(self, new_producer: ProducerFactory, output_topic: str, dlq_topic: str, group_id: str,
                 max_pending: int = 50_000, max_pending_bytes: int = 32 << 20) -> None:
        self._new_producer = new_producer
        self.producer = new_producer(self._on_error)
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.group_id = group_id
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.tracker = DeliveryTracker()
        self.fatal: Fault | None = None

    def _on_error(self, fault: Fault) -> None:
        if fault.fatal:
            self.fatal = fault
            logger.error("the producer hit a fatal error: %s", fault)
        else:
            logger.debug("producer: %s", fault)  # transient (broker down...): the client retries

    def on_acknowledged(self, listener: Callable[[Delivery], None]) -> None:
        """``listener`` is told of each batch whose every output the broker acknowledged (on the
        thread serving delivery reports)."""
        self.tracker.on_batch_acked = listener

    @property
    def pending(self) -> int:
        """Outputs and dead letters of the batches not yet wholly acknowledged (counted per batch)."""
        return self.tracker.pending

    def flush(self, timeout_s: float) -> int:
        """Wait for every acknowledgement; returns how many are still missing."""
        return self.producer.flush(timeout_s)

    def has_room(self, count: int, nbytes: int) -> bool:
        tracker = self.tracker
        if tracker.pending == 0:
            return True
        return tracker.pending + count <= self.max_pending and tracker.pending_bytes + nbytes <= self.max_pending_bytes

    def rebuild(self) -> None:
        """Replace the producer (after a fatal error); what the old one held is dropped."""
        old = self.producer
        old.purge()
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
        except BrokerError as exc:
            # A fatal or transaction-state error: the checkpoint that follows redoes this work.
            callback.abandon()
            self.tracker.fail(f"produce refused: {exc.fault}")
            if exc.fault.fatal and self.fatal is None:
                self.fatal = exc.fault
        callback.published()
        try:
            self.producer.poll(0)
        except BrokerError as exc:  # the same as a refused produce: the next checkpoint sees it
            if exc.fault.fatal and self.fatal is None:
                self.fatal = exc.fault
        return callback

    def _produce(self, result: BatchResult, ticket: BatchTicket, headers: Headers | None) -> None:
        produce, topic, callback = self.producer.produce, self.output_topic, ticket.on_delivery
        for output in result.outputs:
            own = headers if output.headers is None else [*(headers or []), *output.headers]
            try:
                produce(topic, output.value, output.key, on_delivery=callback, headers=own)
            except BufferError:
                # Rare: the loop waits for room before a batch; only a batch bigger than the slack
                # between that soft cap and the producer's own queue limit gets here.
                produce_when_room(self.producer, topic, output.value, output.key, callback, own)
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
