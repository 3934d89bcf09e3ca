"""Model input assembly: decoded events + fetched features → named numpy tensors.

Each model input is a ``TensorSpec``: its ONNX name, element type and an ordered list of
columns, each fed by an event field (nested path), an entity's feature field, or a constant.
One input with k columns becomes ``[N, k]``; an input declared with rank 1 becomes ``[N]``.
Work is per column over the whole batch, so the per-event Python cost is a few list
operations; entity features are converted once per distinct key and gathered with numpy.

Conversions: bool → 1/0, null → the column's default, enum/string → string tensors or,
through a ``mapping``, to numbers. A value that cannot be converted marks only its event bad.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, groupby
from typing import Any

import numpy as np

from worker.errors import AssemblyError, EventError, FeatureValueError
from worker.features.fetcher import EntityLookup, EntitySpec
from worker.records import Record, path_getter

NUMERIC_DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")


def numpy_dtype(dtype: str) -> np.dtype[Any]:
    """The numpy dtype of a model input's configured dtype (strings are object arrays)."""
    return np.dtype(object) if dtype == "string" else np.dtype(dtype)


@dataclass(frozen=True)
class EventColumn:
    path: str
    default: Any = None
    mapping: Mapping[Any, Any] | None = None


@dataclass(frozen=True)
class FeatureColumn:
    entity: str
    field: str
    default: Any


@dataclass(frozen=True)
class ConstColumn:
    value: Any


Column = EventColumn | FeatureColumn | ConstColumn


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    columns: tuple[Column, ...]
    rank: int = 2

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return numpy_dtype(self.dtype)


@dataclass
class Assembled:
    """The model feeds for a batch, the events that could not be assembled, and how many
    feature values fell back to defaults (per entity)."""

    feeds: dict[str, np.ndarray]
    bad: dict[int, EventError] = field(default_factory=dict)
    defaulted: dict[str, int] = field(default_factory=dict)
    nulls: dict[str, int] = field(default_factory=dict)
    """Per event field feeding a column, the events where it was null."""


class _EntityConstants:
    """Per entity, what its numeric table needs that depends on the entity's spec alone: the
    defaults as doubles, and which fields are never parsed as numbers (they feed string tensors
    only, and must not fail their events for not being numbers). Worked out at its first batch."""

    def __init__(self, numeric_features: frozenset[tuple[str, str]]) -> None:
        self.numeric_features = numeric_features
        self._known: dict[str, tuple[EntitySpec, np.ndarray, np.ndarray]] = {}

    def of(self, spec: EntitySpec) -> tuple[np.ndarray, np.ndarray]:
        known = self._known.get(spec.name)
        if known is None or known[0] is not spec:
            defaults = np.array([_as_float(spec.defaults[f]) for f in spec.fields], dtype=np.float64)
            unparsed = np.array([(spec.name, f) not in self.numeric_features for f in spec.fields], dtype=bool)
            known = self._known[spec.name] = (spec, defaults, unparsed)
        return known[1], known[2]


class _BatchContext:
    """Per-batch state shared by the columns: records, lookups, bad rows, converted features."""

    def __init__(self, records: Sequence[Record], lookups: Mapping[str, EntityLookup],
                 entities: _EntityConstants) -> None:
        self.records = records
        self.lookups = lookups
        self.entities = entities
        self.result = Assembled({})
        self.numeric_tables: dict[str, np.ndarray] = {}

    def mark_bad(self, row: int, error: EventError) -> None:
        self.result.bad.setdefault(row, error)


ColumnFn = Callable[[_BatchContext], np.ndarray]


class Assembler:
    """Builds every model input of a batch from its ``TensorSpec``.

    Consecutive numeric columns of one entity (an ``entity:`` column expands to all its fields)
    are gathered as one block, so a batch costs a few numpy calls per entity rather than per field:
    at small batches, under a latency budget, those calls are most of the work."""

    def __init__(self, tensors: Sequence[TensorSpec]) -> None:
        self.tensors = list(tensors)
        self._plans = [(t, _segments(t)) for t in self.tensors]
        self._entities = _EntityConstants(frozenset(
            (c.entity, c.field) for t in self.tensors if t.dtype != "string" for c in t.columns
            if isinstance(c, FeatureColumn)))

    def assemble(self, records: Sequence[Record], lookups: Mapping[str, EntityLookup]) -> Assembled:
        ctx = _BatchContext(records, lookups, self._entities)
        n = len(records)
        for spec, segments in self._plans:
            built = [fn(ctx) for fn in segments]
            tensor = ctx.result.feeds[spec.name] = _stack(spec, built, n)
            if spec.dtype in ("float32", "float16") and not np.isfinite(tensor).all():
                _mark_overflows(ctx, spec, built, tensor)
        return ctx.result


def _segments(spec: TensorSpec) -> list[ColumnFn]:
    """One function per column, or per run of numeric columns of the same entity."""
    numeric = spec.dtype != "string"

    def entity_of(column: Column) -> str | None:
        return column.entity if numeric and isinstance(column, FeatureColumn) else None

    segments: list[ColumnFn] = []
    for entity, run in groupby(spec.columns, key=entity_of):
        columns = list(run)
        if entity is None:
            segments += [_column_fn(c, spec.dtype) for c in columns]
        else:
            segments.append(_feature_block(entity, [c.field for c in columns]))  # type: ignore[union-attr]
    return segments


def _stack(spec: TensorSpec, segments: list[np.ndarray], n: int) -> np.ndarray:
    """The tensor from its segments: ``[n]`` columns and ``[n, w]`` blocks, side by side."""
    if spec.rank == 1:
        with np.errstate(over="ignore"):  # overflows are found and dead-lettered by the caller
            return segments[0].reshape(n).astype(spec.numpy_dtype, copy=False)
    out = np.empty((n, len(spec.columns)), dtype=spec.numpy_dtype)
    j = 0
    with np.errstate(over="ignore"):
        for segment in segments:
            width = 1 if segment.ndim == 1 else segment.shape[1]
            out[:, j:j + width] = segment.reshape(n, width)
            j += width
    return out


def _mark_overflows(ctx: _BatchContext, spec: TensorSpec, segments: list[np.ndarray], tensor: np.ndarray) -> None:
    """A finite double too large for the tensor's type would reach the model as infinity: the
    event is dead-lettered instead (a real infinity or NaN in the data is passed on as it is)."""
    n = len(ctx.records)
    narrowed = tensor.reshape(n, -1)
    source = np.hstack([segment.reshape(n, -1) for segment in segments])
    for row, j in zip(*np.nonzero(np.isinf(narrowed) & np.isfinite(source)), strict=True):
        ctx.mark_bad(int(row), AssemblyError(f"input {spec.name} column {j}: {float(source[row, j])!r} does not "
                                             f"fit in {spec.dtype}"))


def _intermediate(dtype: str) -> Any:
    """The numpy type a column is built in before the tensor's own: doubles for float tensors
    (so float32 rounds exactly as numpy does from Python floats), int64 for integer ones."""
    if dtype == "string":
        return object
    if dtype.startswith("float"):
        return np.float64
    return np.bool_ if dtype == "bool" else np.int64


def _column_fn(column: Column, dtype: str) -> ColumnFn:
    kind = _intermediate(dtype)
    if isinstance(column, ConstColumn):
        value = str(column.value) if kind is object else column.value
        return lambda ctx: np.full(len(ctx.records), value, dtype=kind)
    if isinstance(column, FeatureColumn):  # a string tensor's: numeric ones come in blocks
        return lambda ctx: _string_column(ctx, ctx.lookups[column.entity], column)
    return _event_column(column, kind)


def _event_column(column: EventColumn, kind: Any) -> ColumnFn:
    getter = path_getter(column.path)
    mapping, default = column.mapping, column.default

    def build(ctx: _BatchContext) -> np.ndarray:
        values = list(map(getter, ctx.records))
        ctx.result.nulls[column.path] = values.count(None)
        if mapping is not None:
            values = _mapped(ctx, column, values)
        elif default is not None:
            values = [default if v is None else v for v in values]
        if kind is object:
            return np.array([v if isinstance(v, str) else str(v) for v in values], dtype=object)
        return np.array(values, dtype=kind)

    return build


def _mapped(ctx: _BatchContext, column: EventColumn, values: list[Any]) -> list[Any]:
    mapping = column.mapping or {}
    out: list[Any] = []
    for row, value in enumerate(values):
        mapped = mapping.get(value, column.default)
        if mapped is None:
            ctx.mark_bad(row, AssemblyError(f"event field {column.path}: {value!r} is not in its mapping and "
                                            "the column has no default"))
            mapped = 0
        out.append(mapped)
    return out


def _feature_block(entity: str, fields: list[str]) -> ColumnFn:
    """The numeric values of some fields of an entity, ``[n, len(fields)]``, from its table."""
    memo: list[Any] = [None, None]  # the entity's spec last seen, and where ``fields`` sit in it

    def build(ctx: _BatchContext) -> np.ndarray:
        lookup = ctx.lookups[entity]
        table = ctx.numeric_tables.get(entity)
        if table is None:
            table = ctx.numeric_tables[entity] = _numeric_table(ctx, lookup)
        if memo[0] is not lookup.spec:
            memo[:] = [lookup.spec, _positions(lookup.spec, fields)]
        where = memo[1]
        block: np.ndarray = table[lookup.index, where] if isinstance(where, slice) else table[lookup.index][:, where]
        return block

    return build


def _positions(spec: EntitySpec, fields: list[str]) -> slice | list[int]:
    """Where ``fields`` sit among the entity's fields: a slice when they are consecutive."""
    positions = [spec.fields.index(f) for f in fields]
    if positions == list(range(positions[0], positions[0] + len(positions))):
        return slice(positions[0], positions[-1] + 1)
    return positions


def _numeric_table(ctx: _BatchContext, lookup: EntityLookup) -> np.ndarray:
    """``[distinct keys + 1, fields]`` as doubles with defaults filled in; the last row (index -1)
    is all defaults, for events whose key is null. Converted in one numpy pass per entity."""
    spec = lookup.spec
    width = len(spec.fields)
    defaults, unparsed = ctx.entities.of(spec)
    rows = [[None] * width if isinstance(r, Exception) else r for r in lookup.values]
    flat = [*chain.from_iterable(rows), *[None] * width]
    raw = np.array(flat, dtype=object).reshape(-1, width)
    missing = np.array([v is None for v in flat], dtype=bool).reshape(-1, width)
    raw[missing | unparsed] = 0.0
    try:
        values = raw.astype(np.float64)
    except (ValueError, TypeError):
        numeric_rows = [[None if skip else v for v, skip in zip(row, unparsed, strict=True)] for row in rows]
        values = np.array([*(_salvage_row(ctx, lookup, u, row, defaults) for u, row in enumerate(numeric_rows)),
                           defaults])
    for u, row in enumerate(lookup.values):
        if isinstance(row, Exception):
            _mark_key_bad(ctx, lookup, u, f"entity {spec.name} key {lookup.keys[u]!r}: the store answered {row}")
    ctx.result.defaulted[spec.name] = int(missing.sum(axis=1)[lookup.index].sum())
    table: np.ndarray = np.where(missing, defaults, values)
    return table


def _salvage_row(ctx: _BatchContext, lookup: EntityLookup, u: int, row: list[Any],
                 defaults: np.ndarray) -> list[float]:
    """A row whose values do not all parse: defaults where unusable, and the key's events marked bad."""
    out: list[float] = defaults.tolist()
    for f, value in enumerate(row):
        try:
            out[f] = out[f] if value is None else float(value)
        except ValueError:
            name = f"{lookup.spec.name}.{lookup.spec.fields[f]}"
            _mark_key_bad(ctx, lookup, u, f"feature {name} of {lookup.keys[u]!r}: {value!r} is not a number")
    return out


def _mark_key_bad(ctx: _BatchContext, lookup: EntityLookup, u: int, reason: str) -> None:
    for row in np.flatnonzero(lookup.index == u):
        ctx.mark_bad(int(row), FeatureValueError(reason))


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")  # a text default only ever feeds string columns (checked by the config)


def _string_column(ctx: _BatchContext, lookup: EntityLookup, column: FeatureColumn) -> np.ndarray:
    fill = str(column.default)
    per_key = _string_values(lookup.raw_column(column.field) if lookup.values else [], fill, ctx, lookup, column)
    rows: np.ndarray = np.append(per_key, np.array([fill], dtype=object))[lookup.index]
    return rows


def _string_values(raw: list[Any], default: str, ctx: _BatchContext, lookup: EntityLookup,
                   column: FeatureColumn) -> np.ndarray:
    values = np.empty(len(raw), dtype=object)
    for u, value in enumerate(raw):
        try:
            values[u] = default if value is None else value.decode() if not isinstance(value, Exception) \
                else _raise(value)
        except (UnicodeDecodeError, ValueError) as exc:
            reason = f"feature {column.entity}.{column.field} of {lookup.keys[u]!r}: {_describe(value, exc)}"
            _mark_key_bad(ctx, lookup, u, reason)
            values[u] = ""
    return values


def _raise(error: Exception) -> Any:
    raise ValueError(str(error)) from error


def _describe(value: Any, exc: Exception) -> str:
    if isinstance(value, Exception):
        return f"the store answered {value}"
    return f"value {value!r} cannot be converted ({exc})"
