"""Exact run statistics for benchmarks and capacity planning (``worker run --stats-file``).

Keeps every batch's size, stage times and worker-added latency (from the moment its first
event was received to the broker's acknowledgement of its last output), and writes a JSON
summary when the worker stops: throughput, process CPU per event while busy (every thread:
steadier than throughput on a shared machine), latency percentiles per event, time per stage,
the batch-size distribution, peak RSS and time to ready; and per batch its receive time,
latency and size, so that a benchmark can look at a window of the run. With ``snapshot_every_s``
the summary is also rewritten that often while the worker runs, so a process that is killed
(the chaos soak SIGKILLs replicas) leaves its figures up to then; the summary's histograms of
events per batch and of broker acknowledgement times let a benchmark merge several processes'.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from worker.records import BatchResult, Delivery, Message, StageTiming
from worker.runner.observer import Observer
from worker.telemetry.progress import weighted_percentiles

_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)
_PERCENTS = (50, 90, 99, 100)


def ack_bucket(ms: float) -> float:
    """An acknowledgement time rounded to two significant figures (0.1 ms below 10 ms, 1 ms below 100):
    the histogram stays small over a long run and its percentiles stay within 5 %."""
    if ms < 10:
        return round(ms, 1)
    if ms < 100:
        return float(round(ms))
    return float(round(ms, -1) if ms < 1000 else round(ms, -2))


def histogram_percentiles(histogram: Mapping[float, int] | Mapping[int, int]) -> dict[str, float]:
    """p50, p90, p99 and max of a ``{value: count}`` histogram (NaN where empty)."""
    found = weighted_percentiles([(float(v), n) for v, n in histogram.items()], _PERCENTS)
    return dict(zip(("p50", "p90", "p99", "max"), found, strict=True))


class RunStats(Observer):
    def __init__(self, path: Path, launched_at: float, snapshot_every_s: float | None = None) -> None:
        self.path = path
        self.snapshot_every_s = snapshot_every_s
        self._last_snapshot = time.monotonic()
        self.launched_at = launched_at  # time.time() when the process started
        self.ready_s: float | None = None
        self.events = self.outputs = self.dead_letters = 0
        self.stage_s: dict[str, float] = defaultdict(float)
        self.sizes: Counter[int] = Counter()
        self.events_per_batch: Counter[int] = Counter()
        self.ack_ms: Counter[float] = Counter()  # per acknowledged batch, its last output's ack, bucketed
        # per acked batch: received (epoch s), worker-added ms, events, ms of it waiting for the broker's ack
        self.samples: list[tuple[float, float, int, float]] = []
        self.first_received_ns: int | None = None
        self.last_acked_ns = 0
        self.first_cpu_s = self.last_cpu_s = 0.0  # process CPU (every thread) at the first batch, last ack
        self._lock = threading.Lock()

    def partitions_changed(self, assigned: list[tuple[str, int]], revoked: list[tuple[str, int]]) -> None:
        if assigned and self.ready_s is None:
            self.ready_s = time.time() - self.launched_at

    def batch_done(self, batch: Sequence[Message], result: BatchResult, delivery: Delivery) -> None:
        self.events += len(batch)
        self.outputs += len(result.outputs)
        self.dead_letters += len(result.dead_letters)
        self.sizes[next((b for b in _SIZE_BUCKETS if len(batch) <= b), _SIZE_BUCKETS[-1])] += 1
        self.events_per_batch[len(batch)] += 1
        for timing in result.timings:
            self.stage_s[timing.stage] += timing.seconds
        if self.first_received_ns is None:
            self.first_received_ns = delivery.consumed_ns
            self.first_cpu_s = time.process_time()

    def batch_acked(self, delivery: Delivery) -> None:
        latency_ms = (delivery.acked_ns - delivery.consumed_ns) / 1e6
        received = time.time() - (time.perf_counter_ns() - delivery.consumed_ns) / 1e9
        ack_ms = (delivery.acked_ns - delivery.published_ns) / 1e6
        with self._lock:
            self.samples.append((round(received, 4), round(latency_ms, 3), delivery.size, round(ack_ms, 3)))
            self.ack_ms[ack_bucket(ack_ms)] += 1
            self.last_acked_ns = max(self.last_acked_ns, delivery.acked_ns)
            self.last_cpu_s = time.process_time()

    def checkpoint_done(self, timing: StageTiming, committed: bool) -> None:
        self.stage_s["commit"] += timing.seconds
        if self.snapshot_every_s is not None and time.monotonic() - self._last_snapshot >= self.snapshot_every_s:
            self._last_snapshot = time.monotonic()
            self._write(self.snapshot())

    def _write(self, content: dict[str, Any]) -> None:
        """Replace the file whole (a reader, or a kill, never sees half of it)."""
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(content))
        os.replace(partial, self.path)

    def stopped(self) -> None:
        with self._lock:
            samples = list(self.samples)
        self._write({**self.summary(), "batches": samples})

    def summary(self) -> dict[str, Any]:
        with self._lock:
            latencies = [(ms, size) for _, ms, size, _ in self.samples]
            last_acked = self.last_acked_ns
        p50, p90, p99, p999, worst = weighted_percentiles(latencies, (50, 90, 99, 99.9, 100))
        span_s = (last_acked - self.first_received_ns) / 1e9 if self.first_received_ns and last_acked else 0.0
        return {
            "events": self.events, "outputs": self.outputs, "dead_letters": self.dead_letters,
            "throughput_eps": round(self.events / span_s) if span_s > 0 else None,
            "busy_s": round(span_s, 3),
            "cpu_us_per_event": round((self.last_cpu_s - self.first_cpu_s) / self.events * 1e6, 2)
            if self.events and self.last_cpu_s else None,
            "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "p99.9": p999, "max": worst},
            "stage_us_per_event": {k: round(v / max(self.events, 1) * 1e6, 3) for k, v in self.stage_s.items()},
            "batch_sizes": {f"<={b}": self.sizes[b] for b in _SIZE_BUCKETS if self.sizes[b]},
            "mean_batch": round(self.events / max(sum(self.sizes.values()), 1), 1),
            **self.snapshot(),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "ready_s": round(self.ready_s, 3) if self.ready_s is not None else None,
        }

    def snapshot(self) -> dict[str, Any]:
        """What is rewritten while running: counts and histograms, cheap whatever the run's length
        (the latency percentiles sort every batch's sample, tens of ms a second into a long run)."""
        with self._lock:
            ack_ms = dict(self.ack_ms)
        per_batch = dict(self.events_per_batch)
        return {
            "events": self.events, "outputs": self.outputs, "dead_letters": self.dead_letters,
            "events_per_batch": histogram_percentiles(per_batch),
            "broker_ack_ms": histogram_percentiles(ack_ms),
            "histograms": {"events_per_batch": per_batch, "broker_ack_ms": ack_ms},
        }
