"""Checkpoint logic under failures, on the in-memory broker.

The failures themselves (a delivery refused, a commit timing out, a fenced or broken producer)
are hard to cause on purpose with a real broker, so the twin raises them on cue; the
fault-injection tests in tests/integration exercise the same code against a real broker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from worker.errors import ProducerFenced
from worker.kafka.checkpoint import Checkpointer
from worker.kafka.memory import MemoryBroker, MemoryConsumer, MemoryProducer
from worker.kafka.port import Fault, Rebalance
from worker.kafka.sink import Sink
from worker.kafka.transactions import TransactionalCheckpointer
from worker.records import BatchResult, InputMessage, Output

TIMED_OUT = Fault("timed out", "_TIMED_OUT", retriable=True)
ABORTABLE = Fault("inconsistent", "_INCONSISTENT", abortable=True)
FATAL = Fault("fatal", "_FATAL", fatal=True)


@dataclass
class Rig:
    broker: MemoryBroker
    consumer: MemoryConsumer
    checkpointer: Checkpointer
    producers: list[MemoryProducer]
    rewinds: list[str] = field(default_factory=list)

    @property
    def producer(self) -> MemoryProducer:
        return self.producers[0]

    def seeks(self) -> dict[tuple[str, int], int]:
        return self.consumer.position([("in", 0), ("in", 1)])


def make(kind: Callable[..., Checkpointer]) -> Rig:
    broker = MemoryBroker()
    for topic, partitions in (("in", 2), ("out", 1), ("dlq", 1)):
        broker.create_topic(topic, partitions)
    consumer = broker.consumer("group")
    consumer.subscribe(["in"], Rebalance(lambda _: None, lambda _: None, lambda _: None))
    consumer.consume(0, 0)  # joins: both partitions assigned
    producers: list[MemoryProducer] = []
    transactional = "tx" if kind is TransactionalCheckpointer else None

    def new_producer(on_error: Callable[[Fault], None]) -> MemoryProducer:
        producers.append(broker.producer(transactional, on_error))
        return producers[-1]

    checkpointer = kind(consumer, Sink(new_producer, "out", "dlq", "group"), interval_s=1.0, timeout_s=1.0)
    if isinstance(checkpointer, TransactionalCheckpointer):
        checkpointer.initialise(1.0)
    rig = Rig(broker, consumer, checkpointer, producers)
    checkpointer.on_rewind = lambda: rig.rewinds.append("rewound")
    return rig


def batch(checkpointer: Checkpointer, *offsets: int, partition: int = 0) -> None:
    """Publish a batch of events at ``offsets`` and track them, as the loop does."""
    messages = [InputMessage(b"v%d" % o, b"k", "in", partition, o) for o in offsets]
    checkpointer.begin()
    ticket = checkpointer.sink.publish(BatchResult(outputs=[Output(b"k", b"p%d" % m.offset(), m) for m in messages]),
                                       0)
    checkpointer.ledger.track(messages, ticket)


def test_exactly_once_commits_outputs_and_offsets_in_one_transaction() -> None:
    rig = make(TransactionalCheckpointer)

    batch(rig.checkpointer, 0, 1, 2)
    batch(rig.checkpointer, 3, 4)
    assert rig.broker.values("out", committed_only=True) == []
    assert rig.checkpointer.checkpoint()

    assert rig.producer.calls == ["init_transactions", "begin_transaction", *["produce"] * 5,
                                  "send_offsets_to_transaction", "commit_transaction"]
    assert rig.broker.values("out", committed_only=True) == [b"p0", b"p1", b"p2", b"p3", b"p4"]
    assert rig.broker.committed("group") == {("in", 0): 5}
    assert rig.checkpointer.ledger.committed == {("in", 0): 5}
    assert rig.rewinds == []


def test_an_abortable_commit_failure_aborts_and_rewinds_to_the_last_commit() -> None:
    rig = make(TransactionalCheckpointer)
    batch(rig.checkpointer, 0, 1)
    assert rig.checkpointer.checkpoint()
    rig.producer.fail_next("commit_transaction", ABORTABLE)

    batch(rig.checkpointer, 2, 3)
    committed = rig.checkpointer.checkpoint()

    assert not committed
    assert rig.producer.calls[-2:] == ["commit_transaction", "abort_transaction"]
    assert rig.seeks()[("in", 0)] == 2
    assert rig.rewinds == ["rewound"]
    assert rig.checkpointer.ledger.done == {("in", 0): 2}
    assert rig.checkpointer.ready()
    assert rig.broker.values("out", committed_only=True) == [b"p0", b"p1"], "the aborted outputs are never seen"
    assert rig.broker.committed("group") == {("in", 0): 2}


def test_a_commit_that_times_out_holds_production_until_it_is_finished() -> None:
    rig = make(TransactionalCheckpointer)
    rig.producer.fail_next("commit_transaction", TIMED_OUT)
    batch(rig.checkpointer, 0, 1)

    assert not rig.checkpointer.checkpoint()
    assert not rig.checkpointer.ready(), "nothing may be produced while the commit is pending"
    assert rig.checkpointer.checkpoint(), "the next checkpoint finishes the same commit"

    assert rig.producer.calls.count("send_offsets_to_transaction") == 1, "offsets are added to the transaction once"
    assert rig.producer.calls[-1] == "commit_transaction"
    assert rig.rewinds == []
    assert rig.checkpointer.ready()
    assert rig.broker.committed("group") == {("in", 0): 2}


def test_a_fenced_producer_stops_the_worker() -> None:
    rig = make(TransactionalCheckpointer)
    batch(rig.checkpointer, 0)
    rig.broker.producer("tx").init_transactions(1.0)  # a newer instance with the same transactional id

    with pytest.raises(ProducerFenced):
        rig.checkpointer.checkpoint()
    assert not rig.checkpointer.checkpoint(), "once fenced, nothing is committed any more"
    assert rig.broker.values("out", committed_only=True) == []


def test_another_fatal_producer_error_replaces_the_producer_and_redoes_the_work() -> None:
    rig = make(TransactionalCheckpointer)
    producer = rig.producer
    producer.fail_next("commit_transaction", FATAL)
    batch(rig.checkpointer, 7, 8)

    assert not rig.checkpointer.checkpoint()

    replacement = rig.checkpointer.sink.producer
    assert replacement is not producer
    assert rig.producers[1].calls == ["init_transactions"]
    assert rig.seeks()[("in", 0)] == 7 and rig.rewinds == ["rewound"]
    batch(rig.checkpointer, 7, 8)
    assert rig.checkpointer.checkpoint()
    assert rig.broker.committed("group") == {("in", 0): 9}
    assert rig.broker.values("out", committed_only=True) == [b"p7", b"p8"]


def test_a_transaction_that_stays_stuck_while_the_broker_answers_means_fenced() -> None:
    rig = make(TransactionalCheckpointer)
    rig.checkpointer.transaction_timeout_s = 0.0  # type: ignore[attr-defined]
    rig.producer.fail_next("commit_transaction", TIMED_OUT, TIMED_OUT)
    batch(rig.checkpointer, 0)

    assert not rig.checkpointer.checkpoint()
    with pytest.raises(ProducerFenced, match="although the broker answers"):
        rig.checkpointer.checkpoint()


def test_a_transaction_stuck_while_the_broker_is_silent_keeps_waiting() -> None:
    rig = make(TransactionalCheckpointer)
    rig.checkpointer.transaction_timeout_s = 0.0  # type: ignore[attr-defined]
    rig.producer.fail_next("commit_transaction", TIMED_OUT, TIMED_OUT, TIMED_OUT)
    rig.broker.reachable = False
    batch(rig.checkpointer, 0)

    for _ in range(3):
        assert not rig.checkpointer.checkpoint()
    rig.broker.reachable = True
    assert rig.checkpointer.checkpoint()


def test_losing_partitions_aborts_the_open_transaction() -> None:
    rig = make(TransactionalCheckpointer)
    batch(rig.checkpointer, 0, 1, partition=0)
    batch(rig.checkpointer, 5, 6, partition=1)

    rig.checkpointer.lost([("in", 1)])

    assert rig.producer.calls[-1] == "abort_transaction"
    assert rig.seeks()[("in", 0)] == 0, "the partition still owned is redone"
    assert ("in", 1) not in rig.checkpointer.ledger.committed, "the lost one is forgotten"
    assert rig.rewinds == ["rewound"]
    assert rig.broker.values("out", committed_only=True) == []


def test_at_least_once_commits_only_acknowledged_work() -> None:
    rig = make(Checkpointer)
    rig.producer.hold = True
    batch(rig.checkpointer, 0, 1, 2)

    assert not rig.checkpointer.checkpoint()
    assert rig.consumer.commits == []

    rig.producer.hold = False
    assert rig.checkpointer.checkpoint()
    assert rig.consumer.commits == [{("in", 0): 3}]


def test_at_least_once_rewinds_after_a_failed_delivery_and_replaces_a_broken_producer() -> None:
    rig = make(Checkpointer)
    batch(rig.checkpointer, 0, 1)
    assert rig.checkpointer.checkpoint()
    rig.producer.hold = True
    batch(rig.checkpointer, 2, 3)
    rig.producer.deliver(fault=Fault("refused", "_MSG_TIMED_OUT"))
    rig.producer.break_down(FATAL)

    assert not rig.checkpointer.checkpoint()

    assert rig.consumer.commits == [{("in", 0): 2}]
    assert rig.seeks()[("in", 0)] == 2 and rig.rewinds == ["rewound"]
    assert rig.checkpointer.sink.producer is not rig.producer
    assert rig.checkpointer.sink.tracker.pending == 0


def test_the_sink_has_room_until_the_unacknowledged_backlog_reaches_its_cap() -> None:
    broker = MemoryBroker()
    sink = Sink(lambda on_error: broker.producer(on_error=on_error), "out", "dlq", "group", max_pending=10,
                max_pending_bytes=100)
    assert sink.has_room(50, 10_000), "an empty backlog takes any batch"
    ticket = sink.tracker.ticket(8, 0, 40)

    assert sink.has_room(2, 60)
    assert not sink.has_room(3, 10)
    assert not sink.has_room(1, 61)

    sink.tracker.reset()  # the producer was replaced: its reports no longer count
    ticket.on_delivery(None, InputMessage(b"p", _topic="out"))
    assert sink.tracker.pending == 0


class _Ticket:
    """A batch's delivery state, set by hand."""

    def __init__(self, acknowledged: bool) -> None:
        self.acknowledged = acknowledged


def track(checkpointer: Checkpointer, offsets: range, ticket: _Ticket, partition: int = 0) -> None:
    checkpointer.ledger.track([InputMessage(b"v", b"k", "in", partition, o) for o in offsets],
                              ticket)  # type: ignore[arg-type]


def test_a_periodic_checkpoint_commits_only_past_acknowledged_batches_without_flushing() -> None:
    rig = make(Checkpointer)
    first, second, third = _Ticket(True), _Ticket(False), _Ticket(True)
    track(rig.checkpointer, range(0, 10), first)
    track(rig.checkpointer, range(10, 20), second)
    track(rig.checkpointer, range(20, 30), third)
    track(rig.checkpointer, range(0, 5), _Ticket(True), partition=1)

    assert rig.checkpointer.checkpoint(complete=False)
    assert rig.consumer.commits == [{("in", 0): 10, ("in", 1): 5}], "the unacknowledged batch holds back the next"

    second.acknowledged = True
    assert rig.checkpointer.checkpoint(complete=False)
    assert rig.consumer.commits[-1] == {("in", 0): 30}


def test_a_batch_whose_delivery_failed_is_never_committed_past() -> None:
    rig = make(Checkpointer)
    rig.producer.hold = True
    batch(rig.checkpointer, 0, 1, 2)
    rig.producer.deliver(lambda value: value == b"p1", Fault("refused", "_MSG_TIMED_OUT"))  # one output of three
    rig.producer.deliver()
    ticket = rig.checkpointer.ledger.waiting[("in", 0)][0][1]

    assert ticket is not None and not ticket.acknowledged
    assert not rig.checkpointer.checkpoint(complete=False)
    assert rig.consumer.commits == []
    assert rig.rewinds == ["rewound"]


def test_a_complete_checkpoint_waits_for_every_acknowledgement() -> None:
    rig = make(Checkpointer)
    rig.producer.hold = True
    batch(rig.checkpointer, 0, 1, 2)

    assert not rig.checkpointer.checkpoint(complete=True)
    assert rig.consumer.commits == []
