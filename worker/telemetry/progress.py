"""A runner observer that logs one progress line at an interval (never one per event)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence

from worker.records import BatchResult, Delivery, Message
from worker.runner.observer import Observer

logger = logging.getLogger(__name__)


class ProgressLog(Observer):
    def __init__(self, interval_s: float = 10.0, dead_letter_log_limit: int = 20) -> None:
        self.interval_s = interval_s
        self.scored = self.dead = self.batches = 0
        self._window_scored = self._window_events = self._window_batches = 0
        self._last = time.monotonic()
        self._dead_logged = 0
        self._dead_limit = dead_letter_log_limit
        self._dead_suppressed: Counter[str] = Counter()
        self._latencies: list[tuple[float, int]] = []  # (worker-added ms, events) per acked batch
        self._acks: list[tuple[float, int]] = []  # (ms from produce to acknowledgement, events)
        self._samples_lock = threading.Lock()  # acknowledgements arrive on the delivery thread

    def batch_done(self, batch: Sequence[Message], result: BatchResult, delivery: Delivery) -> None:
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
        with self._samples_lock:
            (latencies, self._latencies), (acks, self._acks) = (self._latencies, []), (self._acks, [])
        p50, p99 = weighted_percentiles(latencies, (50, 99))
        ack50, ack99 = weighted_percentiles(acks, (50, 99))
        logger.info("progress: %d scored (%.0f/s), %d dead-lettered, %d batches (mean %.0f events), "
                    "worker latency p50 %.1f ms p99 %.1f ms (broker ack p50 %.1f ms p99 %.1f ms)", self.scored, rate,
                    self.dead, self.batches, mean_batch, p50, p99, ack50, ack99)
        if self._dead_suppressed:
            logger.warning("dead letters not logged individually in the last interval: %s",
                           dict(self._dead_suppressed))
        self._last, self._dead_logged = now, 0
        self._window_scored = self._window_events = self._window_batches = 0
        self._dead_suppressed.clear()

    def batch_acked(self, delivery: Delivery) -> None:
        with self._samples_lock:
            self._latencies.append(((delivery.acked_ns - delivery.consumed_ns) / 1e6, delivery.size))
            self._acks.append(((delivery.acked_ns - delivery.published_ns) / 1e6, delivery.size))


def weighted_percentiles(samples: list[tuple[float, int]], percents: Sequence[float]) -> list[float]:
    """Percentiles of values each counted ``weight`` times (a batch's latency, once per event)."""
    if not samples:
        return [float("nan")] * len(percents)
    ordered = sorted(samples)
    total = sum(w for _, w in ordered)
    out = []
    for pct in percents:
        target, seen = total * pct / 100, 0
        for value, weight in ordered:
            seen += weight
            if seen >= target:
                out.append(value)
                break
    return out
