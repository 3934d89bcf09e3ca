"""Plain records passed between the worker's stages.

``Message`` is the shape of a consumed Kafka message as the pipeline sees it. confluent-kafka's
``Message`` satisfies it structurally, so the hot path never copies messages; ``InputMessage``
is a small twin for tests and for tools that build messages by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple, Protocol

Headers = list[tuple[str, str | bytes | None]]
Record = dict[str, Any]
"""A decoded event or a prediction, as fastavro reads and writes it."""
TP = tuple[str, int]
"""A topic partition."""


class Message(Protocol):
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Any: ...
    def timestamp(self) -> tuple[int, int]: ...


@dataclass
class InputMessage:
    """An in-memory ``Message`` (tests, tools)."""

    _value: bytes | None
    _key: bytes | None = None
    _topic: str = "input"
    _partition: int = 0
    _offset: int = 0
    _headers: Headers | None = None
    _timestamp: tuple[int, int] = (0, 0)

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Headers | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp


@dataclass(frozen=True)
class DeadLetter:
    """An input message that could not be scored, with the reason."""

    message: Message
    stage: str
    reason: str
    error_type: str


class Output(NamedTuple):
    """One encoded prediction, ready to produce; ``source`` is its input message; ``headers``
    are this output's own, after the batch's (a late prediction's mark)."""

    key: bytes | None
    value: bytes
    source: Message
    headers: Headers | None = None


class ModelRun(NamedTuple):
    """One model call in a batch: which model in which role scored how many events, how many it
    failed on, and how long it took. ``role`` is ``active``, ``canary`` or ``shadow``."""

    role: str
    model: str
    version: str
    events: int
    errors: int
    seconds: float


class ShadowComparison(NamedTuple):
    """The shadow model's scores against the published ones, over the events both scored."""

    model: str
    version: str
    compared: int
    label_agreements: int
    abs_diff_sum: float
    abs_diff_max: float


@dataclass(slots=True)
class Delivery:
    """How one batch's outputs went to the broker, in ``time.perf_counter_ns``: received (its first
    event), handed to the producer, and acknowledged (0 until every output and dead letter is)."""

    size: int
    nbytes: int = 0
    consumed_ns: int = 0
    published_ns: int = 0
    acked_ns: int = 0


@dataclass
class BatchResult:
    """What the pipeline made of one batch: predictions and dead letters (input order kept),
    the time each stage took, and counters for telemetry.

    ``runs`` lists every model call (per version and role); ``shadow_outputs`` holds the
    shadow model's predictions, for the shadow topic only; ``shadow`` compares its scores
    with the published ones."""

    outputs: list[Output] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    timings: list[StageTiming] = field(default_factory=list)
    feature_defaults: dict[str, int] = field(default_factory=dict)
    """Per entity, the feature values that fell back to their default (absent in the store)."""
    feature_stale: dict[str, int] = field(default_factory=dict)
    """Per entity with a ``max_age_s``, the events whose row was too old to use."""
    feature_ages: dict[str, Any] = field(default_factory=dict)
    """Per entity whose rows carry a write time, the age in seconds of the row each event read
    (a numpy array)."""
    degraded: bool = False
    """Scored with every feature at its default because the feature store was down."""
    model_version: str = ""
    runs: list[ModelRun] = field(default_factory=list)
    shadow_outputs: list[Output] = field(default_factory=list)
    shadow: ShadowComparison | None = None
    model_name: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    """The decoded events, in input order (telemetry reads event times from them)."""
    scored: ScoredRows | None = None
    """The model inputs and scores of the decoded events (drift monitoring reads them)."""
    nulls: dict[str, int] = field(default_factory=dict)
    """Per model-input event field, how many decoded events had it null."""
    explained: int = 0
    """Predictions given reasons."""
    explain_failures: int = 0
    """Predictions that should have had reasons and went out without, because explaining failed."""
    expired: dict[str, int] = field(default_factory=dict)
    """Events older than the deadline when consumed, by what happened to them (``batch.on_expired``)."""


@dataclass(frozen=True)
class ScoredRows:
    """What the model saw and said for a batch's decoded events, one row each (no copies):
    the input tensors by name, the score, which rows were published (the others failed), and
    who scored each row: ``groups`` maps (model name, version) to its rows, or is None when
    the active model scored them all."""

    feeds: dict[str, Any]
    scores: Any
    published: Any
    groups: dict[tuple[str, str], Any] | None = None


class StageTiming(NamedTuple):
    """A stage of a batch: its name and ``time.perf_counter_ns`` at start and end."""

    stage: str
    start_ns: int
    end_ns: int

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def path_getter(path: str) -> Callable[[Record], Any]:
    """A function returning the value at a dotted path, or None where a level is null."""
    parts = path.split(".")
    if len(parts) == 1:
        return itemgetter(parts[0])  # C, not a lambda: called per event per field (2.6 % of the worker's profile)

    def get(record: Record) -> Any:
        value: Any = record
        for part in parts:
            if value is None:
                return None
            value = value[part]
        return value

    return get


UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
"""Seconds per unit of an epoch event-time field (``telemetry.event_time_unit``)."""


def event_time_reader(field: str | None, scale: float) -> Callable[[Record], float | None] | None:
    """A record → its event time in Unix seconds, from the field at ``field`` in units of ``scale``
    seconds (None where it is null); None when no field is configured."""
    if field is None:
        return None
    get = path_getter(field)

    def read(event: Record) -> float | None:
        value = get(event)
        return None if value is None else float(value) * scale
    return read


def message_time_s(message: Message) -> float | None:
    """The message's Kafka timestamp in Unix seconds (None if it has none)."""
    kind, ms = message.timestamp()
    return ms / 1000 if kind else None
