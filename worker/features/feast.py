"""Feast's Redis online-store layout, read in the worker's own batch round trip.

What Feast writes (``feast/infra/online_stores/redis.py`` and ``key_encoding_utils.py``, entity
key serialization version 3, the default since Feast 0.38):

- one hash per entity: the key is the serialized entity key followed by the project name. The
  entity key is ``<u32 number of join keys>``, then per join key in name order
  ``<u32 type=STRING><u32 length><utf-8 name>``, then per value in the same order
  ``<u32 value type><u32 length><bytes>`` (strings utf-8, int64 ``<q``, int32 ``<i``); all little-endian;
- one field per feature, named by the 4-byte little-endian MurmurHash3 (x86, 32-bit, seed 0) of
  ``"<feature_view>:<feature>"``, holding a serialized ``feast.types.Value`` protobuf;
- ``_ts:<feature_view>``: the row's event time as a serialized ``google.protobuf.Timestamp``.

Values are decoded here rather than with protobuf classes: a batch's cells are joined into one
buffer and the scalar types (double, float, int32, int64, bool, unix timestamp) are read with a
few numpy gathers: 0.12 µs a cell, against 0.52 µs for protobuf's own parser plus ``WhichOneof``
(both measured on 6,000 int64 and double cells; the difference is about 5 µs an event for the
example's twelve features).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import mmh3
import numpy as np

from worker.features.store import KeyValues
from worker.records import Record, path_getter

# ValueType codes of the entity-key serialization, per join-key type the config may name.
KEY_TYPES: dict[str, tuple[int, Callable[[Any], bytes]]] = {
    "string": (2, lambda v: v.encode() if isinstance(v, str) else str(v).encode()),
    "int64": (4, lambda v: struct.pack("<q", v)),
    "int32": (3, lambda v: struct.pack("<i", v)),
    "bytes": (1, lambda v: v if isinstance(v, bytes) else str(v).encode()),
}

# First byte of a serialized Value per scalar field (field number << 3 | wire type).
_DOUBLE, _FLOAT, _INT32, _INT64, _BOOL, _TIMESTAMP = 0x29, 0x35, 0x18, 0x20, 0x38, 0x40
_BYTES, _STRING, _NULL = 0x0A, 0x12, 0x98  # null_val is field 19: a two-byte tag 0x98 0x01
_VARINTS = np.array([_INT32, _INT64, _BOOL, _TIMESTAMP], dtype=np.uint8)
_NAMES = {11: "bytes_list_val", 12: "string_list_val", 13: "int32_list_val", 14: "int64_list_val",
          15: "double_list_val", 16: "float_list_val", 17: "bool_list_val", 18: "unix_timestamp_list_val",
          20: "map_val", 32: "json_val", 36: "uuid_val", 44: "decimal_val"}
_PAD = b"\0" * 24  # so that the fixed-width gathers never run past the end of the buffer


def feature_field(feature_view: str, feature: str) -> bytes:
    """The hash field Feast stores ``feature`` of ``feature_view`` under."""
    return struct.pack("<I", mmh3.hash(f"{feature_view}:{feature}", signed=False))


def timestamp_field(feature_view: str) -> bytes:
    return f"_ts:{feature_view}".encode()


class FeastKey:
    """A record → the Redis key of its entity row (None when a join key is null).

    In two steps, so that a batch serializes each distinct entity once: ``render`` takes the
    join-key values out of a record (the value itself for one join key, a tuple for several),
    and ``store_key`` turns distinct values into Feast's key."""

    def __init__(self, project: str, join_keys: Mapping[str, tuple[str, str]]) -> None:
        """``join_keys``: join key name → (event field path, key type: string, int64, int32, bytes)."""
        self.project = project
        self.join_keys = dict(sorted(join_keys.items()))  # Feast serializes them in name order
        names = [name.encode() for name in self.join_keys]
        self._head = struct.pack("<I", len(names)) + b"".join(
            struct.pack("<II", 2, len(name)) + name for name in names)
        self._getters = [path_getter(path) for path, _ in self.join_keys.values()]
        self._types = [(struct.pack("<I", KEY_TYPES[k][0]), KEY_TYPES[k][1]) for _, k in self.join_keys.values()]
        self._tail = project.encode()
        self.render: Callable[[Record], Any] = self._getters[0] if len(self._getters) == 1 else self._values

    def __call__(self, record: Record) -> bytes | None:
        values = self.render(record)
        return None if values is None else self.store_key(values)

    def _values(self, record: Record) -> tuple[Any, ...] | None:
        values = tuple(get(record) for get in self._getters)
        return None if None in values else values

    def store_key(self, values: Any) -> bytes:
        """Join-key values as ``render`` gave them → the key Feast writes the row under."""
        if len(self._types) == 1:  # the usual single join key, as one concatenation
            code, encode = self._types[0]
            data = encode(values)
            return self._head + code + struct.pack("<I", len(data)) + data + self._tail
        out = [self._head]
        for (code, encode), value in zip(self._types, values, strict=True):
            data = encode(value)
            out += (code, struct.pack("<I", len(data)), data)
        out.append(self._tail)
        return b"".join(out)

    def __str__(self) -> str:
        keys = ", ".join(f"{name}={path}" for name, (path, _) in self.join_keys.items())
        return f"feast project {self.project}, {keys}"


class FeastLayout:
    """The ``Layout`` of one feature view: its features' hashed fields and ``_ts:<view>``."""

    def __init__(self, feature_view: str, features: Sequence[str]) -> None:
        self.feature_view = feature_view
        self.features = tuple(features)
        self.store_fields: tuple[str | bytes, ...] = (
            *(feature_field(feature_view, f) for f in features), timestamp_field(feature_view))
        self.written_by: str | None = f"Feast's _ts:{feature_view}"

    def read(self, replies: list[KeyValues]) -> tuple[list[KeyValues], np.ndarray | None]:
        return decode_rows(replies, self.features, self.feature_view)

    def __str__(self) -> str:
        return f"view {self.feature_view}"


@dataclass(frozen=True)
class Decoded:
    """Per cell: its value (float, int, bool, bytes or None for null); ``bad`` maps the cells that
    hold something no scalar column can take to a reason."""

    values: list[Any]
    bad: dict[int, str]


class _Cells:
    """Cells joined into one padded buffer: where each starts, how long it is, its first byte."""

    def __init__(self, cells: list[bytes | None]) -> None:
        # No None among them (the usual case): the list as it is, no copy.
        self.filled: list[bytes] = [c or b"" for c in cells] if None in cells else cells  # type: ignore[assignment]
        self.lengths = np.fromiter(map(len, self.filled), dtype=np.intp, count=len(self.filled))
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.buf = np.frombuffer(b"".join(self.filled) + _PAD, dtype=np.uint8)
        self.tags = np.where(self.lengths > 0, self.buf[self.starts], 0)

    def varints(self, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The varint at each position: its value (uint64) and length in bytes (0: longer than 10).
        Byte by byte over the rows still reading: most values (counts, flags) end after one or two."""
        value = np.zeros(len(at), dtype=np.uint64)
        length = np.zeros(len(at), dtype=np.intp)
        rows = np.arange(len(at))
        last = len(self.buf) - 1
        for k in range(10):
            byte = self.buf[np.minimum(at[rows] + k, last)].astype(np.uint64)
            value[rows] |= (byte & np.uint64(0x7F)) << np.uint64(7 * k)
            ends = byte < 0x80
            length[rows[ends]] = k + 1
            rows = rows[~ends]
            if not len(rows):
                break
        return value, length


def decode_values(cells: list[bytes | None]) -> Decoded:
    """Serialized ``feast.types.Value`` cells (None: the field is absent) → Python values."""
    c = _Cells(cells)
    out = np.full(len(c.filled), None, dtype=object)
    doubles, floats = (c.tags == _DOUBLE) & (c.lengths == 9), (c.tags == _FLOAT) & (c.lengths == 5)
    _fixed(out, c, doubles, "<f8")
    _fixed(out, c, floats, "<f4")
    varint = np.isin(c.tags, _VARINTS) & (c.lengths >= 2) & (c.lengths <= 11)
    bad = _varint_cells(out, c, varint)
    done = varint | doubles | floats | (c.lengths == 0) | (c.tags == _NULL)
    for i in np.flatnonzero(~done).tolist():
        value, problem = _other(c.filled[i])
        if problem:
            bad[i] = problem
        out[i] = value
    return Decoded(out.tolist(), bad)


def _fixed(out: np.ndarray, c: _Cells, where: np.ndarray, dtype: str) -> None:
    if where.any():
        width = np.dtype(dtype).itemsize
        raw = c.buf[c.starts[where][:, None] + 1 + np.arange(width)]
        out[where] = np.ascontiguousarray(raw).view(dtype).ravel().astype(np.float64).tolist()


def _varint_cells(out: np.ndarray, c: _Cells, where: np.ndarray) -> dict[int, str]:
    """Decode the int32/int64/bool/timestamp cells; a varint that does not end where its cell
    ends is corrupt."""
    if not where.any():
        return {}
    rows = np.flatnonzero(where)
    numbers, length = c.varints(c.starts[rows] + 1)
    signed = numbers.view(np.int64)  # int32 and int64 negatives are ten-byte two's complement
    is_bool = c.tags[rows] == _BOOL
    values = np.empty(len(rows), dtype=object)
    values[is_bool] = (numbers[is_bool] != 0).tolist()
    values[~is_bool] = signed[~is_bool].tolist()
    out[rows] = values
    bad = {}
    for i in rows[length != c.lengths[rows] - 1].tolist():
        out[i] = None
        bad[i] = "a corrupt varint"
    return bad


def _other(cell: bytes) -> tuple[Any, str | None]:
    """A string or bytes value, or the reason the cell cannot feed a scalar column."""
    tag, pos = _varint(cell, 0)
    if tag is None:
        return None, "a truncated value"
    if tag in (_STRING, _BYTES):
        length, pos = _varint(cell, pos)
        if length is None or pos + length != len(cell):
            return None, "a truncated string"
        return cell[pos:pos + length], None
    name = _NAMES.get(tag >> 3, f"field {tag >> 3}")
    return None, f"a {name}, which no scalar column can take"


def _varint(data: bytes, pos: int) -> tuple[int | None, int]:
    """The protobuf varint at ``data[pos:]`` and the position after it (None if it is cut short)."""
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
    return None, pos


def decode_timestamps(cells: list[bytes | None]) -> np.ndarray:
    """Serialized ``google.protobuf.Timestamp`` cells → Unix seconds (NaN: absent, empty or
    unreadable). Feast writes ``08 <seconds>`` and, unless zero, ``10 <nanos>``: read with a few
    numpy gathers; anything else goes through ``decode_timestamp``."""
    c = _Cells(cells)
    out = np.full(len(c.filled), np.nan)
    end = c.starts + c.lengths
    seconds, length = c.varints(c.starts + 1)
    after = c.starts + 1 + length
    nanos, nanos_length = c.varints(after + 1)
    timed = (c.tags == 0x08) & (length > 0)
    plain = timed & (after == end)
    both = timed & (after < end) & (c.buf[np.minimum(after, len(c.buf) - 1)] == 0x10) & (
        after + 1 + nanos_length == end) & (nanos_length > 0)
    out[plain] = seconds[plain].view(np.int64)
    out[both] = seconds[both].view(np.int64) + nanos[both] / 1e9
    for i in np.flatnonzero((c.lengths > 0) & ~plain & ~both).tolist():
        out[i] = decode_timestamp(c.filled[i])
    return out


def decode_timestamp(cell: bytes | None) -> float:
    """One serialized ``google.protobuf.Timestamp`` → Unix seconds (NaN if absent or unreadable;
    also if empty: the epoch, which no feature row is written at)."""
    if not cell:
        return float("nan")
    seconds = nanos = 0
    pos = 0
    while pos < len(cell):
        tag, pos = _varint(cell, pos)
        value, pos = _varint(cell, pos)
        if tag is None or value is None or tag not in (0x08, 0x10):
            return float("nan")
        if tag == 0x08:
            seconds = value - (1 << 64) if value >= 1 << 63 else value
        else:
            nanos = value
    return seconds + nanos / 1e9


def decode_rows(replies: Sequence[KeyValues], features: Sequence[str], view: str) -> tuple[list[KeyValues], np.ndarray]:
    """HMGET replies (the features' fields, then ``_ts:<view>``) → per key its values (or the
    error that fails the key's events) and when the row was written: NaN where there is no row,
    -inf where the row has values but no readable time."""
    width = len(features)
    good = [not isinstance(r, Exception) for r in replies]
    rows = replies if all(good) else [r for r, ok in zip(replies, good, strict=True) if ok]
    cells = list(chain.from_iterable(rows))  # type: ignore[arg-type]  # C-speed flattening; then the
    stamps = cells[width::width + 1]  # time column is cut out by slices
    del cells[width::width + 1]
    decoded = decode_values(cells)
    where = np.flatnonzero(good)
    written = np.full(len(replies), np.nan)
    written[where] = decode_timestamps(stamps)
    values = decoded.values
    sliced = [values[i:i + width] for i in range(0, len(values), width)]
    for r in np.flatnonzero(np.isnan(written[where])).tolist():
        if any(v is not None for v in sliced[r]):
            written[where[r]] = -np.inf
    if decoded.bad:
        _fail_bad_rows(sliced, decoded.bad, features, view)
    if len(rows) == len(replies):
        return sliced, written  # type: ignore[return-value]  # lists of values are KeyValues
    it = iter(sliced)
    return [r if isinstance(r, Exception) else next(it) for r in replies], written


def _fail_bad_rows(sliced: list[Any], bad: dict[int, str], features: Sequence[str], view: str) -> None:
    width = len(features)
    for row in sorted({i // width for i in bad}):
        problems = [f"{features[f]}: {bad[row * width + f]}" for f in range(width) if row * width + f in bad]
        sliced[row] = ValueError(f"feature view {view}: " + "; ".join(problems))
