"""At-least-once checkpoints: commit input offsets only past acknowledged work.

A checkpoint is Kafka's at-least-once contract made explicit: flush the producer, make sure
every output and dead letter since the last checkpoint was acknowledged, and only then
commit the input offsets. If any delivery failed, nothing is committed and the affected
partitions are rewound to their last committed offsets, so the work is redone rather than
lost (duplicates are possible only for that in-flight work). A producer that hit a fatal
error (the idempotent producer's sequence broke, say) is replaced before the work is redone.
The exactly-once sibling, which commits through Kafka transactions, is in ``worker.kafka.transactions``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from worker.kafka.port import BrokerError, Consumer
from worker.kafka.sink import BatchTicket, Sink
from worker.records import TP, Message

logger = logging.getLogger(__name__)


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

    def track(self, messages: Sequence[Message], ticket: BatchTicket) -> None:
        """A batch was produced: its offsets count as done once its ticket is settled."""
        self.ledger.track(messages, ticket)

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
        if complete and (remaining := self.sink.flush(self.timeout_s)):
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
            self.consumer.commit(todo)
        except BrokerError as exc:
            logger.warning("offset commit failed, will retry at the next checkpoint: %s", exc)
            return False
        self.ledger.committed.update(todo)
        return True

    def rewind(self) -> None:
        """Seek every owned partition back to its last commit; the loop drops what it holds."""
        for (topic, partition), offset in self.ledger.committed.items():
            try:
                self.consumer.seek((topic, partition), offset)
            except BrokerError as exc:
                logger.warning("cannot rewind %s[%d]: %s", topic, partition, exc)
        self.ledger.rewound()
        self.on_rewind()

    def last_commits(self, partitions: Iterable[TP]) -> dict[TP, int]:
        """Each partition's last commit as far as this worker knows (where it began reading, until
        it commits); none for a partition it has done nothing with."""
        return {tp: self.ledger.committed[tp] for tp in partitions if tp in self.ledger.committed}

    def drop(self, partitions: Iterable[TP]) -> None:
        """Partitions were revoked (after a checkpoint): forget them."""
        self.ledger.forget(partitions)

    def lost(self, partitions: Iterable[TP]) -> None:
        """Partitions were taken away without a chance to commit (their work may be redone elsewhere)."""
        self.ledger.forget(partitions)

    def close(self) -> None:
        """The worker is stopping, after its last checkpoint."""
        self.sink.flush(self.timeout_s)
