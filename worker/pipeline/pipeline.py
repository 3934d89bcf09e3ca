"""The batch pipeline: decode → features → assemble → infer → encode, for one batch.

The inference step routes: the active model scores the batch, or, with a canary, the canary
scores the events whose key falls in its share and the active model the rest; a shadow model
also scores every event, for the shadow topic only (see ``worker.serving``).

It knows nothing of Kafka: it takes ``Message``-shaped objects and returns encoded outputs
and dead letters. A bad event never fails its batch; an unreachable feature store does
(``FeatureStoreUnavailable``), so that the runner can retry the batch without losing it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from typing import Any

import numpy as np

from worker.codecs.avro import ColumnEncoder, Decoder, Encoder
from worker.errors import EventError, InferenceError, ModelRunError
from worker.explain.explainer import Explainer
from worker.features.fetcher import EntityLookup, FeatureFetcher
from worker.inference import Model
from worker.pipeline.assembly import Assembler
from worker.pipeline.deadline import LATE_HEADER, Deadline
from worker.pipeline.output import NO_CONTRIBUTIONS, NO_REASONS, OutputBuilder, ScoredBatch, as_rows, select
from worker.records import (
    BatchResult,
    DeadLetter,
    Message,
    ModelRun,
    Output,
    Record,
    ScoredRows,
    ShadowComparison,
    StageTiming,
)
from worker.serving import ModelSlot, Serving, canary_mask

logger = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, decoder: Decoder, fetcher: FeatureFetcher, assembler: Assembler, slot: ModelSlot,
                 builder: OutputBuilder, encoder: Encoder, clock: Callable[[], int] = time.perf_counter_ns,
                 explainer: Explainer | None = None, deadline: Deadline | None = None) -> None:
        self.explainer = explainer
        self.deadline = deadline
        self.decoder = decoder
        self.fetcher = fetcher
        self.assembler = assembler
        self.slot = slot
        self.builder = builder
        self.encoder = encoder
        self._encode_columns = encoder.encode_columns if isinstance(encoder, ColumnEncoder) else None
        self._model_outputs = builder.model_outputs()
        self._clock = clock

    def process(self, messages: Sequence[Message], degraded: bool = False) -> BatchResult:
        """``degraded``: the feature store is down; score with every feature at its default."""
        result = BatchResult()
        with self._stage(result, "decode"):
            events, sources = self._decode(messages, result)
        late: AbstractSet[int] = frozenset()
        if self.deadline is not None and events:
            events, sources, late = self._expire(self.deadline, events, sources, result)
        return self._scored(events, sources, result, degraded, late)

    def process_records(self, records: list[Record], sources: Sequence[Message]) -> BatchResult:
        """Events already decoded (batch scoring reads files of records); ``sources[i]`` stands for
        ``records[i]`` in outputs and dead letters."""
        return self._scored(records, list(sources), BatchResult(), False)

    def _expire(self, deadline: Deadline, events: list[Record], sources: list[Message],
                result: BatchResult) -> tuple[list[Record], list[Message], AbstractSet[int]]:
        """The events to score, and which of them are late; the expired others are dead-lettered
        or skipped."""
        expired = deadline.expired(events, sources)
        if not expired.rows:
            return events, sources, frozenset()
        result.expired[deadline.on_expired] = len(expired.rows)
        if deadline.on_expired == "score-late":
            return events, sources, frozenset(expired.rows)
        if deadline.on_expired == "dead-letter":
            result.dead_letters += [DeadLetter(sources[row], "deadline", deadline.reason(age), "EventExpired")
                                    for row, age in zip(expired.rows, expired.ages, strict=True)]
        gone = set(expired.rows)
        keep = [i for i in range(len(events)) if i not in gone]
        return [events[i] for i in keep], [sources[i] for i in keep], frozenset()

    def _scored(self, events: list[Record], sources: list[Message], result: BatchResult,
                degraded: bool, late: AbstractSet[int] = frozenset()) -> BatchResult:
        serving = self.slot.serving  # one snapshot: every event of this batch is scored by these models
        result.model_version, result.model_name = serving.active.version, serving.active.name
        stage = self._stage
        result.events = events
        if not events:
            return result
        with stage(result, "features"):
            lookups = self.fetcher.absent(events) if degraded else self.fetcher.fetch(events)
        _note_freshness(lookups, result)
        with stage(result, "assemble"):
            assembled = self.assembler.assemble(events, lookups)
            keys = self.builder.keys(events, sources)
        result.feature_defaults, result.nulls = assembled.defaulted, assembled.nulls
        with stage(result, "inference"):
            scored, failed = self._score(serving, assembled.feeds, keys, result)
        bad = {**assembled.bad, **failed}
        result.scored = self._scored_rows(serving, assembled.feeds, scored, bad)
        if self.explainer is not None:
            with stage(result, "explain"):
                self._explain(self.explainer, serving, result.scored, scored, result)
        scored.degraded = degraded
        if late:
            scored.late = [row in late for row in range(len(events))]
        with stage(result, "encode"):
            self._encode(events, keys, sources, scored, bad, result.outputs, result.dead_letters, late)
        if serving.shadow is not None:
            with stage(result, "shadow"):
                self._shadow(serving.shadow, assembled.feeds, (events, keys, sources), scored, bad, result)
        return result

    def _decode(self, messages: Sequence[Message], result: BatchResult) -> tuple[list[Record], list[Message]]:
        decode = self.decoder
        events: list[Record] = []
        sources: list[Message] = []
        for message in messages:
            try:
                events.append(decode(message.value(), message))
            except EventError as exc:
                result.dead_letters.append(_dead(message, exc))
            else:
                sources.append(message)
        return events, sources

    def _scored_rows(self, serving: Serving, feeds: dict[str, np.ndarray], scored: ScoredBatch,
                     bad: dict[int, EventError]) -> ScoredRows:
        score = self.builder.score
        scores = select(scored.outputs[score.output], score.column)
        published = np.ones(len(scores), dtype=bool)
        published[list(bad)] = False
        canary, active = serving.canary, serving.active
        if scored.row_versions is None or canary is None or canary.version == active.version:
            return ScoredRows(feeds, scores, published)
        to_canary = np.asarray(scored.row_versions, dtype=object) == canary.version
        groups = {(active.name, active.version): np.flatnonzero(~to_canary),
                  (canary.name, canary.version): np.flatnonzero(to_canary)}
        return ScoredRows(feeds, scores, published, groups)

    def _explain(self, explainer: Explainer, serving: Serving, rows: ScoredRows, scored: ScoredBatch,
                 result: BatchResult) -> None:
        """Reasons for the rows ``explain.when`` picks, by the model that scored each; a failure here
        leaves those rows unexplained, never unpublished."""
        scores = np.asarray(rows.scores, dtype=np.float64)
        chosen = explainer.rows(scores, np.asarray(rows.published))
        if not len(chosen):
            return
        reasons: list[Sequence[str]] = [NO_REASONS] * len(scores)
        contributions: list[Mapping[str, float]] = [NO_CONTRIBUTIONS] * len(scores)
        for model, group in _by_model(serving, rows.groups, chosen):
            try:  # describing is inside: a method returning the wrong number of rows fails here too
                found = explainer.contributions(model, _take(rows.feeds, group), scores[group])
                described = list(zip(group.tolist(), explainer.describe(found), strict=True))
            except Exception as exc:  # any failure of any method: the prediction goes out without reasons
                result.explain_failures += len(group)
                _explain_failed(model, exc)
                continue
            for row, (why, parts) in described:
                reasons[row], contributions[row] = why, parts
            result.explained += len(group)
        scored.reasons, scored.contributions = reasons, contributions

    def _score(self, serving: Serving, feeds: dict[str, np.ndarray], keys: list[bytes | None],
               result: BatchResult) -> tuple[ScoredBatch, dict[int, EventError]]:
        active, n = serving.active, len(keys)
        if serving.canary is None:
            outputs, failed = self._run("active", active, feeds, n, result)
            return ScoredBatch(outputs, active.name, active.version, int(time.time() * 1000)), failed
        return self._score_split(active, serving.canary, feeds, canary_mask(keys, serving.canary_share), result)

    def _score_split(self, active: Model, canary: Model, feeds: dict[str, np.ndarray], to_canary: np.ndarray,
                     result: BatchResult) -> tuple[ScoredBatch, dict[int, EventError]]:
        """The canary scores its rows, the active model the rest, and also the rows the canary
        fails on (counted as canary errors, never dead-lettered for the candidate's sake)."""
        versions = np.where(to_canary, canary.version, active.version).astype(object)
        groups: list[tuple[np.ndarray, dict[str, Any]]] = []
        failed = self._run_rows("active", active, feeds, np.flatnonzero(~to_canary), groups, result)
        canary_failed = self._run_rows("canary", canary, feeds, np.flatnonzero(to_canary), groups, result)
        if canary_failed:
            retry = np.array(sorted(canary_failed), dtype=np.intp)
            versions[retry] = active.version
            failed.update(self._run_rows("active", active, feeds, retry, groups, result))
        merged = {name: _scatter([(rows, outputs[name]) for rows, outputs in groups], len(to_canary))
                  for name in self._model_outputs}
        return ScoredBatch(merged, active.name, active.version, int(time.time() * 1000), versions.tolist()), failed

    def _run_rows(self, role: str, model: Model, feeds: dict[str, np.ndarray], rows: np.ndarray,
                  groups: list[tuple[np.ndarray, dict[str, Any]]], result: BatchResult) -> dict[int, EventError]:
        """Runs ``model`` on the batch's ``rows``, adding its outputs to ``groups``; the failed rows
        (numbered in the batch) and why."""
        if not len(rows):
            return {}
        outputs, errors = self._run(role, model, _take(feeds, rows), len(rows), result)
        groups.append((rows, outputs))
        return {int(rows[i]): e for i, e in errors.items()}

    def _run(self, role: str, model: Model, feeds: dict[str, np.ndarray], n: int,
             result: BatchResult) -> tuple[dict[str, Any], dict[int, EventError]]:
        start = self._clock()
        outputs, failed = self._infer(model, feeds, n)
        result.runs.append(ModelRun(role, model.name, model.version, n, len(failed), (self._clock() - start) / 1e9))
        return outputs, failed

    def _infer(self, model: Model, feeds: dict[str, np.ndarray],
               n: int) -> tuple[dict[str, Any], dict[int, EventError]]:
        names = self._model_outputs
        try:
            return dict(zip(names, model.run(feeds, names), strict=True)), {}
        except ModelRunError as exc:
            logger.warning("model failed on a batch of %d; isolating the events that cause it: %s", n, exc,
                           extra={"model": model.name, "model_version": model.version})
        failed: dict[int, EventError] = {}
        parts = _run_isolating(model, feeds, names, np.arange(n), failed)
        merged = {name: _scatter([(rows, values[j]) for rows, values in parts], n) for j, name in enumerate(names)}
        return merged, failed

    def _shadow(self, model: Model, feeds: dict[str, np.ndarray],
                batch: tuple[list[Record], list[bytes | None], list[Message]], scored: ScoredBatch,
                bad: dict[int, EventError], result: BatchResult) -> None:
        """The shadow scores every event; its predictions (for the events that were published)
        go to ``result.shadow_outputs`` and its scores are compared with the published ones."""
        events, keys, sources = batch
        outputs, failed = self._run("shadow", model, feeds, len(events), result)
        shadow = ScoredBatch(outputs, model.name, model.version, int(time.time() * 1000))
        skipped = {**bad, **failed}
        self._encode(events, keys, sources, shadow, skipped, result.shadow_outputs, None)
        keep = np.ones(len(events), dtype=bool)
        keep[list(skipped)] = False
        score = self.builder.score
        published = select(scored.outputs[score.output], score.column)[keep].astype(np.float64)
        candidate = select(outputs[score.output], score.column)[keep].astype(np.float64)
        diff = np.abs(candidate - published)
        agree = int(np.count_nonzero((published >= score.threshold) == (candidate >= score.threshold)))
        result.shadow = ShadowComparison(model.name, model.version, len(diff), agree, float(diff.sum()),
                                         float(diff.max()) if len(diff) else 0.0)

    def _encode(self, events: list[Record], keys: list[bytes | None], sources: list[Message], scored: ScoredBatch,
                skip: dict[int, EventError], outputs: list[Output], dead_letters: list[DeadLetter] | None,
                late: AbstractSet[int] = frozenset()) -> None:
        """Encodes every row not in ``skip``; skipped rows and rows that fail to encode become dead
        letters when ``dead_letters`` is given (the shadow's are dropped: its events were published)."""
        columns = self.builder.columns(events, scored)
        values = self._encode_columns(columns) if self._encode_columns is not None else None
        if values is not None and not skip and not late:  # the usual batch: every row out, unmarked
            outputs.extend(map(Output, keys, values, sources))
            return
        records = as_rows(columns) if values is None else []

        def value_of(row: int, source: Message) -> bytes:
            """The batch's encoding of the row, or (row by row) the row encoded on its own, which raises
            an ``EncodeError`` naming what failed."""
            return values[row] if values is not None else self.encoder(records[row], source)

        for row, (key, source) in enumerate(zip(keys, sources, strict=True)):
            if row in skip:
                if dead_letters is not None:
                    dead_letters.append(_dead(source, skip[row]))
                continue
            try:
                outputs.append(Output(key, value_of(row, source), source, LATE_HEADER if row in late else None))
            except EventError as exc:
                if dead_letters is not None:
                    dead_letters.append(_dead(source, exc))

    @contextmanager
    def _stage(self, result: BatchResult, name: str) -> Iterator[None]:
        start = self._clock()
        try:
            yield
        finally:
            result.timings.append(StageTiming(name, start, self._clock()))


def _by_model(serving: Serving, groups: dict[tuple[str, str], Any] | None,
              chosen: np.ndarray) -> list[tuple[Model, np.ndarray]]:
    """The chosen rows of each model that scored some (the active model's and a canary's apart)."""
    if groups is None:
        return [(serving.active, chosen)]
    models = {(m.name, m.version): m for m in (serving.active, serving.canary) if m is not None}
    out = []
    for key, rows in groups.items():
        mine = np.intersect1d(chosen, rows)
        if len(mine):
            out.append((models[key], mine))
    return out


_last_explain_warning = [0.0]


def _explain_failed(model: Model, exc: Exception) -> None:
    """Logged at most once a minute: a broken explainer fails every batch the same way."""
    now = time.monotonic()
    if now - _last_explain_warning[0] >= 60:
        _last_explain_warning[0] = now
        logger.warning("explaining failed; predictions go out without reasons: %s: %s", type(exc).__name__, exc,
                       extra={"model": model.name, "model_version": model.version})


def _take(feeds: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: values[rows] for name, values in feeds.items()}


def _dead(message: Message, exc: EventError) -> DeadLetter:
    return DeadLetter(message, exc.stage, exc.reason, type(exc.__cause__ or exc).__name__)


def _run_isolating(model: Model, feeds: dict[str, np.ndarray], names: list[str], rows: np.ndarray,
                   failed: dict[int, EventError]) -> list[tuple[np.ndarray, list[Any]]]:
    """Run ``rows`` by halves until every event that makes the model fail is alone in ``failed``;
    returns the results of the parts that ran, each with its rows."""
    try:
        return [(rows, model.run({k: v[rows] for k, v in feeds.items()}, names))]
    except ModelRunError as exc:
        if len(rows) == 1:
            failed[int(rows[0])] = InferenceError(f"the model fails on this event: {exc}")
            return []
    half = len(rows) // 2
    return (_run_isolating(model, feeds, names, rows[:half], failed)
            + _run_isolating(model, feeds, names, rows[half:], failed))


def _scatter(parts: list[tuple[np.ndarray, Any]], n: int) -> Any:
    """One output for all n rows from the parts that ran; rows that failed hold zeros (they are
    dead-lettered, never published)."""
    if parts and isinstance(parts[0][1], list):  # ZipMap outputs are lists of dicts
        rows_out: list[Any] = [{}] * n
        for rows, values in parts:
            for r, v in zip(rows.tolist(), values, strict=True):
                rows_out[r] = v
        return rows_out
    if not parts:
        return np.zeros(n)
    first = np.asarray(parts[0][1])
    array = np.zeros((n, *first.shape[1:]), dtype=first.dtype)
    for rows, values in parts:
        array[rows] = values
    return array


def _note_freshness(lookups: Mapping[str, EntityLookup], result: BatchResult) -> None:
    for name, lookup in lookups.items():
        if lookup.ages is not None:
            stale, result.feature_ages[name] = lookup.freshness()
            if lookup.spec.max_age_s is not None:
                result.feature_stale[name] = stale
