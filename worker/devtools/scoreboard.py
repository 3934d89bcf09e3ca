"""What ``worker demo`` shows of the predictions and dead letters it reads back, in the words of
the configuration at hand: its label field, its time fields, a table where one fits, else JSON."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.codecs.avro import Decoder
from worker.errors import EventError
from worker.records import Message


@dataclass(frozen=True)
class Roles:
    """Which output fields play which part."""

    label: str | None = None
    """The field holding ``$label`` (counted as flagged when true)."""
    scored_at: str | None = None
    """The field holding ``$scored_at`` (epoch ms)."""
    event_time: str | None = None
    """The field copying the event time, if any."""
    event_time_ms: float = 1.0
    """Milliseconds per unit of ``event_time``."""
    row: str | None = None
    """A ``str.format`` template for a row, used when every field it names is in the prediction."""
    header: str = ""
    """The table's header line, for ``row``."""

    def event_ms(self, prediction: dict[str, Any]) -> float | None:
        value = prediction.get(self.event_time) if self.event_time else None
        return None if value is None else float(value) * self.event_time_ms


class Scoreboard:
    """Decodes what the worker publishes, keeps the numbers for the summary, and formats rows.

    ``show``: ``all`` rows, ``none``, or ``some``: the first ten and then flagged ones, up to fifty."""

    FIRST_ROWS = 10
    SOME_ROWS = 50

    def __init__(self, decode: Decoder, output_topic: str, show: str, roles: Roles) -> None:
        self.decode = decode
        self.output_topic = output_topic
        self.show = show
        self.roles = roles
        self.scored = self.flagged = 0
        self.dead: Counter[str] = Counter()
        self.scored_ms: list[float] = []
        self.read_ms: list[float] = []
        self._rows = 0

    @property
    def dead_letters(self) -> int:
        return sum(self.dead.values())

    def add(self, message: Message) -> list[str]:
        """Take one message; returns the lines to print for it."""
        if message.topic() != self.output_topic:
            return self._dead_letter(message)
        try:
            prediction = self.decode(message.value(), message)
        except EventError as exc:
            return [f"  undecodable prediction at offset {message.offset()}: {exc.reason}"]
        return self._prediction(prediction)

    def _dead_letter(self, message: Message) -> list[str]:
        headers = {k: (v or b"").decode(errors="replace") if isinstance(v, bytes | None) else str(v)
                   for k, v in message.headers() or []}
        self.dead[headers.get("dlq.error.stage", "?")] += 1
        if self.show == "none":
            return []
        return [f"  dead letter  {headers.get('dlq.source.topic')}[{headers.get('dlq.source.partition')}]@"
                f"{headers.get('dlq.source.offset')}  {headers.get('dlq.error.stage')}: "
                f"{headers.get('dlq.error.reason', '')[:90]}"]

    def _prediction(self, p: dict[str, Any]) -> list[str]:
        self.scored += 1
        flagged = bool(p.get(self.roles.label)) if self.roles.label else False
        self.flagged += flagged
        latency = self._latency(p)
        wanted = self.show == "all" or (self.show == "some" and (self._rows < self.FIRST_ROWS or
                                                                  (flagged and self._rows < self.SOME_ROWS)))
        if not wanted:
            return []
        self._rows += 1
        table = self._table(p)
        header = [f"  {self.roles.header}"] if self._rows == 1 and table else []
        text = table or json.dumps(p, default=str)
        mark = "FLAGGED" if flagged else ""
        return [*header, f"  {text}  {mark:7} {f'{latency:>5.0f} ms' if latency is not None else '':>8}"]

    def _latency(self, p: dict[str, Any]) -> float | None:
        """Records the event's latencies; returns event → scored in ms, if the fields tell."""
        event_ms = self.roles.event_ms(p)
        if event_ms is None:
            return None
        self.read_ms.append(time.time() * 1000 - event_ms)
        if self.roles.scored_at is None or p.get(self.roles.scored_at) is None:
            return None
        self.scored_ms.append(p[self.roles.scored_at] - event_ms)
        return float(self.scored_ms[-1])

    def _table(self, p: dict[str, Any]) -> str | None:
        if self.roles.row is None:
            return None
        try:
            return self.roles.row.format(**p)
        except (KeyError, ValueError, TypeError):
            return None


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p99 = np.percentile(np.asarray(values), [50, 99])
    return f"p50 {p50:.0f} ms, p99 {p99:.0f} ms"
