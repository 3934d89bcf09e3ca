"""Run statistics (``worker run --stats-file``): what the benchmark reads back."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from worker.records import BatchResult, StageTiming
from worker.telemetry.stats import RunStats


def ticket(consumed_ms: float, published_ms: float, acked_ms: float, size: int) -> SimpleNamespace:
    ns = 1_000_000
    return SimpleNamespace(consumed_ns=int(consumed_ms * ns), published_ns=int(published_ms * ns),
                           acked_ns=int(acked_ms * ns), size=size)


def test_latency_percentiles_count_each_event_and_every_batch_is_written(tmp_path: Path) -> None:
    stats = RunStats(tmp_path / "stats.json", launched_at=0.0)
    batches = [(ticket(1, 2, 4, 3), 3), (ticket(10, 12, 30, 1), 1)]  # 3 events at 3 ms, 1 at 20 ms
    for t, size in batches:
        result = BatchResult(timings=[StageTiming("decode", 0, 2_000_000)])
        stats.batch_done(list(range(size)), result, t)  # type: ignore[arg-type]
        stats.batch_acked(t)  # type: ignore[arg-type]

    stats.stopped()
    written = json.loads((tmp_path / "stats.json").read_text())

    assert written["events"] == 4 and written["batch_sizes"] == {"<=1": 1, "<=5": 1}
    assert written["latency_ms"]["p50"] == 3.0 and written["latency_ms"]["max"] == 20.0
    assert written["stage_us_per_event"] == {"decode": 1000.0}
    assert [(ms, size, ack) for _, ms, size, ack in written["batches"]] == [(3.0, 3, 2.0), (20.0, 1, 18.0)]


def test_a_running_worker_rewrites_its_summary_with_batch_sizes_and_broker_acknowledgement_times(
        tmp_path: Path) -> None:
    stats = RunStats(tmp_path / "stats.json", launched_at=0.0, snapshot_every_s=0.0)
    for size, ack_ms in ((3, 2.04), (5, 2.0), (5, 130.4), (40, 3.0)):
        t = ticket(0, 1, 1 + ack_ms, size)
        stats.batch_done(list(range(size)), BatchResult(), t)  # type: ignore[arg-type]
        stats.batch_acked(t)  # type: ignore[arg-type]

    stats.checkpoint_done(StageTiming("commit", 0, 0), committed=True)  # killed after this: the file stays
    written = json.loads((tmp_path / "stats.json").read_text())

    assert written["events_per_batch"] == {"p50": 5.0, "p90": 40.0, "p99": 40.0, "max": 40.0}
    assert written["broker_ack_ms"] == {"p50": 2.0, "p90": 130.0, "p99": 130.0, "max": 130.0}
    assert written["histograms"] == {"events_per_batch": {"3": 1, "5": 2, "40": 1},
                                     "broker_ack_ms": {"2.0": 2, "3.0": 1, "130.0": 1}}
    assert "batches" not in written and not list(tmp_path.glob("*.partial"))
