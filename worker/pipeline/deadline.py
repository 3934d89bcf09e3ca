"""Deadlines: events too old when consumed are not served late.

An authorisation decision that arrives after the payment completed is worthless, and after an
outage a backlog should not delay fresh events behind stale ones. An event older than
``max_age_s`` when its batch is consumed (by its event-time field, or its Kafka timestamp) is
dead-lettered (stage ``deadline``), skipped, or scored and marked late, as configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from worker.records import Headers, Message, Record, message_time_s

OnExpired = Literal["dead-letter", "skip", "score-late"]
LATE_HEADER: Headers = [("x-worker-late", b"1")]


@dataclass(frozen=True)
class Expired:
    """The rows of a batch past the deadline, and each one's age in seconds."""

    rows: list[int]
    ages: list[float]


@dataclass(frozen=True)
class Deadline:
    max_age_s: float
    on_expired: OnExpired = "dead-letter"
    event_time: Callable[[Record], float | None] | None = None
    """A record → its event time in Unix seconds; None: the message's Kafka timestamp."""
    clock: Callable[[], float] = time.time

    def expired(self, events: Sequence[Record], sources: Sequence[Message]) -> Expired:
        """Which events are too old now. An event without a time (a null field, a message without
        a timestamp) is never expired: nothing shows it is late."""
        now = self.clock()
        times = map(self.event_time, events) if self.event_time else map(message_time_s, sources)
        rows, ages = [], []
        for row, at in enumerate(times):
            if at is not None and now - at > self.max_age_s:
                rows.append(row)
                ages.append(now - at)
        return Expired(rows, ages)

    def reason(self, age_s: float) -> str:
        return f"event {age_s:.1f} s old when consumed, over the deadline of {self.max_age_s:g} s"
