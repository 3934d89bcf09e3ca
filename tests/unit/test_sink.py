"""A batch's ticket: counted down once per report, settled once, reported once, whichever thread serves them."""

from __future__ import annotations

import threading

from worker.kafka.sink import DeliveryTracker
from worker.records import Delivery, InputMessage

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
