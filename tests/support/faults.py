"""Checking the fraud workload's predictions after faults: every event present with its exact score.

Outputs are read as a consumer of the prediction topic would: plainly in at-least-once mode, and
with read_committed semantics in exactly-once mode (``committed_reader``, which decides from the
transaction markers in the log, so it is right on brokers that do not filter aborted records).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from tests.support.committed_reader import read_committed
from tests.support.fraud import decode_prediction
from tests.support.kafka_io import TopicReader


@dataclass
class Tally:
    """Predictions compared with the expected scores."""

    predictions: int = 0
    missing: list[str] = field(default_factory=list)
    wrong: list[tuple[str, float, float]] = field(default_factory=list)
    duplicates: int = 0
    unexpected: int = 0

    def summary(self) -> dict[str, Any]:
        return {"predictions": self.predictions, "missing": len(self.missing), "wrong_score": len(self.wrong),
                "duplicates": self.duplicates, "unexpected": self.unexpected}


class Expected:
    """The score a correct worker publishes for each well-formed event of a workload."""

    def __init__(self, gen: ModuleType, args: argparse.Namespace, good: list[dict[str, Any]],
                 scores: Iterable[float] | None = None) -> None:
        self.gen = gen
        values = gen.expected_scores(good, args).tolist() if scores is None else list(scores)
        self.scores: dict[str, float] = dict(zip((r["event_id"] for r in good), values, strict=True))

    def tally(self, values: Iterable[bytes | None]) -> Tally:
        tally = Tally()
        seen: Counter[str] = Counter()
        for value in values:
            record = decode_prediction(self.gen, value)
            event, score = record["event_id"], record["score"]
            seen[event] += 1
            tally.predictions += 1
            want = self.scores.get(event)
            if want is None:
                tally.unexpected += 1
            elif seen[event] == 1 and abs(score - want) > 1e-5:
                tally.wrong.append((event, score, want))
        tally.missing = [e for e in self.scores if e not in seen]
        tally.duplicates = sum(n - 1 for n in seen.values())
        return tally


class Outputs:
    """The prediction and dead-letter topics as their consumers see them: every record in
    at-least-once mode, committed records only in exactly-once mode."""

    def __init__(self, bootstrap: str, output: str, dlq: str, exactly_once: bool,
                 reader: TopicReader | None = None) -> None:
        self.bootstrap, self.output, self.dlq, self.exactly_once = bootstrap, output, dlq, exactly_once
        self._reader = reader or TopicReader(bootstrap, (output, dlq))
        self._committed: dict[str, list[Any]] = {output: [], dlq: []}

    def refresh(self) -> None:
        if self.exactly_once:
            found = read_committed(self.bootstrap, [self.output, self.dlq])
            self._committed = {t: [(r.key, r.value, dict(r.headers)) for r in records] for t, records in found.items()}
        else:
            self._reader.poll(0.2)

    def values(self) -> list[bytes | None]:
        if self.exactly_once:
            return [value for _, value, _ in self._committed[self.output]]
        return [m.value for m in self._reader.on(self.output)]

    def dead_letters(self) -> list[tuple[bytes | None, bytes | None, dict[str, bytes | None]]]:
        """(key, value, headers) of each dead letter."""
        if self.exactly_once:
            return list(self._committed[self.dlq])
        return [(m.key, m.value, m.headers) for m in self._reader.on(self.dlq)]

    def wait_for(self, expected: Expected, dead: int, timeout_s: float,
                 alive: Callable[[], bool] = lambda: True) -> Tally:
        """Reads until every expected event has a prediction and ``dead`` dead letters arrived
        (or the timeout), then a little longer (late duplicates would show); returns the tally."""
        deadline = time.monotonic() + timeout_s
        interval = 1.0 if self.exactly_once else 0.2
        while True:
            self.refresh()
            tally = expected.tally(self.values())
            done = not tally.missing and len(self.dead_letters()) >= dead
            if done or time.monotonic() > deadline or not alive():
                break
            time.sleep(interval if self.exactly_once else 0)
        time.sleep(1.5)
        self.refresh()
        if not self.exactly_once:
            self._reader.settle(1.0)
        return expected.tally(self.values())

    def arrivals(self) -> int:
        self.refresh()
        return len(self.values())
