"""``worker models evaluate`` from settings: a candidate version and the serving one scored on the
same labelled rows, their accuracy side by side, what changes between them, and gates on both.

One pass: the rows are read once, their features fetched from Redis once (the store ``worker run``
reads) and assembled once, and both models run on the same feeds, so every difference in the
figures comes from the models. Rows are read in chunks, so memory holds one chunk of records at a
time, plus three numbers a row (both scores and the label), which exact AUCs need.

A row that cannot be scored (it does not fit the input schema, it has no label, it cannot be
assembled, or either model fails on it) is counted and left out of both versions' figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from worker.app import lifecycle
from worker.app.components import ready_store
from worker.batch.files import Row, open_reader
from worker.codecs.schemas import Schema, parse_schema
from worker.config.compile import Compiled, compile_settings
from worker.config.settings import WorkerSettings
from worker.errors import ConfigError, ModelRunError, ToolError, UsageError
from worker.features.fetcher import FeatureFetcher
from worker.inference import Model
from worker.lifecycle.repository import ModelRepository
from worker.pipeline.assembly import Assembler
from worker.pipeline.output import ScoreSpec, select
from worker.quality.accuracy import Accuracy, accuracy, calibration

CHUNK_ROWS = 10_000
LABEL_TYPE = ["null", "boolean", "long", "double"]
"""The label field added to the input schema: absent or null is "no label", a number non-zero is positive."""
NEEDS_MATPLOTLIB = "--plot needs matplotlib: pip install 'inference-worker[report]'"
CURVE_POINTS = 2000  # a ROC curve of millions of rows is drawn from this many of its vertices
SKIPS = {"input": "unreadable or not in the input schema", "label": "without a label",
         "assemble": "not assembled", "model": "failed by a model"}

Report = Callable[[int, int, float | None], None]
"""Progress: rows read, rows skipped, the share of the input read (when known)."""


@dataclass(frozen=True)
class Gates:
    min_auc: float | None = None
    max_auc_drop: float | None = None
    max_label_flip: float | None = None


@dataclass(frozen=True)
class EvaluateJob:
    version: str
    input: Path
    label_field: str = "label"
    against: str | None = None
    """The serving version; default the configured ``model.version``."""
    gates: Gates = Gates()
    plot: Path | None = None
    chunk_rows: int = CHUNK_ROWS


@dataclass(frozen=True)
class Gate:
    option: str
    what: str
    value: float
    limit: float
    at_least: bool
    """``value >= limit`` passes (else ``value <= limit``); an undefined value fails."""

    @property
    def passed(self) -> bool:
        return not math.isnan(self.value) and (self.value >= self.limit if self.at_least else self.value <= self.limit)

    def describe(self) -> str:
        sign = (">=" if self.at_least else "<=") if self.passed else ("<" if self.at_least else ">")
        text = f"{'PASS' if self.passed else 'FAIL'}  {self.option} {self.limit:g}: {self.what} {_fmt(self.value)} " \
               f"{sign} {self.limit:g}"
        if not self.passed:
            text += " (undefined)" if math.isnan(self.value) else f", by {abs(self.value - self.limit):.4g}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"option": self.option, "what": self.what, "value": _num(self.value), "limit": self.limit,
                "passed": self.passed}


@dataclass(frozen=True)
class VersionFigures:
    role: str
    version: str
    accuracy: Accuracy
    flagged: int
    calibration: tuple[np.ndarray, np.ndarray, np.ndarray]
    """Per score bin with rows: mean score, observed positive rate, rows."""

    @property
    def calibration_error(self) -> float:
        """The rows-weighted mean gap between mean score and observed rate (ECE)."""
        mean, observed, rows = self.calibration
        return float(np.sum(rows * np.abs(mean - observed)) / rows.sum()) if rows.sum() else math.nan

    def to_json(self) -> dict[str, Any]:
        a = self.accuracy
        mean, observed, rows = self.calibration
        return {"version": self.version, "auc": _num(a.auc), "precision": _num(a.precision),
                "recall": _num(a.recall), "log_loss": _num(a.log_loss), "flagged": self.flagged,
                "calibration_error": _num(self.calibration_error),
                "calibration": {"mean_score": mean.tolist(), "observed_rate": observed.tolist(),
                                "rows": rows.astype(int).tolist()}}


@dataclass(frozen=True)
class Deltas:
    """Candidate against serving, on the same rows."""

    auc: float
    labels_changed: int
    newly_flagged: int
    no_longer_flagged: int
    label_flip_share: float
    score_abs_mean: float
    score_abs_p99: float
    score_abs_max: float

    def to_json(self) -> dict[str, Any]:
        return {k: _num(v) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass
class Skipped:
    """Rows left out, per reason (``SKIPS``), with the first example of each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, row: int, why: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.examples.setdefault(reason, f"row {row}: {why}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        return ", ".join(f"{n:,} {SKIPS[reason]}" for reason, n in self.counts.items())


@dataclass
class Evaluation:
    model: str
    input: Path
    label_field: str
    threshold: float
    rows: int
    skipped: Skipped
    candidate: VersionFigures
    serving: VersionFigures
    deltas: Deltas
    gates: list[Gate]
    scores: tuple[np.ndarray, np.ndarray, np.ndarray]
    """Candidate scores, serving scores, labels (for the plot)."""

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "input": str(self.input), "label_field": self.label_field,
                "threshold": self.threshold,
                "versions": {"candidate": self.candidate.version, "serving": self.serving.version},
                "rows": {"read": self.rows, "scored": self.rows - self.skipped.total, "skipped": self.skipped.total,
                         "skipped_by_reason": self.skipped.counts, "skipped_examples": self.skipped.examples},
                "metrics": {"candidate": self.candidate.to_json(), "serving": self.serving.to_json()},
                "deltas": self.deltas.to_json(), "gates": [g.to_json() for g in self.gates], "passed": self.passed}


def evaluate(settings: WorkerSettings, job: EvaluateJob, report: Report) -> Evaluation:
    """Scores ``job.input`` with both versions, in one pass; draws ``job.plot`` if asked."""
    if job.plot is not None:
        _require_matplotlib()  # before the pass, not after it
    compiled = compile_settings(settings)
    candidate, serving = _models(settings, compiled, job)
    reader = open_reader(job.input, labelled_schema(compiled.input_schema, job.label_field))
    store = ready_store(settings)
    try:
        scoring = _Pass(FeatureFetcher(store, compiled.entities), Assembler(compiled.tensors), candidate, serving,
                        compiled.builder.score, job.label_field)
        collected = scoring.run(reader.rows(), job.chunk_rows, lambda: report(scoring.read, scoring.skipped.total,
                                                                               reader.done()))
    finally:
        store.close()
    result = _evaluation(compiled, job, scoring, collected)
    if job.plot is not None:
        draw(result, job.plot)
    return result


def _models(settings: WorkerSettings, compiled: Compiled, job: EvaluateJob) -> tuple[Model, Model]:
    """Both versions, validated as a replica validates a version before serving it (signature,
    golden vectors, warm-up), so that the figures are those of a version that could serve."""
    if settings.model.repository is None:
        raise ConfigError.at("model.repository", "evaluate compares versions of a model repository: set "
                                                 "model.repository, model.name and model.version instead of model.path")
    repository, name = ModelRepository(settings.model.repository), compiled.model.name
    against = job.against or compiled.model.version
    for version in (job.version, against):
        if not repository.exists(name, version):
            raise ToolError(repository.missing(name, version))
    load = lifecycle.version_loader(settings, compiled)
    candidate = load(job.version).model
    return candidate, candidate if against == job.version else load(against).model


def labelled_schema(schema: Schema, label_field: str) -> Schema:
    """The input schema with the label as one more (optional) top-level field, so that the readers
    check the records and keep the label; as it is if the input schema already has that field."""
    if "." in label_field or not label_field:
        raise UsageError(f"--label-field {label_field!r}: name a top-level field of the labelled rows")
    if any(f["name"] == label_field for f in schema["fields"]):
        return schema
    plain = {k: v for k, v in schema.items() if not k.startswith("__")}  # fastavro's parse marks
    fields = [*plain["fields"], {"name": label_field, "type": LABEL_TYPE, "default": None}]
    return parse_schema({**plain, "fields": fields})


def label_of(value: Any) -> bool | str:
    """The label (a boolean, or a number: non-zero is positive), or why there is none."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return value != 0
    return "no label" if value is None else f"the label {value!r} is neither a boolean nor a number"


@dataclass
class _Collected:
    candidate: list[np.ndarray] = field(default_factory=list)
    serving: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(np.concatenate(part) if part else np.empty(0)  # type: ignore[return-value]
                     for part in (self.candidate, self.serving, self.labels))


@dataclass
class _Pass:
    """The scoring pass: chunk by chunk, features fetched and assembled once, both models run."""

    fetcher: FeatureFetcher
    assembler: Assembler
    candidate: Model
    serving: Model
    score: ScoreSpec
    label_field: str
    read: int = 0
    skipped: Skipped = field(default_factory=Skipped)

    def run(self, rows: Iterator[Row], chunk_rows: int, report: Callable[[], None]) -> _Collected:
        collected = _Collected()
        while chunk := list(islice(rows, chunk_rows)):
            self._chunk(chunk, collected)
            report()
        return collected

    def _chunk(self, chunk: list[Row], collected: _Collected) -> None:
        records, labels, numbers = self._usable(chunk)
        if not records:
            return
        assembled = self.assembler.assemble(records, self.fetcher.fetch(records))
        for i, exc in assembled.bad.items():
            self.skipped.add("assemble", numbers[i], exc.reason)
        rows = np.array([i for i in range(len(records)) if i not in assembled.bad], dtype=np.intp)
        candidate, failed = self._scores(self.candidate, assembled.feeds, rows, numbers)
        serving, failed_too = self._scores(self.serving, assembled.feeds, rows, numbers)
        ok = ~(failed | failed_too)  # both versions' figures come from the same rows
        collected.candidate.append(candidate[ok])
        collected.serving.append(serving[ok])
        collected.labels.append(np.asarray(labels, dtype=bool)[rows][ok])

    def _usable(self, chunk: list[Row]) -> tuple[list[dict[str, Any]], list[bool], list[int]]:
        """The chunk's records that have a label, their labels, and their row numbers (from 1)."""
        records, labels, numbers = [], [], []
        for number, row in enumerate(chunk, self.read + 1):
            if row.record is None:
                self.skipped.add("input", number, row.problem or "unreadable")
                continue
            label = label_of(row.record.get(self.label_field))
            if isinstance(label, str):
                self.skipped.add("label", number, label)
                continue
            records.append(row.record)
            labels.append(label)
            numbers.append(number)
        self.read += len(chunk)
        return records, labels, numbers

    def _scores(self, model: Model, feeds: dict[str, np.ndarray], rows: np.ndarray,
                numbers: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The scores of ``rows`` (in their order) and which of them the model fails on."""
        failed: dict[int, str] = {}
        scores = np.full(len(rows), np.nan)
        for where, values in _run_isolating(model, feeds, self.score, np.arange(len(rows)), rows, failed):
            scores[where] = values
        for i, why in failed.items():
            self.skipped.add("model", numbers[int(rows[i])], f"v{model.version} fails on it: {why}")
        mask = np.zeros(len(rows), dtype=bool)
        mask[list(failed)] = True
        return scores, mask


def _run_isolating(model: Model, feeds: dict[str, np.ndarray], score: ScoreSpec, where: np.ndarray,
                   rows: np.ndarray, failed: dict[int, str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Runs the feeds' ``rows[where]``; when the model fails, by halves until each row it fails on
    is alone in ``failed`` (as the pipeline does), so one odd row does not sink a chunk."""
    if not len(where):
        return []
    try:
        output = model.run({k: v[rows[where]] for k, v in feeds.items()}, [score.output])[0]
        return [(where, select(output, score.column).astype(np.float64))]
    except ModelRunError as exc:
        if len(where) == 1:
            failed[int(where[0])] = str(exc)
            return []
    half = len(where) // 2
    return (_run_isolating(model, feeds, score, where[:half], rows, failed)
            + _run_isolating(model, feeds, score, where[half:], rows, failed))


def _evaluation(compiled: Compiled, job: EvaluateJob, scoring: _Pass, collected: _Collected) -> Evaluation:
    candidate, serving, labels = collected.arrays()
    if not len(labels):
        why = scoring.skipped.describe() or "the input is empty"
        examples = "; ".join(scoring.skipped.examples.values())
        raise ToolError(f"{job.input}: no row could be scored ({why})" + (f"; e.g. {examples}" if examples else ""))
    threshold = compiled.builder.score.threshold  # the configuration's: labels use it whatever version scores
    c = figures("candidate", scoring.candidate.version, candidate, labels, threshold)
    s = figures("serving", scoring.serving.version, serving, labels, threshold)
    deltas = compare(c, s, candidate, serving, threshold)
    return Evaluation(compiled.model.name, job.input, job.label_field, threshold, scoring.read, scoring.skipped,
                      c, s, deltas, gates(job.gates, c, s, deltas), (candidate, serving, labels))


def figures(role: str, version: str, scores: np.ndarray, labels: np.ndarray, threshold: float) -> VersionFigures:
    # calibration bins scores in [0, 1]; a model scoring outside it would index past the bins
    curve = calibration(np.clip(scores, 0.0, 1.0), labels)
    return VersionFigures(role, version, accuracy(scores, labels, threshold),
                          int(np.count_nonzero(scores >= threshold)), curve)


def compare(c: VersionFigures, s: VersionFigures, candidate: np.ndarray, serving: np.ndarray,
            threshold: float) -> Deltas:
    flagged, was = candidate >= threshold, serving >= threshold
    changed = flagged != was
    diff = np.abs(candidate - serving)
    return Deltas(c.accuracy.auc - s.accuracy.auc, int(changed.sum()), int((flagged & ~was).sum()),
                  int((was & ~flagged).sum()), float(changed.mean()), float(diff.mean()),
                  float(np.percentile(diff, 99)), float(diff.max()))


def gates(limits: Gates, c: VersionFigures, s: VersionFigures, deltas: Deltas) -> list[Gate]:
    out = []
    if limits.min_auc is not None:
        out.append(Gate("--min-auc", f"v{c.version}'s AUC", c.accuracy.auc, limits.min_auc, True))
    if limits.max_auc_drop is not None:
        out.append(Gate("--max-auc-drop", f"AUC drop (v{s.version}'s - v{c.version}'s)",
                        s.accuracy.auc - c.accuracy.auc, limits.max_auc_drop, False))
    if limits.max_label_flip is not None:
        out.append(Gate("--max-label-flip", "share of labels changed", deltas.label_flip_share,
                        limits.max_label_flip, False))
    return out


# ------------------------------------------------------------------------------------ the table


def table(e: Evaluation) -> str:
    """The evaluation as text: both versions side by side, what changes, the gates."""
    c, s, d = e.candidate, e.serving, e.deltas
    lines = [f"{e.model} v{c.version} (candidate) against v{s.version} (serving) on {e.input}, "
             f"label field '{e.label_field}'", _rows_line(e)]
    lines += [f"  e.g. {example}" for example in e.skipped.examples.values()]
    heads = (f"v{c.version} (candidate)", f"v{s.version} (serving)", f"v{c.version} - v{s.version}")
    lines += ["", f"  {'':<26}{heads[0]:>18}{heads[1]:>18}{heads[2]:>14}"]
    lines += [f"  {name:<26}{_fmt(a):>18}{_fmt(b):>18}{_fmt(diff, signed=True):>14}"
              for name, a, b, diff in _metric_rows(e)]
    flagged = f"flagged (score >= {e.threshold:g})"
    lines.append(f"  {flagged:<26}{c.flagged:>18,}{s.flagged:>18,}{c.flagged - s.flagged:>+14,}")
    positives = c.accuracy.positives
    lines += [f"  {'positives (labels)':<26}{positives:>18,}{positives:>18,}{'':>14}", "",
              f"labels changed: {d.labels_changed:,} of {c.accuracy.events:,} rows ({d.label_flip_share:.3%}): "
              f"{d.newly_flagged:,} newly flagged, {d.no_longer_flagged:,} no longer flagged",
              f"score change |v{c.version} - v{s.version}|: mean {d.score_abs_mean:.4g}, p99 {d.score_abs_p99:.4g}, "
              f"max {d.score_abs_max:.4g}"]
    if e.gates:
        failed = sum(not g.passed for g in e.gates)
        verdict = f"{failed} of {len(e.gates)} failed" if failed else "all passed"
        lines += ["", f"gates: {verdict}", *(f"  {g.describe()}" for g in e.gates)]
    return "\n".join(lines)


def _rows_line(e: Evaluation) -> str:
    scored = e.rows - e.skipped.total
    skipped = f"{e.skipped.total:,} skipped ({e.skipped.describe()})" if e.skipped.total else "none skipped"
    return f"rows: {e.rows:,} read, {scored:,} scored, {skipped}"


def _metric_rows(e: Evaluation) -> list[tuple[str, float, float, float]]:
    c, s = e.candidate, e.serving
    pairs = [("AUC", c.accuracy.auc, s.accuracy.auc),
             (f"precision @ {e.threshold:g}", c.accuracy.precision, s.accuracy.precision),
             (f"recall @ {e.threshold:g}", c.accuracy.recall, s.accuracy.recall),
             ("log loss", c.accuracy.log_loss, s.accuracy.log_loss),
             ("calibration error (ECE)", c.calibration_error, s.calibration_error)]
    return [(name, a, b, a - b) for name, a, b in pairs]


def _fmt(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _num(value: float) -> float | None:
    """JSON has no NaN: an undefined figure (one class only, nothing flagged) is null."""
    return None if math.isnan(value) else value


# ------------------------------------------------------------------------------------ the plot


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score as the threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="stable")
    ordered, positive = scores[order], labels[order].astype(bool)
    ends = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]  # the last row of each tied score
    tps = np.cumsum(positive)[ends]
    fps = ends + 1 - tps
    tpr = np.r_[0, tps] / max(int(tps[-1]), 1)
    fpr = np.r_[0, fps] / max(int(fps[-1]), 1)
    return fpr, tpr


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ToolError(NEEDS_MATPLOTLIB) from exc


def draw(e: Evaluation, path: Path) -> None:
    """ROC curves of both versions beside their calibration curves, as a PNG."""
    _require_matplotlib()
    from matplotlib.figure import Figure  # drawn on Agg, with no pyplot state

    fig = Figure(figsize=(11, 4.8), layout="constrained", facecolor="white")
    fig.suptitle(f"{e.model}: v{e.candidate.version} (candidate) and v{e.serving.version} (serving), "
                 f"{e.candidate.accuracy.events:,} labelled rows of {e.input.name}", fontsize=11)
    roc, cal = fig.subplots(1, 2)
    candidate, serving, labels = e.scores
    for figs, scores, style in ((e.serving, serving, "-"), (e.candidate, candidate, "--")):
        fpr, tpr = _thinned(*roc_curve(scores, labels))
        roc.plot(fpr, tpr, style, label=f"v{figs.version} ({figs.role}), AUC {_fmt(figs.accuracy.auc)}")
        mean, observed, _ = figs.calibration
        cal.plot(mean, observed, style, marker="o", label=f"v{figs.version} ({figs.role}), "
                                                          f"ECE {_fmt(figs.calibration_error)}")
    for ax, title, x, y in ((roc, "ROC", "false positive rate", "true positive rate"),
                            (cal, "calibration (10 equal-width score bins)", "mean score", "observed positive rate")):
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
        ax.set(title=title, xlabel=x, ylabel=y, xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="lower right")
    try:
        fig.savefig(path, format="png", dpi=110, facecolor="white")
    except OSError as exc:
        raise ToolError(f"--plot {path}: {exc}") from exc


def _thinned(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= CURVE_POINTS:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, CURVE_POINTS).astype(np.intp))
    return x[keep], y[keep]
