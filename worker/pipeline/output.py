"""Prediction records: which value goes in each output field, and the output key.

An output field is fed by an event field (nested path), the score, the label
(``score >= threshold``), a column of any model output, the model's name or version, the
time of scoring, or a constant. Fields are built a column at a time for the whole batch.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from worker.records import Message, Record, path_getter

Special = Literal["score", "label", "model_version", "model_name", "scored_at", "degraded", "reasons",
                  "contributions", "late"]
EXPLAINED: tuple[Special, ...] = ("reasons", "contributions")
NO_REASONS: Sequence[str] = ()
NO_CONTRIBUTIONS: Mapping[str, float] = MappingProxyType({})
"""What an unexplained row carries: one shared, immutable empty value (a batch is mostly unexplained)."""


@dataclass(frozen=True)
class FromEvent:
    path: str


@dataclass(frozen=True)
class FromModel:
    """A column of a model output (``column`` None for a 1-D output)."""

    output: str
    column: int | None = None


@dataclass(frozen=True)
class Computed:
    what: Special
    as_int: bool = False  # a label (or the degraded flag) written to an int field is 1/0


@dataclass(frozen=True)
class Constant:
    value: Any


Source = FromEvent | FromModel | Computed | Constant


@dataclass(frozen=True)
class ScoreSpec:
    output: str
    column: int | None
    threshold: float


@dataclass(frozen=True)
class KeySpec:
    """The output key: an event field (``path``) or, when ``path`` is None, the input key bytes."""

    path: str | None
    encoding: Literal["string", "int64"] = "string"


@dataclass
class ScoredBatch:
    """Model results for a batch, as the output builder needs them. ``row_versions`` is set
    when rows were scored by different versions (a canary): the version of each row."""

    outputs: dict[str, Any]
    model_name: str
    model_version: str
    scored_at_ms: int
    row_versions: list[str] | None = None
    degraded: bool = False  # scored with default features because the feature store was down
    reasons: list[Sequence[str]] | None = None
    """Per row, the explained rows' reasons (``NO_REASONS`` for the others); None: nothing explained."""
    contributions: list[Mapping[str, float]] | None = None
    late: list[bool] | None = None
    """Per row, whether it was past its deadline (scored late); None: none was."""


def select(output: Any, column: int | None) -> np.ndarray:
    """One value per row from a model output: ``[N, k]`` column, ``[N]``/``[N, 1]``, or ZipMap."""
    if isinstance(output, list):  # ZipMap: a list of {class: probability}
        return np.array([row[column] for row in output], dtype=np.float64)
    array = np.asarray(output)
    if array.ndim == 1:
        return array
    return array[:, 0 if column is None else column]


def as_rows(columns: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Columns (``{field: values}``) as one dict per row."""
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


class OutputBuilder:
    """Turns a batch of events and their model results into output records and keys."""

    def __init__(self, fields: dict[str, Source], score: ScoreSpec, key: KeySpec) -> None:
        self.fields = fields
        self.score = score
        self.key = key
        self._key_getter = path_getter(key.path) if key.path else None

    @property
    def explains(self) -> bool:
        """Whether any field carries reasons or contributions."""
        return any(isinstance(s, Computed) and s.what in EXPLAINED for s in self.fields.values())

    def model_outputs(self) -> list[str]:
        """The model outputs the records need, score first."""
        names = [self.score.output]
        names += [s.output for s in self.fields.values() if isinstance(s, FromModel) and s.output not in names]
        return names

    def records(self, events: Sequence[Record], scored: ScoredBatch) -> list[dict[str, Any]]:
        return as_rows(self.columns(events, scored))

    def columns(self, events: Sequence[Record], scored: ScoredBatch) -> dict[str, Sequence[Any]]:
        """The output records of a batch as one sequence of values per field (what ``records`` zips)."""
        n = len(events)
        scores = select(scored.outputs[self.score.output], self.score.column)
        return {name: self._column(source, events, scores, scored, n) for name, source in self.fields.items()}

    def _column(self, source: Source, events: Sequence[Record], scores: np.ndarray, scored: ScoredBatch,
                n: int) -> Sequence[Any]:
        if isinstance(source, FromEvent):
            return list(map(path_getter(source.path), events))
        if isinstance(source, FromModel):
            return select(scored.outputs[source.output], source.column).tolist()  # type: ignore[no-any-return]
        if isinstance(source, Constant):
            return [source.value] * n
        return self._computed(source, scores, scored, n)

    def _computed(self, source: Computed, scores: np.ndarray, scored: ScoredBatch, n: int) -> Sequence[Any]:
        if source.what == "score":
            return scores.tolist()  # type: ignore[no-any-return]
        if source.what == "label":
            labels = scores >= self.score.threshold
            return (labels.astype(np.int64) if source.as_int else labels).tolist()  # type: ignore[no-any-return]
        if source.what == "model_version" and scored.row_versions is not None:
            return scored.row_versions
        if source.what == "reasons":
            return scored.reasons if scored.reasons is not None else [NO_REASONS] * n
        if source.what == "contributions":
            return scored.contributions if scored.contributions is not None else [NO_CONTRIBUTIONS] * n
        if source.what == "late":
            late = scored.late or [False] * n
            return [int(flag) for flag in late] if source.as_int else late
        single = {"model_version": scored.model_version, "model_name": scored.model_name,
                  "scored_at": scored.scored_at_ms,
                  "degraded": int(scored.degraded) if source.as_int else scored.degraded}[source.what]
        return [single] * n

    def keys(self, events: Sequence[Record], sources: Sequence[Message]) -> list[bytes | None]:
        """The output key of each event: its key field encoded, or the input message's key."""
        getter = self._key_getter
        if getter is None:
            return [m.key() for m in sources]
        values = list(map(getter, events))
        try:
            return [v.encode() for v in values]  # the usual string key, at list speed
        except AttributeError:
            return [self._key_bytes(v) for v in values]

    def _key_bytes(self, value: Any) -> bytes | None:
        if value is None or isinstance(value, bytes):
            return value
        if self.key.encoding == "int64" and isinstance(value, int):
            return struct.pack(">q", value)
        return str(value).encode()
