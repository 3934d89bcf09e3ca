"""Checkpoint logic under failures, with stand-ins for the Kafka clients.

The failures themselves (a delivery refused, a commit timing out, a fenced or broken producer)
are hard to cause on purpose with a real broker, so the clients here raise them on cue; the
fault-injection tests in tests/integration exercise the same code against a real broker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker.errors import ProducerFenced
from worker.kafka import Checkpointer, Sink
from worker.records import BatchResult, InputMessage, Output
from worker.transactions import TransactionalCheckpointer


class FakeProducer:
    """Records transaction calls; ``fail[name]`` is a list of errors the next calls raise."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: dict[str, list[KafkaError]] = {}
        self.offsets_sent: list[list[tuple[str, int, int]]] = []
        self.produced: list[tuple[str, bytes | None]] = []
        self.unacknowledged = 0

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail.get(name):
            raise KafkaException(self.fail[name].pop(0))

    def init_transactions(self, timeout: float) -> None:
        self._call("init")

    def begin_transaction(self) -> None:
        self._call("begin")

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], metadata: Any, timeout: float) -> None:
        self._call("send_offsets")
        self.offsets_sent.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort")

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, on_delivery: Any = None,
                headers: Any = None) -> None:
        self._call("produce")
        self.produced.append((topic, value))
        on_delivery(None, _Delivered(topic))

    def flush(self, timeout: float = 0) -> int:
        return self.unacknowledged

    def poll(self, timeout: float = 0) -> int:
        return 0

    def purge(self, **_: bool) -> None:
        self.calls.append("purge")

    def list_topics(self, timeout: float) -> object:
        self._call("list_topics")
        return object()


class _Delivered:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[str, int, int]] = []
        self.commits: list[list[tuple[str, int, int]]] = []

    def consumer_group_metadata(self) -> str:
        return "group-metadata"

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])


def error(code: int, *, fatal: bool = False, retriable: bool = False, abort: bool = False) -> KafkaError:
    return KafkaError(code, "injected", fatal=fatal, retriable=retriable, txn_requires_abort=abort)


def make(kind: Callable[..., Checkpointer]) -> tuple[Any, FakeProducer, FakeConsumer, list[str]]:
    producers: list[FakeProducer] = []

    def new_producer(error_cb: Any) -> FakeProducer:
        producers.append(FakeProducer())
        return producers[-1]

    consumer = FakeConsumer()
    sink = Sink(new_producer, "out", "dlq", "group")  # type: ignore[arg-type]
    checkpointer = kind(consumer, sink, interval_s=1.0, timeout_s=1.0)
    rewinds: list[str] = []
    checkpointer.on_rewind = lambda: rewinds.append("rewound")
    return checkpointer, producers[0], consumer, rewinds


def batch(checkpointer: Checkpointer, *offsets: int, partition: int = 0) -> None:
    """Publish a batch of events at ``offsets`` and track them, as the loop does."""
    messages = [InputMessage(b"v", b"k", "in", partition, o) for o in offsets]
    checkpointer.begin()
    checkpointer.sink.publish(BatchResult(outputs=[Output(b"k", b"p", m) for m in messages]), 0)
    checkpointer.ledger.track(messages)


def test_exactly_once_commits_outputs_and_offsets_in_one_transaction() -> None:
    checkpointer, producer, _, rewinds = make(TransactionalCheckpointer)

    batch(checkpointer, 0, 1, 2)
    batch(checkpointer, 3, 4)
    assert checkpointer.checkpoint()

    assert producer.calls == ["begin", *["produce"] * 5, "send_offsets", "commit"]
    assert producer.offsets_sent == [[("in", 0, 5)]]
    assert checkpointer.ledger.committed == {("in", 0): 5}
    assert rewinds == []


def test_an_abortable_commit_failure_aborts_and_rewinds_to_the_last_commit() -> None:
    checkpointer, producer, consumer, rewinds = make(TransactionalCheckpointer)
    batch(checkpointer, 0, 1)
    assert checkpointer.checkpoint()
    producer.fail["commit"] = [error(KafkaError._INCONSISTENT, abort=True)]

    batch(checkpointer, 2, 3)
    committed = checkpointer.checkpoint()

    assert not committed
    assert producer.calls[-2:] == ["commit", "abort"]
    assert consumer.seeks == [("in", 0, 2)]
    assert rewinds == ["rewound"]
    assert checkpointer.ledger.done == {("in", 0): 2}
    assert checkpointer.ready()


def test_a_commit_that_times_out_holds_production_until_it_is_finished() -> None:
    checkpointer, producer, consumer, _ = make(TransactionalCheckpointer)
    producer.fail["commit"] = [error(KafkaError._TIMED_OUT, retriable=True)]
    batch(checkpointer, 0, 1)

    assert not checkpointer.checkpoint()
    assert not checkpointer.ready(), "nothing may be produced while the commit is pending"
    assert checkpointer.checkpoint(), "the next checkpoint finishes the same commit"

    assert producer.calls.count("send_offsets") == 1, "offsets are added to the transaction once"
    assert producer.calls[-1] == "commit"
    assert consumer.seeks == []
    assert checkpointer.ready()


def test_a_fenced_producer_stops_the_worker() -> None:
    checkpointer, producer, _, _ = make(TransactionalCheckpointer)
    producer.fail["commit"] = [error(KafkaError._FENCED, fatal=True)]
    batch(checkpointer, 0)

    with pytest.raises(ProducerFenced):
        checkpointer.checkpoint()
    assert not checkpointer.checkpoint(), "once fenced, nothing is committed any more"


def test_another_fatal_producer_error_replaces_the_producer_and_redoes_the_work() -> None:
    checkpointer, producer, consumer, rewinds = make(TransactionalCheckpointer)
    producer.fail["commit"] = [error(KafkaError._FATAL, fatal=True)]
    batch(checkpointer, 7, 8)

    assert not checkpointer.checkpoint()

    replacement = checkpointer.sink.producer
    assert replacement is not producer and "purge" in producer.calls
    assert replacement.calls == ["init"]
    assert consumer.seeks == [("in", 0, 7)] and rewinds == ["rewound"]
    batch(checkpointer, 7, 8)
    assert checkpointer.checkpoint()
    assert replacement.offsets_sent == [[("in", 0, 9)]]


def test_a_transaction_that_stays_stuck_while_the_broker_answers_means_fenced() -> None:
    checkpointer, producer, _, _ = make(TransactionalCheckpointer)
    checkpointer.transaction_timeout_s = 0.0
    producer.fail["commit"] = [error(KafkaError._TIMED_OUT, retriable=True)] * 2
    batch(checkpointer, 0)

    assert not checkpointer.checkpoint()
    with pytest.raises(ProducerFenced, match="although the broker answers"):
        checkpointer.checkpoint()


def test_a_transaction_stuck_while_the_broker_is_silent_keeps_waiting() -> None:
    checkpointer, producer, _, _ = make(TransactionalCheckpointer)
    checkpointer.transaction_timeout_s = 0.0
    producer.fail["commit"] = [error(KafkaError._TIMED_OUT, retriable=True)] * 3
    producer.fail["list_topics"] = [error(KafkaError._TRANSPORT)] * 3
    batch(checkpointer, 0)

    for _ in range(3):
        assert not checkpointer.checkpoint()
    assert checkpointer.checkpoint()


def test_losing_partitions_aborts_the_open_transaction() -> None:
    checkpointer, producer, consumer, rewinds = make(TransactionalCheckpointer)
    batch(checkpointer, 0, 1, partition=0)
    batch(checkpointer, 5, 6, partition=1)

    checkpointer.lost([("in", 1)])

    assert producer.calls[-1] == "abort"
    assert consumer.seeks == [("in", 0, 0)], "the partition still owned is redone; the lost one is forgotten"
    assert rewinds == ["rewound"]


def test_at_least_once_commits_only_acknowledged_work() -> None:
    checkpointer, producer, consumer, _ = make(Checkpointer)
    batch(checkpointer, 0, 1, 2)
    producer.unacknowledged = 2

    assert not checkpointer.checkpoint()
    assert consumer.commits == []

    producer.unacknowledged = 0
    assert checkpointer.checkpoint()
    assert consumer.commits == [[("in", 0, 3)]]


def test_at_least_once_rewinds_after_a_failed_delivery_and_replaces_a_broken_producer() -> None:
    checkpointer, producer, consumer, rewinds = make(Checkpointer)
    batch(checkpointer, 0, 1)
    assert checkpointer.checkpoint()
    batch(checkpointer, 2, 3)
    checkpointer.sink.tracker.fail("out: delivery refused")
    checkpointer.sink.fatal = error(KafkaError._FATAL, fatal=True)

    assert not checkpointer.checkpoint()

    assert consumer.commits == [[("in", 0, 2)]]
    assert consumer.seeks == [("in", 0, 2)] and rewinds == ["rewound"]
    assert checkpointer.sink.producer is not producer
    assert checkpointer.sink.tracker.pending == 0


def test_the_sink_has_room_until_the_unacknowledged_backlog_reaches_its_cap() -> None:
    sink = Sink(lambda cb: FakeProducer(), "out", "dlq", "group", max_pending=10, max_pending_bytes=100)  # type: ignore[arg-type,return-value]
    assert sink.has_room(50, 10_000), "an empty backlog takes any batch"
    ticket = sink.tracker.ticket(8, 0, 40)

    assert sink.has_room(2, 60)
    assert not sink.has_room(3, 10)
    assert not sink.has_room(1, 61)

    sink.tracker.reset()  # the producer was replaced: its reports no longer count
    ticket(None, _Delivered("out"))
    assert sink.tracker.pending == 0


class _Ticket:
    """A batch's delivery state, set by hand."""

    def __init__(self, acknowledged: bool) -> None:
        self.acknowledged = acknowledged


def track(checkpointer: Checkpointer, offsets: range, ticket: _Ticket, partition: int = 0) -> None:
    checkpointer.ledger.track([InputMessage(b"v", b"k", "in", partition, o) for o in offsets],
                              ticket)  # type: ignore[arg-type]


def test_a_periodic_checkpoint_commits_only_past_acknowledged_batches_without_flushing() -> None:
    checkpointer, producer, consumer, _ = make(Checkpointer)
    producer.unacknowledged = 7  # a flush would report outputs still in flight
    first, second, third = _Ticket(True), _Ticket(False), _Ticket(True)
    track(checkpointer, range(0, 10), first)
    track(checkpointer, range(10, 20), second)
    track(checkpointer, range(20, 30), third)
    track(checkpointer, range(0, 5), _Ticket(True), partition=1)

    assert checkpointer.checkpoint(complete=False)
    assert consumer.commits == [[("in", 0, 10), ("in", 1, 5)]], "the unacknowledged batch holds back the next"

    second.acknowledged = True
    assert checkpointer.checkpoint(complete=False)
    assert consumer.commits[-1] == [("in", 0, 30)]


def test_a_batch_whose_delivery_failed_is_never_committed_past() -> None:
    checkpointer, _, consumer, rewinds = make(Checkpointer)
    messages = [InputMessage(b"v", b"k", "in", 0, o) for o in range(3)]
    ticket = checkpointer.sink.publish(BatchResult(outputs=[Output(b"k", b"p", m) for m in messages]), 0)
    ticket(KafkaError(KafkaError._MSG_TIMED_OUT), _Delivered("out"))  # one output of three refused
    checkpointer.ledger.track(messages, ticket)

    assert not ticket.acknowledged
    assert not checkpointer.checkpoint(complete=False)
    assert consumer.commits == []
    assert rewinds == ["rewound"]


def test_a_complete_checkpoint_waits_for_every_acknowledgement() -> None:
    checkpointer, producer, consumer, _ = make(Checkpointer)
    producer.unacknowledged = 3
    track(checkpointer, range(0, 3), _Ticket(False))

    assert not checkpointer.checkpoint(complete=True)
    assert consumer.commits == []
