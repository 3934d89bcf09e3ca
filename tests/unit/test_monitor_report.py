"""``worker monitor report`` drawn from a real Redis: two versions (one drifting), two replicas."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from worker.cli.monitor import parse_when
from worker.errors import ToolError
from worker.monitoring import report
from worker.monitoring.report import NO_DRIFT, NO_LABELS, render, summarize
from worker.monitoring.store import JoinTimes, Label, MonitorStore, Prediction
from worker.quality.bins import psi

PREFIX = "test:"
START_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC
MINUTE = 60_000
SNAPSHOTS = 10
EVENTS = 4000  # per replica's window
REPLICAS = ("host-a-101", "host-b-202")
STOPPED = "host-c-303"  # published once, before the others, then stopped
VERSIONS = ("1", "2")
DRIFTED = "amount"
REFERENCE = {  # the drifted feature neither first nor last
    "card.txn_count_1h": {"edges": [0.0, 1.0], "shares": [0.0, 0.6, 0.4]},
    "amount": {"edges": [10.0, 20.0, 50.0, 100.0], "shares": [0.2, 0.3, 0.3, 0.15, 0.05]},
    "merchant.category": {"edges": [5311.0, 5411.0, 5812.0], "shares": [0.1, 0.4, 0.3, 0.2]},
    "$score": {"edges": [round(0.1 * k, 1) for k in range(1, 10)], "shares": [0.1] * 10},
}
FIGURES_PER_VERSION = 4  # reference vs current, PSI over time, accuracy over time, calibration


@pytest.fixture
def client(redis_client: redis.Redis) -> redis.Redis:
    return redis_client


@pytest.fixture
def store(client: redis.Redis) -> MonitorStore:
    return MonitorStore(client, PREFIX, JoinTimes(wait_ms=3_600_000, unmatched_after_ms=600_000, window=5000))


@pytest.fixture
def filled(client: redis.Redis, store: MonitorStore) -> dict[str, Any]:
    """The store with drift and accuracy histories and joined windows; what the report should say."""
    return fill(client, store, REFERENCE, DRIFTED)


def fill(client: redis.Redis, store: MonitorStore, reference: dict[str, dict[str, list[float]]],
         drifted: str) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    latest: dict[str, np.ndarray] = {}
    stopped = [{"model_name": "fraud", "model_version": v, "events": EVENTS,
                "columns": {name: _column(rng, bins, 0.0) for name, bins in reference.items()}} for v in VERSIONS]
    _xadd(client, "drift", START_MS - 5000, {"replica": STOPPED, "windows": stopped})
    for t in range(SNAPSHOTS):
        for r, replica in enumerate(REPLICAS):
            windows = []
            for version in VERSIONS:
                drift = t / (SNAPSHOTS - 1) if version == "2" else 0.0
                columns = {name: _column(rng, bins, drift if name == drifted else 0.0) for name, bins in
                           reference.items()}
                windows.append({"model_name": "fraud", "model_version": version, "events": EVENTS, "columns": columns})
                if version == "2":
                    latest[replica] = np.asarray(columns[drifted]["counts"])
            _xadd(client, "drift", START_MS + t * MINUTE + r * 20_000, {"replica": replica, "windows": windows})
    for t in range(SNAPSHOTS):
        _xadd(client, "accuracy", START_MS + t * MINUTE + 30_000, _accuracy_entry(t))
    _join(store, rng)
    counts = sum(latest.values())
    return {"psi": psi(np.asarray(counts), np.asarray(reference[drifted]["shares"]))}


def _column(rng: np.random.Generator, bins: dict[str, list[float]], drift: float) -> dict[str, Any]:
    shares = np.asarray(bins["shares"])
    current = (1 - drift) * shares + drift * shares[::-1]
    counts = rng.multinomial(EVENTS, current / current.sum())
    return {"counts": counts.tolist(), "psi": psi(counts, shares), "bins": bins}


def _accuracy_entry(t: int) -> dict[str, Any]:
    versions = [{"model_name": "fraud", "model_version": v, "events": 1000 + 100 * t, "positives": 40 + t,
                 "auc": 0.93 - (0.02 * t if v == "2" else 0.0), "precision": None if t == 0 else 0.6 + 0.01 * t,
                 "recall": 0.5, "log_loss": 0.12 + (0.01 * t if v == "2" else 0.0)} for v in VERSIONS]
    return {"versions": versions, "totals": {}, "threshold": 0.5}


def _join(store: MonitorStore, rng: np.random.Generator) -> None:
    predictions, labels = [], []
    for version in VERSIONS:
        scores = rng.beta(1.2, 4.0, 1500)
        for i, score in enumerate(scores):
            event = f"{version}-{i}"
            predictions.append(Prediction(event, "fraud", version, float(score), START_MS))
            labels.append(Label(event, bool(rng.random() < score), START_MS + MINUTE))
    labels.append(Label("lost", True, START_MS))  # never joined
    store.add(predictions, labels)


def _xadd(client: redis.Redis, kind: str, at: int, entry: dict[str, Any]) -> None:
    """As ``MonitorStore.append``, at a chosen time (the entry id's milliseconds)."""
    client.xadd(f"{PREFIX}h:{kind}", {"json": json.dumps(entry)}, id=f"{at}-0")


def test_the_summary_points_at_the_drifted_feature(store: MonitorStore, filled: dict[str, Any]) -> None:
    rows = {s.model_version: s for s in summarize(store)}
    assert set(rows) == set(VERSIONS)
    drifted, stable = rows["2"], rows["1"]
    assert drifted.max_feature == DRIFTED
    assert drifted.max_feature_psi == pytest.approx(filled["psi"])
    assert filled["psi"] > 0.2
    assert drifted.drift_events == EVENTS * len(REPLICAS)  # the live replicas' windows summed, not the stopped one's
    assert stable.max_feature_psi is not None and stable.max_feature_psi < 0.1
    assert drifted.score_psi is not None and drifted.score_psi < 0.1
    assert (drifted.auc, drifted.precision, drifted.labelled) == (pytest.approx(0.75), pytest.approx(0.69), 1900)


def test_the_summary_of_a_range_ends_at_its_last_snapshot(store: MonitorStore, filled: dict[str, Any]) -> None:
    early = {s.model_version: s for s in summarize(store, START_MS, START_MS + MINUTE + 30_000)}
    assert early["2"].max_feature_psi is not None and early["2"].max_feature_psi < 0.1  # the drift came later
    assert early["2"].auc == pytest.approx(0.91)


def test_html_and_png_reports(store: MonitorStore, filled: dict[str, Any], tmp_path: Path) -> None:
    page = render(store, tmp_path / "report.html", title="Fraud quality").read_text()
    assert page.count("<img") == FIGURES_PER_VERSION * len(VERSIONS)
    assert "Fraud quality" in page
    assert all(f"fraud v{v}" in page for v in VERSIONS)
    assert all(name in page for name in REFERENCE if name != "$score")
    assert f'<td class="high">{filled["psi"]:.3f} ({DRIFTED})</td>' in page
    assert "no drift snapshots" not in page and "no labelled predictions" not in page
    assert "src=\"http" not in page and "<link" not in page and "<script" not in page  # self-contained

    with Image.open(render(store, tmp_path / "report.png")) as image:
        assert image.format == "PNG"
        assert image.height > image.width


def test_an_empty_store_says_what_is_missing(store: MonitorStore, tmp_path: Path) -> None:
    page = render(store, tmp_path / "empty.html").read_text()
    assert "<img" not in page
    assert "no drift snapshots in this range" in page and "<code>worker run</code>" in page
    assert "no labelled predictions yet" in page and "<code>worker monitor</code>" in page
    assert NO_DRIFT.startswith("no drift snapshots in this range") and NO_LABELS.startswith("no labelled predictions")
    with Image.open(render(store, tmp_path / "empty.png")) as image:
        assert image.format == "PNG" and image.width > 0


def test_other_suffixes_are_refused(store: MonitorStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.html or \.png, not \.pdf"):
        render(store, tmp_path / "report.pdf")
    assert not (tmp_path / "report.pdf").exists()


def test_without_matplotlib_it_says_what_to_install(store: MonitorStore, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'inference-worker\[report\]'"):
        render(store, tmp_path / "report.html")
    assert report.NEEDS_MATPLOTLIB.startswith("worker monitor report needs matplotlib")


NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    (None, None),
    ("2026-11-29T12:00", NOW),  # no zone: UTC
    ("2026-11-29T12:00+01:00", datetime(2026, 11, 29, 11, 0, tzinfo=UTC)),
    ("2026-11-29", datetime(2026, 11, 29, tzinfo=UTC)),
    ("30m", datetime(2026, 11, 29, 11, 30, tzinfo=UTC)),
    (" 24h ", datetime(2026, 11, 28, 12, 0, tzinfo=UTC)),
    ("1.5h", datetime(2026, 11, 29, 10, 30, tzinfo=UTC)),
    ("7d", datetime(2026, 11, 22, 12, 0, tzinfo=UTC)),
])
def test_from_and_to_are_iso_times_or_spans_ago(text: str | None, expected: datetime | None) -> None:
    assert parse_when(text, NOW) == (None if expected is None else int(expected.timestamp() * 1000))


@pytest.mark.parametrize("text", ["yesterday", "24", "2w", "-1h"])
def test_a_time_that_is_neither_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ToolError, match=r"neither an ISO time .* nor a span ago"):
        parse_when(text, NOW)
