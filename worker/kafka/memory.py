"""The broker port in memory, for tests: the twin of ``worker.kafka.confluent`` (like dramatiq's
StubBroker or confluent's MockSchemaRegistryClient).

- Topics have partitions and offsets; a keyed message goes to a partition by a stable hash.
- Consumer groups assign partitions round-robin over their members in join order, and move them
  cooperatively: a member gives a partition up (``revoked``, while it can still commit) at its
  next poll, and the new owner gets it (``assigned``) at its own next poll after that. ``expel``
  takes a member's partitions away without asking (``lost``), as a session timeout does.
- Delivery reports are served by ``poll`` and ``flush`` (only by ``flush`` with
  ``deliver_on_poll`` off: the broker is slower than the loop); with ``hold`` set they wait for
  ``deliver``, which can acknowledge any subset in any order, or fail it.
- Transactions: records produced in one are visible to ``read_committed`` consumers only once it
  commits (a pending transaction holds back the records after it, as the last stable offset
  does), never if it aborts; offsets sent to it reach the group on commit. A producer whose
  transactional id is initialised again is fenced.
- ``fail_next`` makes the next calls of a client fail with the faults given; ``history`` lists
  what the clients did (commits, seeks, pauses, flushes, deliveries, transactions) in order.

Callbacks (rebalance, delivery) run in the thread that polls, outside the broker's lock.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from worker.kafka.port import (
    BrokerError,
    DeliveryCallback,
    Fault,
    NewTopic,
    PartitionEnds,
    PartitionProgress,
    RebalanceListener,
)
from worker.records import TP, Headers, InputMessage, Message

NOT_OWNED = Fault("the partition is not assigned to this member (stale generation)", "ILLEGAL_GENERATION",
                  abortable=True)
FENCED = Fault("a newer producer with the same transactional id was initialised", "PRODUCER_FENCED", fatal=True,
               fenced=True)
PURGED = Fault("purged before it was delivered", "_PURGE_QUEUE")
_IDLE_WAIT_S = 0.001  # how long a poll that finds nothing sleeps (not its whole timeout: tests drive the clock)


@dataclass
class Transaction:
    state: str = "open"  # open, committed, aborted
    offsets: dict[TP, int] = field(default_factory=dict)
    group: str | None = None
    failed: bool = False


@dataclass
class StoredRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    transaction: Transaction | None = None

    @property
    def committed(self) -> bool:
        return self.transaction is None or self.transaction.state == "committed"

    def message(self) -> InputMessage:
        return InputMessage(self.value, self.key, self.topic, self.partition, self.offset, self.headers,
                            (1, 1_000_000 + self.offset))


def stable_end(log: Sequence[StoredRecord]) -> int:
    """The last stable offset: the first record of a transaction still open, else the end."""
    return next((r.offset for r in log if r.transaction is not None and r.transaction.state == "open"), len(log))


@dataclass
class GroupMetadata:
    group: str
    member: MemoryConsumer


class _Group:
    def __init__(self) -> None:
        self.members: list[MemoryConsumer] = []
        self.committed: dict[TP, int] = {}
        self.owner: dict[TP, MemoryConsumer] = {}


class MemoryBroker:
    """Topics, groups and transactional ids; also the ``Admin`` of the port."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.partitions: dict[str, list[list[StoredRecord]]] = {}
        self.groups: dict[str, _Group] = {}
        self.reachable = True
        self.history: list[str] = []
        self._transactional: dict[str, MemoryProducer] = {}

    # --- admin ----------------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int = 1) -> None:
        with self.lock:
            self.partitions.setdefault(name, [[] for _ in range(partitions)])

    def topics(self, timeout_s: float = 0) -> dict[str, int]:
        self._check_reachable()
        with self.lock:
            return {name: len(parts) for name, parts in self.partitions.items()}

    def create_topics(self, topics: Sequence[NewTopic], timeout_s: float = 0) -> dict[str, Fault | None]:
        self._check_reachable()
        out: dict[str, Fault | None] = {}
        for topic in topics:
            exists = topic.name in self.partitions
            out[topic.name] = Fault("topic exists", "TOPIC_ALREADY_EXISTS") if exists else None
            self.create_topic(topic.name, topic.partitions)
        return out

    def ends(self, partitions: Sequence[TP], timeout_s: float = 0) -> dict[TP, PartitionEnds]:
        self._check_reachable()
        with self.lock:
            logs = {(topic, p): self.partitions[topic][p] for topic, p in partitions}
            return {tp: PartitionEnds(stable_end(log), len(log)) for tp, log in logs.items()}

    def note(self, event: str) -> None:
        with self.lock:
            self.history.append(event)

    def _check_reachable(self) -> None:
        if not self.reachable:
            raise BrokerError(Fault("no broker answers", "_TRANSPORT", retriable=True))

    # --- clients --------------------------------------------------------------------------------

    def consumer(self, group_id: str, read_committed: bool = False) -> MemoryConsumer:
        return MemoryConsumer(self, group_id, read_committed)

    def producer(self, transactional_id: str | None = None,
                 on_error: Callable[[Fault], None] | None = None, max_queue: int = 100_000) -> MemoryProducer:
        return MemoryProducer(self, transactional_id, on_error, max_queue)

    # --- what tests look at ---------------------------------------------------------------------

    def records(self, topic: str, committed_only: bool = False) -> list[StoredRecord]:
        """Every record of ``topic`` (partition by partition); with ``committed_only``, what a
        read_committed consumer sees."""
        with self.lock:
            return [r for part in self.partitions[topic] for r in part if r.committed or not committed_only]

    def values(self, topic: str, committed_only: bool = False) -> list[bytes | None]:
        return [r.value for r in self.records(topic, committed_only)]

    def committed(self, group_id: str) -> dict[TP, int]:
        with self.lock:
            return dict(self._group(group_id).committed)

    def append(self, topic: str, value: bytes | None, key: bytes | None = None, partition: int | None = None,
               headers: Headers | None = None, transaction: Transaction | None = None) -> StoredRecord:
        """Write a record (as a producer's acknowledged message would be); returns it."""
        with self.lock:
            parts = self.partitions[topic]
            p = partition if partition is not None else self.partition_for(topic, key)
            record = StoredRecord(topic, p, len(parts[p]), key, value, headers, transaction)
            parts[p].append(record)
            return record

    def partition_for(self, topic: str, key: bytes | None) -> int:
        count = len(self.partitions[topic])
        return zlib.crc32(key) % count if key is not None else 0

    def expel(self, member: MemoryConsumer) -> None:
        """The group moves on without ``member`` (its session timed out): its partitions go to the
        others, and it learns of the loss at its next poll."""
        with self.lock:
            group = self._group(member.group_id)
            if member in group.members:
                group.members.remove(member)
            for tp in member.assignment:
                group.owner.pop(tp, None)
            member.lost_pending |= member.assignment

    # --- group protocol -------------------------------------------------------------------------

    def _group(self, group_id: str) -> _Group:
        return self.groups.setdefault(group_id, _Group())

    def _target(self, member: MemoryConsumer) -> set[TP]:
        group = self._group(member.group_id)
        if member not in group.members:
            return set()
        topics = sorted({t for m in group.members for t in m.subscription if t in self.partitions})
        every = [(t, p) for t in topics for p in range(len(self.partitions[t]))]
        i, n = group.members.index(member), len(group.members)
        return {tp for tp in every[i::n] if tp[0] in member.subscription}

    def _transactional_id(self, transactional_id: str, producer: MemoryProducer) -> None:
        """Registers ``producer`` for the id; an older one is fenced and its open transaction aborted."""
        with self.lock:
            old = self._transactional.get(transactional_id)
            self._transactional[transactional_id] = producer
        if old is not None and old is not producer:
            old.fenced = True
            old._end_transaction("aborted")


class MemoryConsumer:
    """A group member of ``MemoryBroker``; ``on_poll`` (if set) runs at the start of every poll,
    so a test can act while the loop waits."""

    def __init__(self, broker: MemoryBroker, group_id: str, read_committed: bool = False) -> None:
        self.broker = broker
        self.group_id = group_id
        self.read_committed = read_committed
        self.subscription: set[str] = set()
        self.assignment: set[TP] = set()
        self.paused: set[TP] = set()
        self.positions: dict[TP, int] = {}
        self.lost_pending: set[TP] = set()
        self.commits: list[dict[TP, int]] = []
        self.on_poll: Callable[[], None] | None = None
        self.closed = False
        self.stall_joins = 0
        """The next this many joins never complete (the coordinator loses them): no assignment."""
        self.unsubscribes = 0
        self.unpositioned: set[TP] = set()
        """Partitions whose fetch position is never established (their committed offset never comes):
        nothing is fetched from them."""
        self._joining = False  # subscribed, and the first assignment not yet handed out
        self._stalled = False
        self._eager = False  # the next poll revokes every partition and assigns them again
        self._listener: RebalanceListener | None = None
        self._failures: dict[str, list[Fault]] = {}

    def fail_next(self, operation: str, *faults: Fault) -> None:
        """The next calls of ``operation`` (``commit``, ``seek``) raise these faults, one each."""
        self._failures.setdefault(operation, []).extend(faults)

    def _maybe_fail(self, operation: str) -> None:
        if self._failures.get(operation):
            raise BrokerError(self._failures[operation].pop(0))

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        with self.broker.lock:
            self.subscription = set(topics)
            self._listener = listener
            self._joining = True
            self._stalled = self.stall_joins > 0
            self.stall_joins -= self._stalled
            group = self.broker._group(self.group_id)
            if self not in group.members and not self._stalled:
                group.members.append(self)

    def unsubscribe(self) -> None:
        self._leave()
        self.unsubscribes += 1
        self._stalled = self._joining = False

    def rejoin_eagerly(self) -> None:
        """At the next poll every partition is revoked and then assigned again, as an eager assignor
        (range, roundrobin) rebalances: fetching starts again from the group's committed offsets."""
        self._eager = True

    def consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        self._serve()
        with self.broker.lock:
            out = self._fetch(max_messages)
        if not out and timeout_s > 0:
            time.sleep(min(timeout_s, _IDLE_WAIT_S))
        return out

    def poll(self, timeout_s: float) -> Message | None:
        found = self.consume(1, timeout_s)
        return found[0] if found else None

    def _fetch(self, max_messages: int) -> list[Message]:
        out: list[Message] = []
        for tp in sorted(self.assignment - self.paused - self.unpositioned):
            part = self.broker.partitions[tp[0]][tp[1]]
            position = self.positions[tp]
            while position < len(part) and len(out) < max_messages:
                record = part[position]
                if self.read_committed and record.transaction is not None and record.transaction.state == "open":
                    break  # the last stable offset: nothing after an open transaction is handed out
                position += 1
                if not self.read_committed or record.committed:
                    out.append(record.message())
            self.positions[tp] = position
        return out

    def _serve(self) -> None:
        """What librdkafka does inside a poll: the test's hook, then rebalance callbacks."""
        if self.on_poll is not None:
            self.on_poll()
        listener = self._listener
        if listener is None or self._stalled:
            return
        if self._eager:
            self._eager = False
            self._revoke_all()
        lost, revoked, assigned = self._rebalance()
        if lost:
            listener.lost(lost)
        if revoked:
            listener.revoked(revoked)
            with self.broker.lock:
                self._give_up(revoked)
        if assigned or self._joining:  # like librdkafka, a completed join is news even when empty
            self._joining = False
            listener.assigned(assigned)

    def _rebalance(self) -> tuple[list[TP], list[TP], list[TP]]:
        with self.broker.lock:
            lost = sorted(self.lost_pending)
            self.assignment -= self.lost_pending
            self.lost_pending = set()
            target = self.broker._target(self)
            revoked = sorted(self.assignment - target)
            group = self.broker._group(self.group_id)
            assigned = sorted(tp for tp in target - self.assignment if tp not in group.owner)
            for tp in assigned:
                group.owner[tp] = self
                self.assignment.add(tp)
                self.positions[tp] = group.committed.get(tp, 0)
        return lost, revoked, assigned

    def _give_up(self, partitions: Sequence[TP]) -> None:
        group = self.broker._group(self.group_id)
        for tp in partitions:
            self.assignment.discard(tp)
            self.paused.discard(tp)
            if group.owner.get(tp) is self:
                del group.owner[tp]

    def pause(self, partitions: Sequence[TP]) -> None:
        with self.broker.lock:
            self.paused |= set(partitions) & self.assignment
            self.broker.note(f"pause {sorted(partitions)}")

    def resume(self, partitions: Sequence[TP]) -> None:
        with self.broker.lock:
            self.paused -= set(partitions)
            self.broker.note(f"resume {sorted(partitions)}")

    def seek(self, partition: TP, offset: int) -> None:
        self._maybe_fail("seek")
        with self.broker.lock:
            if partition not in self.assignment:
                raise BrokerError(Fault(f"{partition} is not assigned", "_STATE"))
            self.positions[partition] = offset
            self.broker.note(f"seek {partition} {offset}")

    def position(self, partitions: Sequence[TP]) -> dict[TP, int]:
        with self.broker.lock:
            return {tp: self.positions[tp] for tp in partitions if tp in self.positions}

    def progress(self, partitions: Sequence[TP], timeout_s: float) -> dict[TP, PartitionProgress]:
        with self.broker.lock:
            return {tp: self._progress(tp) for tp in partitions}

    def _progress(self, tp: TP) -> PartitionProgress:
        log = self.broker.partitions[tp[0]][tp[1]]
        stable = stable_end(log) if self.read_committed else len(log)
        if tp in self.unpositioned:
            return PartitionProgress(None, stable, len(log), offsets_unanswered=True)
        return PartitionProgress(self.positions.get(tp), stable, len(log))

    def commit(self, offsets: Mapping[TP, int]) -> None:
        self._maybe_fail("commit")
        with self.broker.lock:
            if not set(offsets) <= self.assignment:
                raise BrokerError(NOT_OWNED)
            self.broker._group(self.group_id).committed.update(offsets)
            self.commits.append(dict(offsets))
            self.broker.note(f"commit {dict(sorted(offsets.items()))}")

    def group_metadata(self) -> object:
        return GroupMetadata(self.group_id, self)

    def topics(self, timeout_s: float) -> dict[str, int]:
        return self.broker.topics(timeout_s)

    def close(self) -> None:
        self._leave()
        self.closed = True

    def _revoke_all(self, then: Callable[[], None] | None = None) -> None:
        """Give every partition up, the revoke callback first; ``then`` runs under the same hold of
        the broker's lock, so that no rebalance comes between."""
        owned = sorted(self.assignment)
        if self._listener is not None and owned:
            self._listener.revoked(owned)
        with self.broker.lock:
            self._give_up(owned)
            if then is not None:
                then()

    def _leave(self) -> None:
        """Leave the group, giving every partition up (the revoke callback runs first)."""
        self._revoke_all(then=self._quit_group)

    def _quit_group(self) -> None:
        group = self.broker._group(self.group_id)
        if self in group.members:
            group.members.remove(self)


@dataclass
class _Pending:
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    on_delivery: DeliveryCallback | None
    transaction: Transaction | None
    fault: Fault | None = None


class MemoryProducer:
    """A producer of ``MemoryBroker``. Messages wait in flight until a delivery report is served
    (``poll``, ``flush``, ``deliver``); only an acknowledged message is in its topic."""

    def __init__(self, broker: MemoryBroker, transactional_id: str | None = None,
                 on_error: Callable[[Fault], None] | None = None, max_queue: int = 100_000) -> None:
        self.broker = broker
        self.transactional_id = transactional_id
        self.on_error = on_error
        self.max_queue = max_queue
        self.hold = False
        """Delivery reports wait for ``deliver`` (the broker does not acknowledge)."""
        self.deliver_on_poll = True
        """Off: only ``flush`` (and ``deliver``) serve delivery reports."""
        self.in_flight: list[_Pending] = []
        self.transaction: Transaction | None = None
        self.transactions: list[Transaction] = []
        self.fenced = False
        self.fatal: Fault | None = None
        self.calls: list[str] = []
        self._failures: dict[str, list[Fault]] = {}

    def fail_next(self, operation: str, *faults: Fault) -> None:
        """The next calls of ``operation`` (``produce``, ``init_transactions``, ``begin_transaction``,
        ``send_offsets_to_transaction``, ``commit_transaction``, ``abort_transaction``) raise these."""
        self._failures.setdefault(operation, []).extend(faults)

    def break_down(self, fault: Fault) -> None:
        """A fatal error: reported to the error callback, then raised by every call."""
        self.fatal = fault
        if self.on_error is not None:
            self.on_error(fault)

    def _call(self, operation: str) -> None:
        self.calls.append(operation)
        if self.fenced:
            raise BrokerError(FENCED)
        if self.fatal is not None:
            raise BrokerError(self.fatal)
        if self._failures.get(operation):
            raise BrokerError(self._failures[operation].pop(0))

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                on_delivery: DeliveryCallback | None = None, headers: Headers | None = None) -> None:
        self._call("produce")
        if self.transactional_id is not None and self.transaction is None:
            raise BrokerError(Fault("produce outside a transaction", "_STATE", fatal=False))
        with self.broker.lock:
            if len(self.in_flight) >= self.max_queue:
                raise BufferError("the producer's queue is full")
            known = topic in self.broker.partitions
            partition = self.broker.partition_for(topic, key) if known else -1
            fault = None if known else Fault(f"unknown topic {topic}", "UNKNOWN_TOPIC_OR_PART")
            self.in_flight.append(_Pending(topic, partition, key, value, list(headers) if headers else None,
                                           on_delivery, self.transaction, fault))

    def poll(self, timeout_s: float = 0) -> int:
        return self.deliver() if self.deliver_on_poll and not self.hold else 0

    def flush(self, timeout_s: float = 0) -> int:
        self.broker.note("flush")
        if not self.hold:
            self.deliver()
        return len(self.in_flight)

    def deliver(self, where: Callable[[bytes | None], bool] | None = None, fault: Fault | None = None,
                newest_first: bool = False) -> int:
        """Serve the delivery reports of the messages in flight whose value ``where`` accepts (all by
        default), oldest first unless ``newest_first``; failed with ``fault`` if given. Returns how many."""
        with self.broker.lock:
            chosen = [p for p in self.in_flight if where is None or where(p.value)]
            self.in_flight = [p for p in self.in_flight if not (where is None or where(p.value))]
            reports = [(p, fault or p.fault) for p in (reversed(chosen) if newest_first else chosen)]
            acked = [(p, self._store(p) if f is None else None, f) for p, f in reports]
            for p, _, f in acked:
                if f is not None and p.transaction is not None:
                    p.transaction.failed = True
            if acked:
                self.broker.note(f"deliver {len(acked)}" + (f" failed: {fault.code}" if fault else ""))
        for pending, record, error in acked:
            if pending.on_delivery is not None:
                pending.on_delivery(error, record.message() if record else _unsent(pending))
        return len(acked)

    def _store(self, pending: _Pending) -> StoredRecord:
        return self.broker.append(pending.topic, pending.value, pending.key, pending.partition, pending.headers,
                                  pending.transaction)

    def purge(self) -> None:
        with self.broker.lock:
            for pending in self.in_flight:
                pending.fault = PURGED
        self.deliver()

    def topics(self, timeout_s: float) -> dict[str, int]:
        return self.broker.topics(timeout_s)

    # --- transactions ---------------------------------------------------------------------------

    def init_transactions(self, timeout_s: float) -> None:
        self._call("init_transactions")
        if self.transactional_id is None:
            raise BrokerError(Fault("the producer has no transactional id", "_NOT_CONFIGURED", fatal=True))
        self.broker._transactional_id(self.transactional_id, self)

    def begin_transaction(self) -> None:
        self._call("begin_transaction")
        if self.transaction is not None:
            raise BrokerError(Fault("a transaction is already open", "_STATE"))
        self.transaction = Transaction()
        self.transactions.append(self.transaction)

    def send_offsets_to_transaction(self, offsets: Mapping[TP, int], group: object, timeout_s: float) -> None:
        self._call("send_offsets_to_transaction")
        assert isinstance(group, GroupMetadata) and self.transaction is not None
        with self.broker.lock:
            if not set(offsets) <= group.member.assignment:
                raise BrokerError(NOT_OWNED)
            self.transaction.offsets.update(offsets)
            self.transaction.group = group.group

    def commit_transaction(self, timeout_s: float) -> None:
        self._call("commit_transaction")
        transaction = self.transaction
        if transaction is None:
            raise BrokerError(Fault("no transaction is open", "_STATE"))
        if not self.hold:
            self.deliver()  # a commit flushes first
        if transaction.failed:
            raise BrokerError(Fault("a message of the transaction was not delivered", "_INCONSISTENT",
                                    abortable=True))
        if any(p.transaction is transaction for p in self.in_flight):
            raise BrokerError(Fault("the transaction's messages are not all acknowledged", "_TIMED_OUT",
                                    retriable=True))
        self._end_transaction("committed")

    def abort_transaction(self, timeout_s: float) -> None:
        self._call("abort_transaction")
        with self.broker.lock:
            for pending in self.in_flight:
                pending.fault = PURGED
        self.deliver()
        self._end_transaction("aborted")

    def _end_transaction(self, state: str) -> None:
        with self.broker.lock:
            transaction, self.transaction = self.transaction, None
            if transaction is None:
                return
            transaction.state = state
            self.broker.note(f"transaction {state} {dict(sorted(transaction.offsets.items()))}")
            if state == "committed" and transaction.group is not None:
                self.broker._group(transaction.group).committed.update(transaction.offsets)


def _unsent(pending: _Pending) -> InputMessage:
    return InputMessage(pending.value, pending.key, pending.topic, pending.partition, -1, pending.headers)

