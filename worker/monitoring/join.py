"""``worker monitor``'s unit of work: a batch of predictions and labels in, joins out.

The monitor runs on the worker's own loop (``worker.runner``): it consumes the prediction topic
and the labels topic in its own consumer group, and ``JoinProcessor`` plays the pipeline's
part. Each record is decoded, reduced to what the join needs, and handed to the store
(``worker.monitoring.store``) in one round trip; joins go to the joined topic as JSON when one
is configured. A record that cannot be decoded, or lacks its id, is dead-lettered like a bad
event; Redis being down holds the batch (``FeatureStoreUnavailable``) until it answers.

``MonitorTicker`` does the periodic work on the loop's thread: counts labels that never found
their prediction (``sweep``) and adds accuracy snapshots to the history.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from worker.codecs.avro import Decoder
from worker.errors import EventError, FeatureStoreUnavailable
from worker.monitoring.store import Joined, Label, MonitorStore, Prediction, redis_errors
from worker.quality.accuracy import Accuracy, accuracy
from worker.records import BatchResult, DeadLetter, Delivery, Message, Output, Record, path_getter
from worker.runner.observer import Observer

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 5.0


class JoinError(EventError):
    stage = "join"


@dataclass(frozen=True)
class PredictionFields:
    """Where the join finds its parts in a prediction; None: the configured model's name or version,
    or the time it was read for ``scored_at``."""

    event_id: str
    score: str
    model_name: str | None = None
    model_version: str | None = None
    scored_at: str | None = None


@dataclass(frozen=True)
class LabelFields:
    event_id: str
    label: str
    labelled_at: str | None = None


class RecordReader:
    """Decodes a record and takes out the fields the join needs."""

    def __init__(self, decoder: Decoder, fields: dict[str, str | None]) -> None:
        self.decoder = decoder
        self.getters = {name: path_getter(path) if path else None for name, path in fields.items()}

    def read(self, message: Message) -> dict[str, Any]:
        record: Record = self.decoder(message.value(), message)
        try:
            return {name: get(record) if get else None for name, get in self.getters.items()}
        except (KeyError, TypeError) as exc:
            raise JoinError(f"the record lacks a field the join reads: {exc}", message) from exc


class JoinProcessor:
    def __init__(self, store: MonitorStore, label_topic: str, predictions: RecordReader, labels: RecordReader,
                 model: tuple[str, str], publish_joined: bool, clock_ms: Callable[[], int] | None = None) -> None:
        self.store = store
        self.label_topic = label_topic
        self.predictions = predictions
        self.labels = labels
        self.model = model
        self.publish_joined = publish_joined
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))

    def process(self, messages: Sequence[Message], degraded: bool = False) -> BatchResult:
        result = BatchResult()
        now = self._clock_ms()
        predictions: list[tuple[Prediction, Message]] = []
        labels: list[tuple[Label, Message]] = []
        for message in messages:
            try:
                if message.topic() == self.label_topic:
                    labels.append((self._label(message, now), message))
                else:
                    predictions.append((self._prediction(message, now), message))
            except EventError as exc:
                result.dead_letters.append(_dead(message, exc))
        if predictions or labels:
            joined = self._add(predictions, labels)
            sources = [m for _, m in predictions] + [m for _, m in labels]
            if self.publish_joined:
                result.outputs = [Output(j.event_id.encode(), json.dumps(j.to_json()).encode(), source)
                                  for j, source in zip(joined, sources, strict=True) if j is not None]
        return result

    def _add(self, predictions: list[tuple[Prediction, Message]],
             labels: list[tuple[Label, Message]]) -> list[Joined | None]:
        try:
            return self.store.add([p for p, _ in predictions], [label for label, _ in labels])
        except redis_errors() as exc:
            raise FeatureStoreUnavailable(f"the monitor's Redis: {exc}") from exc

    def _prediction(self, message: Message, now: int) -> Prediction:
        f = self.predictions.read(message)
        score = f["score"]
        if not isinstance(score, int | float) or not math.isfinite(score):
            raise JoinError(f"the prediction's score is {score!r}, not a number", message)
        scored_at = _millis(f["scored_at"], message, now)
        return Prediction(_id(f, message), str(f["model_name"] or self.model[0]),
                          str(f["model_version"] or self.model[1]), float(score), scored_at)

    def _label(self, message: Message, now: int) -> Label:
        f = self.labels.read(message)
        truth = f["label"]
        if not isinstance(truth, bool | int | float):
            raise JoinError(f"the label is {truth!r}, not a boolean or a number", message)
        return Label(_id(f, message), bool(truth), _millis(f["labelled_at"], message, now))


def _dead(message: Message, exc: EventError) -> DeadLetter:
    return DeadLetter(message, exc.stage, exc.reason, type(exc.__cause__ or exc).__name__)


def _id(fields: dict[str, Any], message: Message) -> str:
    event_id = fields["event_id"]
    if event_id is None or event_id == "":
        raise JoinError("the record has no event id to join on", message)
    return str(event_id)


def _millis(value: Any, message: Message, now: int) -> int:
    """A record's time: its own field, else the message's timestamp (when it was produced: reading a
    backlog later must not make labels late), else now."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    kind, stamp = message.timestamp()
    return stamp if kind and stamp > 0 else now


class MonitorTicker(Observer):
    """Periodic work between batches: the unmatched-label sweep and the accuracy history."""

    def __init__(self, store: MonitorStore, threshold: float, snapshot_interval_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.threshold = threshold
        self.snapshot_interval_s = snapshot_interval_s
        self._clock = clock
        self._next_sweep = 0.0
        self._next_snapshot = 0.0

    def batch_done(self, batch: Sequence[Message], result: BatchResult, delivery: Delivery) -> None:
        self.tick()

    def idle(self) -> None:
        self.tick()

    def tick(self) -> None:
        now = self._clock()
        try:
            if now >= self._next_sweep:
                self._next_sweep = now + SWEEP_INTERVAL_S
                unmatched = self.store.sweep()
                if unmatched:
                    logger.info("%d labels found no prediction in time: counted unmatched", unmatched)
            if now >= self._next_snapshot:
                self._next_snapshot = now + self.snapshot_interval_s
                if self.store.claim("accuracy", int(self.snapshot_interval_s * 1000)):
                    self.store.append("accuracy", accuracy_snapshot(self.store, self.threshold))
        except redis_errors() as exc:
            logger.warning("monitor housekeeping skipped, Redis failed: %s", exc)


def version_accuracy(store: MonitorStore, threshold: float) -> list[tuple[str, str, Accuracy]]:
    """Accuracy of every version over its window of joined predictions."""
    out = []
    for model, version in store.versions():
        scores, labels = store.window(model, version)
        if len(scores):
            out.append((model, version, accuracy(scores, labels, threshold)))
    return out


def accuracy_snapshot(store: MonitorStore, threshold: float) -> dict[str, Any]:
    versions = [{"model_name": m, "model_version": v, "events": a.events, "positives": a.positives,
                 **{k: _finite(getattr(a, k)) for k in ("auc", "precision", "recall", "log_loss")}}
                for m, v, a in version_accuracy(store, threshold)]
    return {"versions": versions, "totals": store.totals(), "threshold": threshold}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
