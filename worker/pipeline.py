"""The batch pipeline: decode → features → assemble → infer → encode, for one batch.

It knows nothing of Kafka: it takes ``Message``-shaped objects and returns encoded outputs
and dead letters. A bad event never fails its batch; an unreachable feature store does
(``FeatureStoreUnavailable``), so that the runner can retry the batch without losing it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from worker.assembly import Assembler
from worker.codecs import Decoder, Encoder
from worker.errors import EventError, InferenceError, ModelRunError
from worker.features import FeatureFetcher, Record
from worker.inference import Model
from worker.output import OutputBuilder, ScoredBatch
from worker.records import BatchResult, DeadLetter, Message, Output, StageTiming

logger = logging.getLogger(__name__)


class ModelSlot:
    """The model serving now. Read once per batch, so a swap lands on a batch boundary."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def swap(self, model: Model) -> Model:
        previous, self.model = self.model, model
        return previous


class Pipeline:
    def __init__(self, decoder: Decoder, fetcher: FeatureFetcher, assembler: Assembler, slot: ModelSlot,
                 builder: OutputBuilder, encoder: Encoder, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.decoder = decoder
        self.fetcher = fetcher
        self.assembler = assembler
        self.slot = slot
        self.builder = builder
        self.encoder = encoder
        self._model_outputs = builder.model_outputs()
        self._clock = clock

    def process(self, messages: Sequence[Message]) -> BatchResult:
        result = BatchResult()
        model = self.slot.model
        result.model_version, result.model_name = model.version, model.name
        stage = self._stage
        with stage(result, "decode"):
            events, sources = self._decode(messages, result)
        result.events = events
        if not events:
            return result
        with stage(result, "features"):
            lookups = self.fetcher.fetch(events)
        with stage(result, "assemble"):
            assembled = self.assembler.assemble(events, lookups)
        result.stats["feature_defaults"] = assembled.defaulted
        with stage(result, "inference"):
            outputs, failed = self._infer(model, assembled.feeds, len(events))
        bad = {**assembled.bad, **failed}
        scored = ScoredBatch(outputs, model.name, model.version, int(time.time() * 1000))
        with stage(result, "encode"):
            self._encode(events, sources, scored, bad, result)
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

    def _encode(self, events: list[Record], sources: list[Message], scored: ScoredBatch, bad: dict[int, EventError],
                result: BatchResult) -> None:
        encode, outputs = self.encoder, result.outputs
        records = self.builder.records(events, scored)
        keys = self.builder.keys(events, sources)
        for row, (record, key, source) in enumerate(zip(records, keys, sources, strict=True)):
            if row in bad:
                result.dead_letters.append(_dead(source, bad[row]))
                continue
            try:
                outputs.append(Output(key, encode(record, source), source))
            except EventError as exc:
                result.dead_letters.append(_dead(source, exc))

    @contextmanager
    def _stage(self, result: BatchResult, name: str) -> Iterator[None]:
        start = self._clock()
        try:
            yield
        finally:
            result.timings.append(StageTiming(name, start, self._clock()))


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
