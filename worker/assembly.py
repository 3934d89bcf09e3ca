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
from typing import Any

import numpy as np

from worker.errors import AssemblyError, EventError, FeatureValueError
from worker.features import EntityLookup, Record, path_getter

NUMERIC_DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")


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
        return np.dtype(object) if self.dtype == "string" else np.dtype(self.dtype)


@dataclass
class Assembled:
    """The model feeds for a batch, the events that could not be assembled, and how many
    feature values fell back to defaults (per ``entity.field``)."""

    feeds: dict[str, np.ndarray]
    bad: dict[int, EventError] = field(default_factory=dict)
    defaulted: dict[str, int] = field(default_factory=dict)


class _BatchContext:
    """Per-batch state shared by the columns: records, lookups, bad rows, converted features."""

    def __init__(self, records: Sequence[Record], lookups: Mapping[str, EntityLookup]) -> None:
        self.records = records
        self.lookups = lookups
        self.result = Assembled({})
        self.feature_cache: dict[tuple[str, str, bool], np.ndarray] = {}

    def mark_bad(self, row: int, error: EventError) -> None:
        self.result.bad.setdefault(row, error)


ColumnFn = Callable[[_BatchContext], np.ndarray]


class Assembler:
    """Builds every model input of a batch from its ``TensorSpec``."""

    def __init__(self, tensors: Sequence[TensorSpec]) -> None:
        self.tensors = list(tensors)
        self._plans = [(t, [_column_fn(c, t.dtype) for c in t.columns]) for t in self.tensors]

    def assemble(self, records: Sequence[Record], lookups: Mapping[str, EntityLookup]) -> Assembled:
        ctx = _BatchContext(records, lookups)
        n = len(records)
        for spec, columns in self._plans:
            ctx.result.feeds[spec.name] = _stack(spec, [fn(ctx) for fn in columns], n)
        return ctx.result


def _stack(spec: TensorSpec, columns: list[np.ndarray], n: int) -> np.ndarray:
    if spec.rank == 1:
        return columns[0].astype(spec.numpy_dtype, copy=False)
    out = np.empty((n, len(columns)), dtype=spec.numpy_dtype)
    for j, col in enumerate(columns):
        out[:, j] = col
    return out


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
    if isinstance(column, FeatureColumn):
        return lambda ctx: _feature_column(ctx, column, kind is object)
    return _event_column(column, kind)


def _event_column(column: EventColumn, kind: Any) -> ColumnFn:
    getter = path_getter(column.path)
    mapping, default = column.mapping, column.default

    def build(ctx: _BatchContext) -> np.ndarray:
        values = list(map(getter, ctx.records))
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


def _feature_column(ctx: _BatchContext, column: FeatureColumn, as_string: bool) -> np.ndarray:
    cache_key = (column.entity, column.field, as_string)
    cached = ctx.feature_cache.get(cache_key)
    if cached is not None:
        return cached
    lookup = ctx.lookups[column.entity]
    raw = lookup.raw_column(column.field) if lookup.values else []
    fill = str(column.default) if as_string else column.default
    per_key, missing = (_string_values if as_string else _numeric_values)(raw, fill, ctx, lookup, column)
    rows: np.ndarray = np.append(per_key, np.array([fill], dtype=per_key.dtype))[lookup.index]
    missing_rows = np.append(missing, True)[lookup.index]
    ctx.result.defaulted[f"{column.entity}.{column.field}"] = int(np.count_nonzero(missing_rows))
    ctx.feature_cache[cache_key] = rows
    return rows


def _numeric_values(raw: list[Any], default: Any, ctx: _BatchContext, lookup: EntityLookup,
                    column: FeatureColumn) -> tuple[np.ndarray, np.ndarray]:
    missing = np.fromiter((v is None for v in raw), dtype=bool, count=len(raw))
    try:
        values = np.array([b"0" if v is None else v for v in raw], dtype="S").astype(np.float64)
    except (ValueError, TypeError):
        values = _parse_one_by_one(raw, ctx, lookup, column)
    values[missing] = default
    return values, missing


def _parse_one_by_one(raw: list[Any], ctx: _BatchContext, lookup: EntityLookup,
                      column: FeatureColumn) -> np.ndarray:
    values = np.zeros(len(raw), dtype=np.float64)
    for u, value in enumerate(raw):
        if value is None:
            continue
        try:
            values[u] = float(value) if not isinstance(value, Exception) else _raise(value)
        except (ValueError, TypeError) as exc:
            reason = f"feature {column.entity}.{column.field} of {lookup.keys[u]!r}: {_describe(value, exc)}"
            for row in np.flatnonzero(lookup.index == u):
                ctx.mark_bad(int(row), FeatureValueError(reason))
    return values


def _string_values(raw: list[Any], default: Any, ctx: _BatchContext, lookup: EntityLookup,
                   column: FeatureColumn) -> tuple[np.ndarray, np.ndarray]:
    missing = np.fromiter((v is None for v in raw), dtype=bool, count=len(raw))
    values = np.empty(len(raw), dtype=object)
    for u, value in enumerate(raw):
        try:
            values[u] = default if value is None else value.decode() if not isinstance(value, Exception) \
                else _raise(value)
        except (UnicodeDecodeError, ValueError) as exc:
            reason = f"feature {column.entity}.{column.field} of {lookup.keys[u]!r}: {_describe(value, exc)}"
            for row in np.flatnonzero(lookup.index == u):
                ctx.mark_bad(int(row), FeatureValueError(reason))
            values[u] = ""
    return values, missing


def _raise(error: Exception) -> Any:
    raise ValueError(str(error)) from error


def _describe(value: Any, exc: Exception) -> str:
    if isinstance(value, Exception):
        return f"the store answered {value}"
    return f"value {value!r} cannot be converted ({exc})"
