"""The model-quality report (``worker monitor report --out report.html|report.png``).

Drawn from the monitor's store (``worker.monitoring.store``): the drift snapshots ``worker run``
publishes, the accuracy snapshots ``worker monitor`` takes, each version's window of joined
(score, label) pairs, and the join totals. The header gives the range, the totals and one row
per model version; then, per version:

1. **Reference vs current.** A small bar chart per feature and one for the score: grey bars
   are the reference's share of each bin (the training data), blue bars the share in the
   latest drift window. The ticks between bars are the bin edges. Each title gives the
   column's PSI, amber from 0.1, red above 0.2: there, compare the bars to see where the
   values moved (a new range, an emptied bin, everything in one bin: a broken upstream).
2. **PSI over time.** A line per feature, the score black and dashed, guides at 0.1 and 0.2,
   time in UTC. A step in one feature points at its source; all features moving together
   points at the traffic itself (a new market, a holiday).
3. **Accuracy over time.** AUC, precision and recall (at the monitor's threshold) of each
   accuracy snapshot, over the labelled window at that time; log loss (lower is better) on its
   own panel. Labels come late: the newest points cover predictions from a while ago.
4. **Calibration and score distribution**, over the version's latest labelled window
   (whatever the range): mean predicted score against the observed positive rate per score
   bin (point size and number: events). On the dashed diagonal the scores are probabilities;
   above it the model under-predicts, below it over-predicts. Beside it the scores of
   positive and of negative labels, each normalised: the less they overlap, the better the
   model separates.

Reading PSI: below 0.1 stable; 0.1–0.2 a moderate shift, worth watching; above 0.2 a shift to
act on (check the feature's source, retrain, or roll back). Feature drift with a stable score
and stable accuracy may be harmless; score drift with a falling AUC is not.

Replicas: every ``worker run`` replica publishes its own drift window. The report combines them
as one fleet: the counts of each replica's latest snapshot are summed and PSI is recomputed from
the sum (so a replica weighs by its events). Over time this is done per bucket (the snapshot
interval, wider for long ranges: at most 150 points), at the bucket's last snapshot; a replica
whose latest snapshot is more than two snapshot intervals older (stopped, or restarted under a
new id) is left out.

``.html`` is one self-contained file (the figures inline as PNG); ``.png`` stacks the header and
every figure into one image. matplotlib (the ``report`` extra) is imported only to draw, so this
module imports without it.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.monitoring.store import MonitorStore
from worker.quality.accuracy import calibration
from worker.quality.bins import psi as population_stability

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SCORE = "$score"  # the score's column in a drift window: worker.telemetry.drift.SCORE (a sibling room: not imported)
FORMATS = (".html", ".png")
NEEDS_MATPLOTLIB = "worker monitor report needs matplotlib: pip install 'inference-worker[report]'"
NO_DRIFT = ("no drift snapshots in this range — is `worker run` running with monitoring.drift and a reference, "
            "and does this report read its keys (monitor:<kafka.group_id>: by default: give the worker's --group-id)?")
NO_LABELS = "no labelled predictions yet — is `worker monitor` running?"
NO_ACCURACY = "no accuracy snapshots in this range — is `worker monitor` running?"
NOT_PROBABILITIES = "the scores are not all in [0, 1]: no calibration curve"
MODERATE, HIGH = 0.1, 0.2
DEFAULT_INTERVAL_MS = 60_000
MAX_POINTS = 150
CALIBRATION_BINS = 10
WIDTH_IN, DPI = 15.0, 100
RED, AMBER, INK, GREY = "#c0392b", "#d68910", "#222222", "#888888"
REFERENCE_COLOR, CURRENT_COLOR = "#b5b5b5", "#2a6f97"
COLUMNS = ("model", "version", "drift events", "max feature PSI", "score PSI", "AUC", "precision", "recall",
           "log loss", "labelled (positive)")

Version = tuple[str, str]
Snapshot = tuple[int, str, dict[str, Any]]
"""A drift window of one version from one replica: (at, replica, window)."""
Cell = tuple[str, str]
"""A table cell: its text and its class (``text``, ``moderate``, ``high`` or empty)."""


@dataclass(frozen=True)
class Column:
    """One column of a drift window: the reference's bins and the counts seen."""

    edges: np.ndarray
    shares: np.ndarray
    counts: np.ndarray

    @property
    def psi(self) -> float | None:
        value = population_stability(self.counts, self.shares)
        return value if math.isfinite(value) else None

    @property
    def current(self) -> np.ndarray:
        total = float(self.counts.sum())
        return self.counts / total if total > 0 else np.zeros(len(self.shares))


@dataclass(frozen=True)
class DriftWindow:
    """A version's drift window, summed over the replicas that published it."""

    at: int
    events: int
    replicas: int
    columns: dict[str, Column]
    """The features in the newest snapshot's order, the score last."""

    def psi(self) -> dict[str, float | None]:
        return {name: column.psi for name, column in self.columns.items()}


@dataclass(frozen=True)
class VersionSummary:
    """A version's row in the header: its latest drift window and latest accuracy snapshot."""

    model_name: str
    model_version: str
    drift_events: int | None = None
    max_feature: str | None = None
    max_feature_psi: float | None = None
    score_psi: float | None = None
    auc: float | None = None
    precision: float | None = None
    recall: float | None = None
    log_loss: float | None = None
    labelled: int | None = None
    positives: int | None = None


@dataclass(frozen=True)
class _Data:
    drift: list[dict[str, Any]]
    accuracy: list[dict[str, Any]]
    totals: dict[str, int]

    def versions(self) -> list[Version]:
        """Every version with a drift or an accuracy snapshot in the range."""
        seen = {_key(w) for e in self.drift for w in e.get("windows", [])}
        seen |= {_key(v) for e in self.accuracy for v in e.get("versions", [])}
        return sorted(seen, key=lambda v: (v[0], not v[1].isdigit(), int(v[1]) if v[1].isdigit() else 0, v[1]))

    def threshold(self) -> float | None:
        value = self.accuracy[-1].get("threshold") if self.accuracy else None
        return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class _Version:
    """What the report draws of one version."""

    version: Version
    drift: list[tuple[int, DriftWindow]]
    """The fleet's drift window per time bucket, oldest first."""
    bucket_ms: int
    accuracy: list[tuple[int, dict[str, Any]]]
    """(at, the version's entry) of each accuracy snapshot."""


@dataclass(frozen=True)
class _Block:
    """One figure, or the message standing in for it."""

    heading: str
    note: str
    png: bytes | None = None
    message: str | None = None
    psi: dict[str, float | None] | None = None


# ---------------------------------------------------------------------------------------- the data


def summarize(store: MonitorStore, since_ms: int | None = None, until_ms: int | None = None) -> list[VersionSummary]:
    """The header's rows: per version, its latest drift window and accuracy snapshot in the range."""
    data = _gather(store, since_ms, until_ms)
    return [_summary(_version(data, v)) for v in data.versions()]


def _gather(store: MonitorStore, since_ms: int | None, until_ms: int | None) -> _Data:
    return _Data(store.history("drift", since_ms, until_ms), store.history("accuracy", since_ms, until_ms),
                 store.totals())


def _key(entry: dict[str, Any]) -> Version:
    return str(entry.get("model_name")), str(entry.get("model_version"))


def _version(data: _Data, version: Version) -> _Version:
    snapshots = [(int(e["at"]), str(e.get("replica", "")), w) for e in data.drift for w in e.get("windows", [])
                 if _key(w) == version]
    accuracy = [(int(e["at"]), v) for e in data.accuracy for v in e.get("versions", []) if _key(v) == version]
    span = snapshots[-1][0] - snapshots[0][0] if snapshots else 0
    interval = _interval_ms(snapshots)
    bucket = max(interval, math.ceil(span / MAX_POINTS))
    return _Version(version, _drift_series(snapshots, bucket, 2 * interval), bucket, accuracy)


def _interval_ms(snapshots: Sequence[Snapshot]) -> int:
    """How often a replica publishes: the median gap between its snapshots."""
    last: dict[str, int] = {}
    gaps = []
    for at, replica, _ in snapshots:
        if replica in last:
            gaps.append(at - last[replica])
        last[replica] = at
    return max(1000, int(np.median(gaps))) if gaps else DEFAULT_INTERVAL_MS


def _drift_series(snapshots: Sequence[Snapshot], bucket_ms: int, live_ms: int) -> list[tuple[int, DriftWindow]]:
    """Per time bucket with a snapshot, at its last one: the latest snapshot of every replica that
    published in the ``live_ms`` before (one stopped or restarted under another id is left out), combined."""
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    series = []
    for i, (at, replica, window) in enumerate(snapshots):
        latest[replica] = (at, window)
        if i + 1 < len(snapshots) and snapshots[i + 1][0] // bucket_ms == at // bucket_ms:
            continue
        live = sorted((s for s in latest.values() if at - s[0] <= live_ms), key=lambda s: s[0])
        series.append((at, _combine(live)))
    return series


def _combine(snapshots: Sequence[tuple[int, dict[str, Any]]]) -> DriftWindow:
    """Counts summed over replicas, on the newest snapshot's bins (a replica with other bins for a
    column, another reference, does not add to that column)."""
    at, newest = snapshots[-1]
    columns = {name: _column(c) for name, c in newest.get("columns", {}).items()}
    for _, window in snapshots[:-1]:
        for name, c in window.get("columns", {}).items():
            mine = columns.get(name)
            counts = np.asarray(c.get("counts", []), dtype=np.float64)
            same = mine is not None and np.array_equal(mine.edges, c["bins"]["edges"])
            if mine is not None and same and counts.shape == mine.counts.shape:
                columns[name] = replace(mine, counts=mine.counts + counts)
    ordered = {n: c for n, c in columns.items() if n != SCORE} | ({SCORE: columns[SCORE]} if SCORE in columns else {})
    return DriftWindow(at, sum(int(w.get("events", 0)) for _, w in snapshots), len(snapshots), ordered)


def _column(data: dict[str, Any]) -> Column:
    bins = data["bins"]
    return Column(np.asarray(bins["edges"], dtype=np.float64), np.asarray(bins["shares"], dtype=np.float64),
                  np.asarray(data.get("counts", []), dtype=np.float64))


def _summary(v: _Version) -> VersionSummary:
    window = v.drift[-1][1] if v.drift else None
    psis = window.psi() if window is not None else {}
    features = {name: p for name, p in psis.items() if name != SCORE and p is not None}
    top = max(features, key=features.__getitem__) if features else None
    last = v.accuracy[-1][1] if v.accuracy else {}
    return VersionSummary(
        *v.version, drift_events=window.events if window else None, max_feature=top,
        max_feature_psi=features.get(top) if top else None, score_psi=psis.get(SCORE),
        auc=_number(last.get("auc")), precision=_number(last.get("precision")), recall=_number(last.get("recall")),
        log_loss=_number(last.get("log_loss")), labelled=last.get("events"), positives=last.get("positives"))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


# ------------------------------------------------------------------------------------- the report


def render(store: MonitorStore, out: Path, since_ms: int | None = None, until_ms: int | None = None,
           title: str = "Model quality") -> Path:
    """Draws the report into ``out``: a self-contained ``.html`` page or one tall ``.png``."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        accepted = " or ".join(FORMATS)
        raise ValueError(f"the report is written as {accepted}, not {out.suffix}" if out.suffix else
                         f"the report is written as {accepted}: name the file with one of these suffixes")
    _require_matplotlib()
    data = _gather(store, since_ms, until_ms)
    versions = [_version(data, v) for v in data.versions()]
    summaries = [_summary(v) for v in versions]
    sections = [(_name(v.version), _blocks(store, v, data.threshold())) for v in versions] or [("", _empty())]
    lines = _header_lines(data, since_ms, until_ms, totals=suffix == ".png")
    if suffix == ".html":
        out.write_text(_html(title, lines, _totals(data.totals), summaries, sections), encoding="utf-8")
    else:
        out.write_bytes(_png(title, lines, summaries, sections))
    return out


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(NEEDS_MATPLOTLIB) from exc


_NOTES = {
    "drift": "Grey: the reference's share per bin; blue: the latest window's. Ticks are bin edges. "
             "Titles: PSI, amber from 0.1, red above 0.2.",
    "psi": "PSI per column over time (the score black and dashed); replicas combined per bucket.",
    "accuracy": "Each accuracy snapshot, over the labelled window at that time.",
    "calibration": "Over the latest labelled window, whatever the range. On the diagonal, scores are probabilities.",
}


def _blocks(store: MonitorStore, v: _Version, threshold: float | None) -> list[_Block]:
    blocks = []
    if v.drift:
        window = v.drift[-1][1]
        blocks.append(_Block("Reference vs current", _NOTES["drift"], _to_png(_drift_figure(v.version, window)),
                             psi=window.psi()))
        blocks.append(_Block("PSI over time", _NOTES["psi"], _to_png(_psi_figure(v))))
    else:
        blocks.append(_Block("Drift", "", message=NO_DRIFT))
    blocks.append(_Block("Accuracy over time", _NOTES["accuracy"], _to_png(_accuracy_figure(v, threshold)))
                  if v.accuracy else _Block("Accuracy over time", "", message=NO_ACCURACY))
    scores, labels = store.window(*v.version)
    if not len(scores):
        blocks.append(_Block("Calibration", "", message=NO_LABELS))
    else:
        blocks.append(_Block("Calibration and score distribution", _NOTES["calibration"],
                             _to_png(_calibration_figure(v.version, scores, labels, threshold))))
    return blocks


def _empty() -> list[_Block]:
    return [_Block("Drift", "", message=NO_DRIFT), _Block("Accuracy", "", message=NO_LABELS)]


def _header_lines(data: _Data, since_ms: int | None, until_ms: int | None, totals: bool) -> list[str]:
    """When, which range, the totals as a line (``totals``; else the HTML's table shows them), how to read PSI."""
    times = [e["at"] for e in (*data.drift, *data.accuracy)]
    span = f" (snapshots from {_time(min(times))} to {_time(max(times))})" if times else " (no snapshots)"
    labels = "labels: " + " · ".join(f"{value} {name}" for name, value in _totals(data.totals).items())
    return [f"generated {_time(int(datetime.now(UTC).timestamp() * 1000))}",
            f"range: {_time(since_ms) if since_ms is not None else 'everything kept'} → "
            f"{_time(until_ms) if until_ms is not None else 'now'}{span}",
            *([labels + " (matched / received)"] if totals else []),
            "PSI: below 0.1 stable · 0.1–0.2 moderate (amber) · above 0.2 act (red)"]


def _totals(t: dict[str, int]) -> dict[str, str]:
    """The join's totals since the monitor's state began, with the labels still waiting and the join rate."""
    pending = max(0, t["received"] - t["matched"] - t["late"] - t["unmatched"])
    rate = f"{t['matched'] / t['received']:.1%}" if t["received"] else "—"
    counts = {name: f"{t[name]:,}" for name in ("received", "matched", "late", "unmatched")}
    return {**counts, "pending": f"{pending:,}", "join rate": rate}


def _summary_rows(summaries: Sequence[VersionSummary]) -> list[list[Cell]]:
    rows = []
    for s in summaries:
        top = f"{_three(s.max_feature_psi)} ({s.max_feature})" if s.max_feature else "—"
        labelled = f"{s.labelled:,} ({s.positives or 0:,})" if s.labelled is not None else "—"
        rows.append([(s.model_name, "text"), (s.model_version, "text"),
                     (f"{s.drift_events:,}" if s.drift_events is not None else "—", ""),
                     (top, _psi_level(s.max_feature_psi)), (_three(s.score_psi), _psi_level(s.score_psi)),
                     *((_three(m), "") for m in (s.auc, s.precision, s.recall, s.log_loss)), (labelled, "")])
    return rows


# ------------------------------------------------------------------------------------ the figures


def _figure(height_in: float, title: str) -> Figure:
    from matplotlib.figure import Figure  # drawn on Agg, with no pyplot state

    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained", facecolor="white")
    fig.suptitle(title, x=0.005, ha="left", fontsize=12, fontweight="bold")
    return fig


def _to_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def _drift_figure(version: Version, window: DriftWindow) -> Figure:
    from matplotlib.patches import Patch

    names = list(window.columns)
    ncols = min(6, len(names)) or 1
    nrows = max(1, math.ceil(len(names) / ncols))
    replicas = f" from {window.replicas} replicas" if window.replicas > 1 else ""
    fig = _figure(0.7 + 2.3 * nrows, f"{_name(version)} — reference vs current share per bin: {window.events:,} "
                  f"events in the drift window{replicas}, latest {_time(window.at)}")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        _bars(ax, name, window.columns[name])
    for ax in list(axes.flat)[len(names):]:
        ax.set_axis_off()
    fig.legend(handles=[Patch(color=REFERENCE_COLOR, label="reference"), Patch(color=CURRENT_COLOR, label="current")],
               loc="outside upper right", ncols=2, fontsize=9, frameon=False)
    return fig


def _bars(ax: Axes, name: str, column: Column) -> None:
    from matplotlib.ticker import PercentFormatter

    x = np.arange(len(column.shares))
    ax.bar(x - 0.2, column.shares, 0.4, color=REFERENCE_COLOR)
    ax.bar(x + 0.2, column.current, 0.4, color=CURRENT_COLOR)
    ax.set_xticks(x[:-1] + 0.5, [_compact(e) for e in column.edges], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(x) - 0.4)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.tick_params(axis="y", labelsize=7)
    level = _psi_level(column.psi)
    color = {"high": RED, "moderate": AMBER}.get(level, INK)
    ax.set_title(f"{_label(name)}\nPSI {_three(column.psi)}", fontsize=9, color=color,
                 fontweight="bold" if level else "normal")
    for spine in ax.spines.values():
        spine.set_edgecolor(color if level else "#cccccc")
        spine.set_linewidth(1.6 if level else 0.8)


def _psi_figure(v: _Version) -> Figure:
    from matplotlib import colormaps

    fig = _figure(4.2, f"{_name(v.version)} — PSI over time (replicas combined per {_duration(v.bucket_ms)})")
    ax = fig.subplots()
    times = [at for at, _ in v.drift]
    psis = [w.psi() for _, w in v.drift]
    names = [n for n in dict.fromkeys(n for p in psis for n in p) if n != SCORE]
    palette = colormaps["tab20" if len(names) > 10 else "tab10"]
    for i, name in enumerate(names):
        _psi_line(ax, times, [_nan(p.get(name)) for p in psis], name, palette(i % palette.N))
    if any(SCORE in p for p in psis):
        _psi_line(ax, times, [_nan(p.get(SCORE)) for p in psis], "score", INK, "--")
    _psi_guides(ax, max((x for p in psis for x in p.values() if x is not None), default=0.0))
    _time_axis(ax, times)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, ncols=2 if len(names) > 16 else 1,
              frameon=False)
    return fig


def _psi_line(ax: Axes, times: Sequence[int], values: Sequence[float], name: str, color: Any,
              style: str = "-") -> None:
    """A column's PSI; one that reached 0.1 drawn bold and named at its last point."""
    drifting = bool(np.nanmax(values, initial=0.0) >= MODERATE)
    ax.plot(_dates(times), values, style, marker="o" if len(times) <= 40 else "", markersize=3, color=color,
            lw=2.4 if drifting else 1.1, alpha=1.0 if drifting else 0.7, label=name, zorder=3 if drifting else 2)
    last = next((i for i in range(len(values) - 1, -1, -1) if not math.isnan(values[i])), None)
    if drifting and last is not None:
        ax.annotate(name, (_dates([times[last]])[0], values[last]), xytext=(-4, 6), textcoords="offset points",
                    fontsize=9, color=color, fontweight="bold", ha="right", va="bottom")


def _psi_guides(ax: Axes, top: float) -> None:
    for value, color, text in ((MODERATE, AMBER, "0.1: moderate shift"), (HIGH, RED, "0.2: act")):
        ax.axhline(value, color=color, ls=":", lw=1.4, label=text)
    ax.set_ylim(0, max(0.25, top * 1.1))
    ax.set_ylabel("PSI")
    ax.grid(axis="y", color="#eeeeee")


def _accuracy_figure(v: _Version, threshold: float | None) -> Figure:
    fig = _figure(3.8, f"{_name(v.version)} — accuracy over time (each snapshot: its labelled window)")
    left, right = fig.subplots(1, 2, width_ratios=[2, 1])
    times = [at for at, _ in v.accuracy]
    marker = "o" if len(times) <= 40 else ""
    for key, label, color in (("auc", "AUC", CURRENT_COLOR), ("precision", "precision", "#27ae60"),
                              ("recall", "recall", "#8e44ad")):
        left.plot(_dates(times), [_nan(_number(e.get(key))) for _, e in v.accuracy], marker=marker, markersize=3,
                  color=color, label=label)
    left.set_ylim(0, 1.02)
    left.set_title("AUC, precision and recall" + (f" (flagged: score ≥ {threshold:g})" if threshold is not None
                                                  else ""), fontsize=10)
    left.legend(fontsize=8, loc="best")
    right.plot(_dates(times), [_nan(_number(e.get("log_loss"))) for _, e in v.accuracy], marker=marker, markersize=3,
               color=RED)
    right.set_title("log loss (lower is better)", fontsize=10)
    low, high = right.get_ylim()  # a steady log loss stays inside the frame, not on its top edge
    right.set_ylim(max(0.0, low - 0.1 * (high or 1)), high * 1.1 if high > 0 else 1)
    for ax in (left, right):
        _time_axis(ax, times)
        ax.grid(axis="y", color="#eeeeee")
    return fig


def _calibration_figure(version: Version, scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> Figure:
    fig = _figure(4.4, f"{_name(version)} — the latest {len(scores):,} labelled predictions "
                  f"({int(labels.sum()):,} positive)")
    left, right = fig.subplots(1, 2)
    if np.all((scores >= 0) & (scores <= 1)):
        _calibration(left, scores, labels)
    else:
        left.set_axis_off()
        left.text(0.5, 0.5, NOT_PROBABILITIES, ha="center", va="center", color=GREY, transform=left.transAxes)
    _distribution(right, scores, labels, threshold)
    return fig


def _calibration(ax: Axes, scores: np.ndarray, labels: np.ndarray) -> None:
    mean, rate, count, equal_count = _calibration_points(scores, labels)
    top = max(float(mean.max()), float(rate.max()))
    top = 1.0 if top > 0.5 else max(top * 1.15, 1e-3)
    ax.plot([0, top], [0, top], "--", color=GREY, lw=1, label="calibrated")
    ax.plot(mean, rate, color=CURRENT_COLOR, lw=1)
    if equal_count:
        ax.scatter(mean, rate, s=40, color=CURRENT_COLOR, zorder=3, label="score bins")
        how = f"equal-count bins of {int(count.min()):,}+ events: the scores are concentrated"
    else:
        ax.scatter(mean, rate, s=15 + 185 * count / count.max(), color=CURRENT_COLOR, zorder=3,
                   label="score bins (size, number: events)")
        for m, r, n in zip(mean, rate, count, strict=True):
            ax.annotate(f"{int(n):,}", (m, r), xytext=(6, -10), textcoords="offset points", fontsize=7, color=GREY)
        how = "equal-width score bins"
    ax.set_xlim(0, top * 1.03)
    ax.set_ylim(0, top * 1.03)
    ax.set_xlabel("mean predicted score", fontsize=9)
    ax.set_ylabel("observed positive rate", fontsize=9)
    ax.set_title(f"Calibration ({how})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")


def _calibration_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Equal-width bins; equal-count bins (True) when the scores crowd into a few equal-width ones."""
    mean, rate, count = calibration(scores, labels, CALIBRATION_BINS)
    if len(mean) >= 4 or len(scores) < 2 * CALIBRATION_BINS:
        return mean, rate, count, False
    groups = np.array_split(np.argsort(scores, kind="stable"), CALIBRATION_BINS)
    return (np.array([scores[g].mean() for g in groups]), np.array([labels[g].mean() for g in groups]),
            np.array([len(g) for g in groups]), True)


def _distribution(ax: Axes, scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> None:
    edges = np.histogram_bin_edges(scores, bins=40)
    for mask, name, color in ((~labels, "negative", GREY), (labels, "positive", RED)):
        if mask.any():
            ax.hist(scores[mask], bins=edges.tolist(), density=True, histtype="stepfilled", alpha=0.45, color=color,
                    edgecolor=color, label=f"{name} ({int(mask.sum()):,})")
    if threshold is not None and edges[0] <= threshold <= edges[-1]:
        ax.axvline(threshold, color=INK, ls=":", lw=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("score", fontsize=9)
    ax.set_ylabel("density (each label normalised)", fontsize=9)
    ax.set_title("Score distribution by label", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")


def _time_axis(ax: Axes, times: Sequence[int]) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(tz=UTC, minticks=4, maxticks=10)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))  # type: ignore[no-untyped-call]
    ax.tick_params(labelsize=8)
    ax.set_xlabel("time (UTC)", fontsize=8)
    if times and times[-1] - times[0] < 60_000:  # one point, or a few together: a readable span around them
        middle = (times[0] + times[-1]) // 2
        ax.set_xlim(*_dates([middle - 300_000, middle + 300_000]))


def _text_figure(lines: Sequence[tuple[str, float, str, str]], height_in: float) -> Figure:
    """Lines of (text, font size, colour, weight) from the top, on a blank figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, facecolor="white")
    y = 0.18
    for text, size, color, weight in lines:
        fig.text(0.005, 1 - y / height_in, text, fontsize=size, color=color, fontweight=weight, va="top")
        y += size / 72 * 1.7
    return fig


def _header_figure(title: str, lines: Sequence[str], summaries: Sequence[VersionSummary]) -> Figure:
    from matplotlib.transforms import Bbox

    text = [(title, 20.0, INK, "bold"), *((line, 10.5, INK, "normal") for line in lines)]
    rows = _summary_rows(summaries)
    top = 0.18 + 20 / 72 * 1.7 + len(lines) * 10.5 / 72 * 1.7 + 0.15
    height = top + (0.3 * (len(rows) + 1) + 0.2 if rows else 0.1)
    fig = _text_figure(text, height)
    if rows:
        ax = fig.add_axes((0.005, 0.1 / height, 0.99, (height - top - 0.1) / height))
        ax.set_axis_off()
        texts = [[c[0] for c in row] for row in rows]
        chars = [max(len(t) for t in column) + 3 for column in zip(COLUMNS, *texts, strict=True)]
        table = ax.table(cellText=texts, colLabels=COLUMNS, colWidths=[c / sum(chars) for c in chars],
                         loc="upper left", cellLoc="left", bbox=Bbox.from_bounds(0, 0, 1, 1))
        table.auto_set_font_size(False)
        table.set_fontsize(10)
        for (r, c), cell in table.get_celld().items():
            cell.set_edgecolor("#dddddd")
            level = rows[r - 1][c][1] if r else "head"
            cell.set_facecolor({"head": "#f0f0f0", "moderate": "#fdebd0", "high": "#f5b7b1"}.get(level, "white"))
    return fig


# ----------------------------------------------------------------------------------- the outputs


def _png(title: str, lines: Sequence[str], summaries: Sequence[VersionSummary],
         sections: Sequence[tuple[str, list[_Block]]]) -> bytes:
    pngs = [_to_png(_header_figure(title, lines, summaries))]
    for name, blocks in sections:
        if name:
            pngs.append(_to_png(_text_figure([(name, 16.0, CURRENT_COLOR, "bold")], 0.55)))
        for block in blocks:
            pngs.append(block.png or _to_png(_text_figure(
                [(f"{name} — {block.heading}" if name else block.heading, 12.0, INK, "bold"),
                 (re.sub(r"`([^`]+)`", r"“\1”", block.message or ""), 11.0, AMBER, "normal")], 0.85)))
    return _stack(pngs)


def _stack(pngs: Sequence[bytes]) -> bytes:
    from PIL import Image

    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
    gap = 12
    canvas = Image.new("RGB", (max(i.width for i in images), sum(i.height + gap for i in images) - gap), "white")
    y = 0
    for image in images:
        canvas.paste(image, (0, y))
        y += image.height + gap
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; max-width: 1540px;
       margin: 24px auto; padding: 0 16px; }
h1 { margin: 0 0 6px; } h2 { border-bottom: 2px solid #2a6f97; color: #2a6f97; padding-bottom: 4px; margin-top: 40px; }
h3 { margin: 22px 0 2px; font-size: 1.05em; }
p.meta { color: #555; margin: 2px 0; }
p.note { color: #666; font-size: 13px; margin: 0 0 6px; }
p.empty { color: #7a5b12; background: #fcf8e3; border: 1px solid #f0e1b0; padding: 10px 14px; border-radius: 4px; }
table { border-collapse: collapse; margin: 10px 0; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: right; } th { background: #f3f3f3; }
td.text { text-align: left; } td.moderate { background: #fdebd0; } td.high { background: #f5b7b1; font-weight: 600; }
img { max-width: 100%; display: block; }
code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px; }
details { margin: 4px 0 10px; font-size: 14px; }
caption { text-align: left; color: #555; padding-bottom: 4px; }
"""


def _html(title: str, lines: Sequence[str], totals: dict[str, str], summaries: Sequence[VersionSummary],
          sections: Sequence[tuple[str, list[_Block]]]) -> str:
    e = html.escape
    head = [f"<h1>{e(title)}</h1>", *(f'<p class="meta">{_inline(line)}</p>' for line in lines),
            _table(list(totals), [[(value, "") for value in totals.values()]],
                   "Labels joined to predictions (join rate: matched / received)")]
    if summaries:
        head.append(_table(COLUMNS, _summary_rows(summaries), "Per version: the latest drift window and accuracy "
                           "snapshot in the range"))
    body = [f"<h2>{e(name)}</h2>" if name else "" for name, _ in sections]
    parts = [part for (name, blocks), h2 in zip(sections, body, strict=True)
             for part in (h2, *(_html_block(name, b) for b in blocks))]
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join([*head, *parts]) + "\n</body></html>\n")


def _html_block(name: str, block: _Block) -> str:
    heading = f"<h3>{html.escape(block.heading)}</h3>"
    if block.png is None:
        return f'{heading}\n<p class="empty">{_inline(block.message or "")}</p>'
    alt = html.escape(f"{name}: {block.heading}", quote=True)
    image = f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(block.png).decode()}">'
    parts = [heading, f'<p class="note">{_inline(block.note)}</p>', image]
    if block.psi is not None:
        ranked = sorted(block.psi.items(), key=lambda kv: -1.0 if kv[1] is None else kv[1], reverse=True)
        rows = [[(_label(n), "text"), (_three(p), _psi_level(p))] for n, p in ranked]
        parts.append(f"<details><summary>PSI per column</summary>{_table(('column', 'PSI'), rows)}</details>")
    return "\n".join(parts)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Cell]], caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td class="{k}">{html.escape(t)}</td>' if k else f"<td>{html.escape(t)}</td>"
                                    for t, k in row) + "</tr>" for row in rows)
    caption = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _inline(text: str) -> str:
    """Escaped, with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


# ------------------------------------------------------------------------------------ formatting


def _name(version: Version) -> str:
    return f"{version[0]} v{version[1]}"


def _label(column: str) -> str:
    return "score" if column == SCORE else column


def _three(value: float | None) -> str:
    """A PSI or a metric: three decimals, or a dash when unknown."""
    return f"{value:.3f}" if value is not None else "—"


def _psi_level(value: float | None) -> str:
    if value is None or value < MODERATE:
        return ""
    return "high" if value > HIGH else "moderate"


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _compact(value: float) -> str:
    """A bin edge in a few characters: 0.00163, 12.88, 5411, 123k, 4.5M."""
    size = abs(value)
    if size < 1:
        return f"{value:.3g}"
    if size < 1e5:
        return f"{value:.4g}"
    return f"{value / 1e3:.3g}k" if size < 1e6 else f"{value / 1e6:.3g}M"


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _dates(times: Sequence[int]) -> np.ndarray:
    """Epoch milliseconds as datetime64, which matplotlib draws as UTC."""
    return np.asarray(times, dtype="datetime64[ms]")


def _duration(ms: int) -> str:
    seconds = ms / 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"
