"""Sending events by hand: each record is checked against the input schema, encoded, keyed and
produced, and every delivery counted."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from worker.codecs.avro import Encoder
from worker.codecs.explain import mismatch
from worker.codecs.schemas import Schema
from worker.devtools.console import count, rate
from worker.devtools.sources import Item
from worker.errors import EventError
from worker.kafka.port import Producer, error_text
from worker.kafka.sink import produce_when_room
from worker.records import InputMessage, path_getter

_NO_SOURCE = InputMessage(None)


@dataclass
class Tally:
    """What a produce run did; ``problems`` keeps the first few rejected items."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    rejected: int = 0
    poisoned: int = 0
    problems: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def reject(self, where: str, reason: str) -> None:
        self.rejected += 1
        if len(self.problems) < 20:
            self.problems.append(f"{where}: {reason}")

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        errors = self.rejected + self.failed
        return (f"produced {count(self.sent)} ({rate(self.sent, elapsed)}), delivered {count(self.delivered)}, "
                f"errors {count(errors)}" + (f", poison {count(self.poisoned)}" if self.poisoned else ""))


class EventSender:
    """Validates, encodes, keys and produces records to one topic, counting deliveries."""

    def __init__(self, producer: Producer, topic: str, schema: Schema, encode: Encoder, key_path: str | None = None,
                 poison: float = 0.0, seed: int = 0) -> None:
        self.producer = producer
        self.topic = topic
        self.schema = schema
        self.encode = encode
        self.key_of = path_getter(key_path) if key_path else None
        self.poison = poison
        self.tally = Tally()
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def send(self, where: str, record: Any) -> bool:
        value = self._value(where, record)
        if value is None:
            return False
        if self.poison and self._random.random() < self.poison:
            value = value[: len(value) // 2]
            self.tally.poisoned += 1
        key = self._key(record)
        produce_when_room(self.producer, self.topic, value, key, self._delivered)
        self.tally.sent += 1
        self.producer.poll(0)
        return True

    def _value(self, where: str, record: Any) -> bytes | None:
        if isinstance(record, Exception):
            self.tally.reject(where, str(record))
            return None
        if not isinstance(record, dict):
            self.tally.reject(where, f"an event must be a JSON object, not {type(record).__name__}")
            return None
        problem = mismatch(record, self.schema)  # the encoder would drop a misspelt field silently
        if problem is not None:
            self.tally.reject(where, problem)
            return None
        try:
            return self.encode(record, _NO_SOURCE)
        except EventError as exc:
            self.tally.reject(where, exc.reason)
            return None

    def _key(self, record: dict[str, Any]) -> bytes | None:
        if self.key_of is None:
            return None
        value = self.key_of(record)
        return None if value is None else value if isinstance(value, bytes) else str(value).encode()

    def _delivered(self, err: object | None, msg: object) -> None:
        with self._lock:
            if err is None:
                self.tally.delivered += 1
            else:
                self.tally.failed += 1
                if len(self.tally.problems) < 20:
                    self.tally.problems.append(f"delivery to {self.topic} failed: {error_text(err)}")

    def flush(self, timeout_s: float = 30.0) -> int:
        left = int(self.producer.flush(timeout_s))
        if left:
            self.tally.problems.append(f"{left} events not acknowledged after {timeout_s:.0f}s")
        return left


def send_all(sender: EventSender, items: Iterable[Item], events_per_s: float = 0,
             on_progress: Callable[[Tally], None] | None = None, stop: threading.Event | None = None) -> Tally:
    """Send every item (paced to ``events_per_s`` if set) until done or ``stop`` is set; then flush."""
    tally = sender.tally
    tally.started = time.monotonic()
    try:
        for n, (where, record) in enumerate(items, 1):
            if stop is not None and stop.is_set():
                break
            sender.send(where, record)
            if events_per_s:
                ahead = n / events_per_s - (time.monotonic() - tally.started)
                if ahead > 0:
                    time.sleep(ahead)
            if on_progress is not None:
                on_progress(tally)
    finally:
        sender.flush()
    return tally
