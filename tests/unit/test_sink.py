"""A batch's ticket: counted down once per report, settled once, reported once, whichever thread serves them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from worker.kafka.memory import MemoryBroker, MemoryProducer
from worker.kafka.port import BrokerError, Fault
from worker.kafka.sink import DeliveryTracker, Sink
from worker.records import BatchResult, Delivery, InputMessage, Output

OUT = InputMessage(b"p", _topic="out")


def tracker_reporting() -> tuple[DeliveryTracker, list[Delivery]]:
    tracker, reported = DeliveryTracker(), []
    tracker.on_batch_acked = reported.append
    return tracker, reported


def test_a_batch_is_acknowledged_and_reported_once_its_last_message_is() -> None:
    tracker, reported = tracker_reporting()
    ticket = tracker.ticket(3, 0, 30)
    ticket.published()
    ticket.on_delivery(None, OUT)
    ticket.on_delivery(None, OUT)
    assert not ticket.acknowledged and reported == [] and tracker.pending == 3

    ticket.on_delivery(None, OUT)
    assert ticket.acknowledged and reported == [ticket.delivery]
    assert (tracker.pending, tracker.pending_bytes) == (0, 0)
    assert ticket.delivery.acked_ns >= ticket.delivery.published_ns > 0


def test_an_acknowledgement_before_the_batch_is_stamped_published_is_reported_when_it_is() -> None:
    tracker, reported = tracker_reporting()
    ticket = tracker.ticket(1, 0)
    ticket.on_delivery(None, OUT)  # the delivery thread, while the loop is still producing the batch
    assert reported == [], "no acknowledgement time without a publication time"

    ticket.published()
    assert reported == [ticket.delivery]
    assert ticket.delivery.acked_ns == ticket.delivery.published_ns, "no wait at all, not minutes since boot"


def test_a_failed_message_leaves_the_batch_unacknowledged_and_unreported() -> None:
    tracker, reported = tracker_reporting()
    ticket = tracker.ticket(2, 0)
    ticket.published()
    ticket.on_delivery("_MSG_TIMED_OUT", OUT)
    ticket.on_delivery(None, OUT)

    assert not ticket.acknowledged and reported == []
    assert tracker.take_failures() == ["out: _MSG_TIMED_OUT"]
    assert tracker.pending == 0, "settled: nothing more will come for it"


def test_reports_served_on_two_threads_at_once_count_each_message_once() -> None:
    tracker, reported = tracker_reporting()
    n = 200_000
    ticket = tracker.ticket(n, 0)
    ticket.published()
    start = threading.Barrier(2)

    def serve() -> None:
        start.wait()
        for _ in range(n // 2):
            ticket.on_delivery(None, OUT)
    threads = [threading.Thread(target=serve) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert ticket.acknowledged and reported == [ticket.delivery] and tracker.pending == 0


def test_reports_of_an_earlier_generation_change_nothing() -> None:
    tracker, reported = tracker_reporting()
    old = tracker.ticket(1, 0)
    old.published()
    tracker.reset()  # the producer was replaced; its work is redone
    current = tracker.ticket(2, 0, 20)
    old.on_delivery("_PURGE_QUEUE", OUT)

    assert reported == [] and tracker.take_failures() == []
    assert (tracker.pending, tracker.pending_bytes) == (2, 20)
    current.published()
    current.on_delivery(None, OUT)
    current.on_delivery(None, OUT)
    assert reported == [current.delivery]


class _RefusesThird:
    """A producer (the in-memory one) whose third produce call is refused, as an oversized output is."""

    def __init__(self, producer: MemoryProducer) -> None:
        self.inner, self.calls = producer, 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls == 3:
            raise BrokerError(Fault("message too large", "MSG_SIZE_TOO_LARGE"))
        self.inner.produce(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_batch_refused_partway_no_longer_counts_as_awaiting_acknowledgement() -> None:
    broker = MemoryBroker()
    for topic in ("out", "dlq"):
        broker.create_topic(topic)
    producers: list[MemoryProducer] = []

    def new_producer(on_error: Callable[[Fault], None]) -> Any:
        producers.append(broker.producer(on_error=on_error))
        return _RefusesThird(producers[-1])
    sink = Sink(new_producer, "out", "dlq", "group")
    outputs = [Output(b"k", b"v%d" % i, OUT) for i in range(5)]

    ticket = sink.publish(BatchResult(outputs=outputs), 0)
    assert (sink.pending, sink.tracker.pending_bytes) == (0, 0), "nothing held for the three never produced"
    producers[0].deliver()  # the two produced are acknowledged after all
    assert not ticket.acknowledged and sink.pending == 0
    assert sink.tracker.take_failures() == ["produce refused: message too large (MSG_SIZE_TOO_LARGE)"]
    assert sink.has_room(50_000, 1 << 20), "the redo finds the whole cap free"
