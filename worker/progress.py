"""A runner observer that logs one progress line at an interval (never one per event)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence

from worker.kafka import TP
from worker.records import BatchResult, Message

logger = logging.getLogger(__name__)


class ProgressLog:
    def __init__(self, interval_s: float = 10.0, dead_letter_log_limit: int = 20) -> None:
        self.interval_s = interval_s
        self.scored = self.dead = self.batches = 0
        self._window_scored = self._window_events = self._window_batches = 0
        self._last = time.monotonic()
        self._dead_logged = 0
        self._dead_limit = dead_letter_log_limit
        self._dead_suppressed: Counter[str] = Counter()

    def batch_done(self, batch: Sequence[Message], result: BatchResult, consumed_ns: int) -> None:
        self.batches += 1
        self._window_batches += 1
        self._window_events += len(batch)
        self.scored += len(result.outputs)
        self._window_scored += len(result.outputs)
        self.dead += len(result.dead_letters)
        for dead in result.dead_letters:
            self._log_dead_letter(dead.message, dead.stage, dead.reason)
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._report(now)

    def _log_dead_letter(self, message: Message, stage: str, reason: str) -> None:
        # Each dead letter is logged once; past the limit per interval they are only counted,
        # so a flood of poison cannot flood the log.
        if self._dead_logged < self._dead_limit:
            self._dead_logged += 1
            logger.warning("dead-lettered %s[%s]@%s at %s: %s", message.topic(), message.partition(),
                           message.offset(), stage, reason)
        else:
            self._dead_suppressed[stage] += 1

    def _report(self, now: float) -> None:
        rate = self._window_scored / (now - self._last)
        mean_batch = self._window_events / max(self._window_batches, 1)
        logger.info("progress: %d scored (%.0f/s), %d dead-lettered, %d batches (mean %.0f events)", self.scored,
                    rate, self.dead, self.batches, mean_batch)
        if self._dead_suppressed:
            logger.warning("dead letters not logged individually in the last interval: %s",
                           dict(self._dead_suppressed))
        self._last, self._dead_logged = now, 0
        self._window_scored = self._window_events = self._window_batches = 0
        self._dead_suppressed.clear()

    def batch_acked(self, size: int, consumed_ns: int) -> None:
        pass

    def dependency_down(self, what: str, error: Exception) -> None:
        pass

    def partitions_changed(self, assigned: list[TP], revoked: list[TP]) -> None:
        pass
