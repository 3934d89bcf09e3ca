"""Exactly-once checkpoints: consume-transform-produce in Kafka transactions.

Each checkpoint interval is one transaction: the batches' predictions and dead letters are
produced inside it, and the input offsets are added to it with the consumer's group metadata
(``send_offsets_to_transaction``), so the outputs and the progress they stand for commit or
abort together. Consumers of the outputs reading with ``isolation.level=read_committed`` then
see every event once, whatever crashes, rebalances or broker stalls happen:

- a failed delivery or commit aborts the transaction and rewinds the consumer to the last
  commit, so the work is redone in a fresh transaction;
- a commit that times out (broker slow or gone) is retried, and nothing else is produced
  until it went through: the loop meanwhile keeps polling with its partitions paused;
- revoked partitions are committed before they move (the loop checkpoints in its revoke
  callback); lost ones (the group moved on without us) abort the transaction;
- a zombie is fenced by the broker (its transactional id was taken over, or, with KIP-447,
  its consumer group generation is stale): a producer fenced by a newer instance stops the
  worker (``ProducerFenced``); any other fatal producer error replaces the producer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from enum import Enum

from worker.errors import ProducerFenced, StartupError
from worker.kafka.checkpoint import Checkpointer
from worker.kafka.port import BrokerError, Consumer, Fault
from worker.kafka.sink import Sink
from worker.records import TP

logger = logging.getLogger(__name__)


class _State(Enum):
    IDLE = "idle"  # no transaction open
    OPEN = "open"  # batches were produced in the open transaction
    COMMITTING = "committing"  # a commit timed out; it must be retried before anything else
    ABORTING = "aborting"  # an abort timed out; likewise


class TransactionalCheckpointer(Checkpointer):
    """Commits outputs and input offsets atomically, one transaction per checkpoint."""

    def __init__(self, consumer: Consumer, sink: Sink, interval_s: float, timeout_s: float = 10.0,
                 transaction_timeout_s: float = 60.0) -> None:
        super().__init__(consumer, sink, interval_s, timeout_s)
        self.transaction_timeout_s = transaction_timeout_s
        self._state = _State.IDLE
        self._offsets_sent = False
        self._fenced: Fault | None = None
        self._stuck_since: float | None = None  # when finishing the transaction started failing
        self._last_warning = 0.0

    def initialise(self, timeout_s: float) -> None:
        """Register the transactional id with the broker; this fences an older instance using it
        and aborts the transaction it left open."""
        try:
            self.sink.producer.init_transactions(timeout_s)
        except BrokerError as exc:
            raise StartupError(f"cannot initialise Kafka transactions: {exc.fault}") from exc

    def ready(self) -> bool:
        return self._state in (_State.IDLE, _State.OPEN)

    def begin(self) -> None:
        if self._fenced is not None:
            raise ProducerFenced(f"this worker's producer was fenced by a newer instance: {self._fenced}")
        if self._state is _State.IDLE:
            try:
                self.sink.producer.begin_transaction()
            except BrokerError as exc:
                if not self._is_fatal(exc.fault):
                    raise
                self.sink.producer.begin_transaction()  # on the replacement producer
            self._state = _State.OPEN
            self._offsets_sent = False

    def checkpoint(self, partitions: Iterable[TP] | None = None, complete: bool = True) -> bool:
        """Commit the open transaction (or finish the commit or abort left pending); ``partitions``
        and ``complete`` are ignored: a transaction always commits every partition's progress at
        once, its outputs with it."""
        self._last = time.monotonic()
        if self._fenced is not None:
            return False
        if self._state is _State.ABORTING:
            return self._abort()
        if self._state is _State.IDLE:
            return True
        if self._state is _State.OPEN and (self.sink.fatal is not None or self.sink.tracker.has_failures()):
            return self._abort()  # committing would fail anyway
        return self._commit_transaction()

    def _commit_transaction(self) -> bool:
        self._state = _State.COMMITTING
        self.ledger.settle(everything=True)
        todo = self.ledger.uncommitted()
        try:
            if not self._offsets_sent and todo:
                self.sink.producer.send_offsets_to_transaction(todo, self.consumer.group_metadata(),
                                                               self._attempt_s())
                self._offsets_sent = True
            self.sink.producer.commit_transaction(self._attempt_s())
        except BrokerError as exc:
            return self._commit_failed(exc.fault)
        self.sink.tracker.take_failures()
        self.ledger.committed.update(todo)
        self._finished()
        logger.debug("transaction committed with offsets %s", todo)
        return True

    def _attempt_s(self) -> float:
        """How long one call may block: the full timeout at first; once the transaction is stuck,
        short retries (the calls resume where they left off) so the loop keeps serving rebalances."""
        return self.timeout_s if self._stuck_since is None else min(self.timeout_s, 1.0)

    def _finished(self) -> None:
        self._state = _State.IDLE
        self._stuck_since = None

    def _commit_failed(self, error: Fault) -> bool:
        if self._is_fatal(error):
            return False
        if error.retriable and not error.abortable:
            self._check_stuck("commit", error)
            return False
        logger.error("transaction commit failed; aborting it and redoing its work: %s", error)
        return self._abort()

    def _abort(self) -> bool:
        """Abort the transaction and rewind to the last commit; False in any case (nothing committed)."""
        self._state = _State.ABORTING
        try:
            self.sink.producer.abort_transaction(self._attempt_s())
        except BrokerError as exc:
            error = exc.fault
            if error.conflict:
                self._state = _State.COMMITTING  # a timed-out commit must be finished first
            elif not self._is_fatal(error):
                self._check_stuck("abort", error)
            return False
        failures = self.sink.tracker.take_failures()
        if failures:
            logger.error("%d outputs were not delivered (first: %s); transaction aborted, redoing its work",
                         len(failures), failures[0])
        self.sink.tracker.reset()
        self._finished()
        self.rewind()
        return False

    def _check_stuck(self, operation: str, error: Fault) -> None:
        """A transaction that cannot be finished for longer than the transaction timeout while the
        broker answers is not waiting for the broker: the producer was fenced (some brokers time the
        fenced producer out rather than tell it) or its transaction expired. Stop: a restart
        registers the transactional id afresh. While the broker does not answer, keep waiting."""
        now = time.monotonic()
        if self._stuck_since is None:
            self._stuck_since = self._last_warning = now
            logger.warning("transaction %s did not complete; retrying before producing more: %s", operation, error)
            return
        if now - self._last_warning >= 10:
            self._last_warning = now
            logger.warning("transaction %s still not complete after %.0fs: %s", operation, now - self._stuck_since,
                           error)
        if now - self._stuck_since < self.transaction_timeout_s or not self._broker_answers():
            return
        self._fenced = error
        raise ProducerFenced(f"the transaction could not be finished for {now - self._stuck_since:.0f}s although "
                             f"the broker answers; this producer was probably fenced by another instance with the "
                             f"same transactional id: {error}")

    def _broker_answers(self) -> bool:
        try:
            self.sink.producer.topics(min(self.timeout_s, 5.0))
        except BrokerError:
            return False
        return True

    def _is_fatal(self, error: Fault) -> bool:
        """Handle a fatal error: fenced stops the worker; otherwise a new producer redoes the work."""
        if not (error.fatal or self.sink.fatal is not None):
            return False
        if error.fenced or (self.sink.fatal is not None and self.sink.fatal.fenced):
            self._fenced = error
            raise ProducerFenced(f"this worker's producer was fenced by a newer instance with the same "
                                 f"transactional id (is another replica using it?): {error}")
        logger.error("the transactional producer hit a fatal error; replacing it: %s", error)
        self.sink.rebuild()
        self.initialise(self.timeout_s)
        self._finished()
        self.rewind()
        return True

    def lost(self, partitions: Iterable[TP]) -> None:
        """The group moved on without us: the open transaction holds work for partitions that
        others now own, so it must not commit. Abort it and redo the rest."""
        super().lost(partitions)
        if self._state is _State.OPEN and self._fenced is None:
            logger.warning("partitions lost with a transaction open; aborting it")
            self._abort()

    def close(self) -> None:
        """Abort whatever is still open (after the last checkpoint), so that read_committed
        consumers are not held up until the transaction times out."""
        if self._state is not _State.IDLE and self._fenced is None:
            self._abort()
