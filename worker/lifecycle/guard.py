"""Automatic canary rollback: judges the canary on its own recent batches, in-process."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from worker.records import BatchResult, Delivery, Message
from worker.runner.observer import Observer


@dataclass(frozen=True)
class CanaryBounds:
    max_error_rate: float = 0.01
    max_latency_ms: float | None = None
    min_events: int = 200
    window_batches: int = 500


class CanaryGuard(Observer):
    """Watches the canary's runs; when its error rate or p99 inference time over the last
    ``window_batches`` batches breaches a bound (once it has scored ``min_events``), calls
    ``abort(version, reason)``."""

    def __init__(self, bounds: CanaryBounds, abort: Callable[[str, str], None]) -> None:
        self.bounds = bounds
        self.abort = abort
        self._version: str | None = None
        self._window: deque[tuple[int, int, float]] = deque(maxlen=bounds.window_batches)

    def batch_done(self, batch: Sequence[Message], result: BatchResult, delivery: Delivery) -> None:
        runs = [r for r in result.runs if r.role == "canary"]
        if not runs:
            return
        for run in runs:
            if run.version != self._version:
                self._version = run.version
                self._window.clear()
            self._window.append((run.events, run.errors, run.seconds))
        reason = self.breach()
        if reason is not None and self._version is not None:
            self._window.clear()
            self.abort(self._version, reason)

    def breach(self) -> str | None:
        """Why the canary must stop, or None."""
        b = self.bounds
        events = sum(e for e, _, _ in self._window)
        if events < b.min_events:
            return None
        rate = sum(err for _, err, _ in self._window) / events
        if rate > b.max_error_rate:
            return f"error rate {rate:.2%} over its last {events} events exceeds {b.max_error_rate:.2%}"
        if b.max_latency_ms is not None:
            p99 = float(np.percentile([s for _, _, s in self._window], 99)) * 1000
            if p99 > b.max_latency_ms:
                return (f"p99 inference time {p99:.3g} ms over its last {len(self._window)} batches exceeds "
                        f"{b.max_latency_ms:g} ms")
        return None
