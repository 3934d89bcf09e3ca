"""The compiled Avro reader against fastavro: the same records from valid bytes, on random records of
random schemas, and the same decision (a record, or a decode error) on truncated and hostile bytes."""

from __future__ import annotations

import io
import itertools
import time
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.codecs.avro import PlainAvroDecoder
from worker.codecs.reader import compile_reader
from worker.codecs.schemas import parse_schema
from worker.errors import DecodeError
from worker.records import InputMessage

PRIMITIVE = ["null", "boolean", "int", "long", "float", "double", "string", "bytes"]
MESSAGE = InputMessage(b"", b"k", "in", 0, 0)


def _takes_bytes(node: Any) -> bool:
    """Whether a value of ``node`` takes a byte at least: fastavro reads an array of values that take
    none for as long as its count says (hours for a hostile count), so the schemas here have none."""
    if isinstance(node, list):
        return True
    if isinstance(node, str):
        return node != "null"
    if node["type"] == "record":
        return any(_takes_bytes(f["type"]) for f in node["fields"])
    return node["type"] != "fixed" or node["size"] > 0


def _types(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    record = st.lists(children, min_size=1, max_size=4).map(
        lambda types: {"type": "record", "name": "_", "fields": [{"name": f"f{i}", "type": t}
                                                                   for i, t in enumerate(types)]})
    union = st.tuples(st.lists(st.sampled_from(PRIMITIVE), min_size=1, max_size=4, unique=True),
                      st.none() | record).map(lambda t: [*t[0], *([t[1]] if t[1] else [])])
    return st.one_of(
        record, union,
        st.builds(lambda items: {"type": "array", "items": items}, children.filter(_takes_bytes)),
        st.builds(lambda values: {"type": "map", "values": values}, children),
        st.lists(st.sampled_from("ABCDEFGH"), min_size=1, unique=True).map(
            lambda symbols: {"type": "enum", "name": "_", "symbols": symbols}),
        st.integers(0, 6).map(lambda size: {"type": "fixed", "name": "_", "size": size}),
    )


def _named(node: Any, counter: itertools.count[int]) -> Any:
    """The same tree with a fresh name for each named type (Avro names must be unique)."""
    if isinstance(node, list):
        return [_named(n, counter) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _named(v, counter) for k, v in node.items()}
    if "fields" in out:
        out["fields"] = [{**f, "type": _named(f["type"], counter)} for f in node["fields"]]
    if "name" in out:
        out["name"] = f"N{next(counter)}"
    return out


SCHEMAS = st.lists(st.recursive(st.sampled_from(PRIMITIVE), _types, max_leaves=12), min_size=1, max_size=6).map(
    lambda types: parse_schema(_named({"type": "record", "name": "_", "fields": [
        {"name": f"f{i}", "type": t} for i, t in enumerate(types)]}, itertools.count())))


def _values(node: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    node = named.get(node, node) if isinstance(node, str) else node
    if isinstance(node, list):
        return st.one_of([_values(branch, named) for branch in node])
    kind = node if isinstance(node, str) else node["type"]
    simple = {"null": st.none(), "boolean": st.booleans(), "int": st.integers(-2**31, 2**31 - 1),
              "long": st.integers(-2**63, 2**63 - 1), "float": st.floats(width=32), "double": st.floats(),
              "string": st.text(max_size=40), "bytes": st.binary(max_size=80)}  # lengths of 1 and 2 bytes
    if kind in simple:
        return simple[kind]
    if kind == "enum":
        return st.sampled_from(node["symbols"])
    if kind == "fixed":
        return st.binary(min_size=node["size"], max_size=node["size"])
    if kind == "array":
        return st.lists(_values(node["items"], named), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=4), _values(node["values"], named), max_size=3)
    return st.fixed_dictionaries({f["name"]: _values(f["type"], named) for f in node["fields"]})


def _encode(schema: Any, record: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def _fastavro(schema: Any, value: bytes) -> Any:
    """fastavro's decision: the record, or None if the value is not exactly one record."""
    buf = io.BytesIO(value)
    try:
        record = fastavro.schemaless_reader(buf, schema)
    except Exception:  # EOFError, IndexError, UnicodeDecodeError, ...
        return None
    return record if buf.tell() == len(value) else None


def _worker(schema: Any, value: bytes, fields: frozenset[str] | None = None) -> Any:
    try:
        return PlainAvroDecoder(schema, fields=fields)(value, MESSAGE)
    except DecodeError:
        return None


def _only(record: Any, fields: frozenset[str]) -> Any:
    """fastavro's record (or None) restricted to ``fields``: what a projected read must give."""
    return None if record is None else {k: v for k, v in record.items() if k in fields}


HOSTILE = [b"\xff" * 10 + b"\x01", b"\xff" * 9 + b"\x7f", b"\x01", b"\x03", b"\xfe\xff\xff\xff\x0f", b"\x7f",
           b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\xff\xfe\xfd", b"\x80", b"\x00", b"\x02\xc3\x28"]


def _mutated(data: st.DataObject, value: bytes) -> bytes:
    at = data.draw(st.integers(0, len(value)))
    how = data.draw(st.sampled_from(["truncate", "flip", "insert", "replace", "random"]))
    if how == "truncate":
        return value[:at]
    if how == "flip" and value:
        i = min(at, len(value) - 1)
        return value[:i] + bytes([value[i] ^ (1 << data.draw(st.integers(0, 7)))]) + value[i + 1:]
    hostile = data.draw(st.sampled_from(HOSTILE))
    if how == "insert":
        return value[:at] + hostile + value[at:]
    if how == "replace":
        return value[:at] + hostile + value[at + len(hostile):]
    return data.draw(st.binary(max_size=40))


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_records_of_random_schemas_read_as_fastavro_reads_them(data: st.DataObject) -> None:
    schema = data.draw(SCHEMAS)
    assert compile_reader(schema) is not None, "every type here is compiled, none falls back"
    named = schema.get("__named_schemas", {})
    for record in data.draw(st.lists(_values(schema, named), min_size=1, max_size=3)):
        value = _encode(schema, record)
        compiled, end = compile_reader(schema).read(value, 0)  # type: ignore[union-attr]
        assert end == len(value)
        assert repr(compiled) == repr(fastavro.schemaless_reader(io.BytesIO(value), schema))  # repr: nan == nan
        hostile = _mutated(data, value)
        assert repr(_worker(schema, hostile)) == repr(_fastavro(schema, hostile)), f"{hostile!r}"


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_projected_records_are_fastavros_restricted_to_the_fields_and_decided_alike(data: st.DataObject) -> None:
    """Skipped fields are still checked: truncated, hostile and invalid UTF-8 values get fastavro's
    decision, whichever fields are read."""
    schema = data.draw(SCHEMAS)
    named = schema.get("__named_schemas", {})
    fields = frozenset(data.draw(st.lists(st.sampled_from([f["name"] for f in schema["fields"]]), unique=True)))
    reader = compile_reader(schema, fields)
    assert reader is not None
    for record in data.draw(st.lists(_values(schema, named), min_size=1, max_size=3)):
        value = _encode(schema, record)
        projected, end = reader.read(value, 0)
        assert end == len(value)
        assert repr(projected) == repr(_only(fastavro.schemaless_reader(io.BytesIO(value), schema), fields))
        hostile = _mutated(data, value)
        assert repr(_worker(schema, hostile, fields)) == repr(_only(_fastavro(schema, hostile), fields)), hostile


ARRAYS = parse_schema({"type": "record", "name": "R", "fields": [
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "counts", "type": {"type": "map", "values": "long"}},
    {"name": "choice", "type": ["null", "string", "double"]},
    {"name": "nothing", "type": {"type": "array", "items": "null"}},
]})


@pytest.mark.parametrize(("name", "value"), [
    ("huge length", b"\x02\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01abc"),
    ("negative length", b"\x02\x01abc"),
    ("truncated varint", b"\x02\x06ab"),
    ("invalid UTF-8", b"\x02\x04\xc3\x28\x00\x00\x00\x00"),
    ("union index out of range", b"\x00\x00\x08"),
    ("absurd array block count", b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f\x02a"),
    ("absurd map block count", b"\x00\xfe\xff\xff\xff\xff\xff\xff\xff\x7f\x02a\x02"),
    ("negative block with a huge size", b"\x01\xfe\xff\xff\xff\x0f\x02a\x00\x00\x00\x00"),
])
@pytest.mark.parametrize("fields", [None, frozenset(), frozenset({"choice"}), frozenset({"tags", "nothing"})])
def test_hostile_values_get_fastavros_decision_and_a_reason(name: str, value: bytes,
                                                            fields: frozenset[str] | None) -> None:
    expected = _fastavro(ARRAYS, value)
    assert repr(_worker(ARRAYS, value, fields)) == repr(expected if fields is None else _only(expected, fields)), name
    if expected is None:  # the reason names the field where reading stopped, read or skipped
        with pytest.raises(DecodeError, match=r"^not a valid R Avro record \(at field '\w+"):
            PlainAvroDecoder(ARRAYS, fields=fields)(value, MESSAGE)


@pytest.mark.parametrize("fields", [None, frozenset()])
def test_an_absurd_count_of_items_that_take_no_bytes_is_refused_at_once(fields: frozenset[str] | None) -> None:
    """fastavro would append a None for each of the 2**62 items; the compiled reader refuses, also
    when it skips the field."""
    value = b"\x00\x00\x00" + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f" + b"\x00"
    started = time.perf_counter()
    with pytest.raises(DecodeError, match="field 'nothing\\[\\]': a block of 4611686018427387903 items"):
        PlainAvroDecoder(ARRAYS, fields=fields)(value, MESSAGE)
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize("fields", [None, frozenset()])
def test_an_absurd_count_of_fixed_items_is_decided_at_once(fields: frozenset[str] | None) -> None:
    """Reading a fixed value never indexes the bytes (a slice past the end is just short): the loop
    over 2**62 of them would run, appending, until memory ran out. fastavro stops at the end."""
    schema = parse_schema({"type": "record", "name": "F", "fields": [{"name": "ids", "type": {
        "type": "array", "items": {"type": "record", "name": "Id", "fields": [
            {"name": "v", "type": {"type": "fixed", "name": "V", "size": 2}}, {"name": "n", "type": "null"}]}}}]})
    value = b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f" + b"ab" * 3 + b"\x00"
    started = time.perf_counter()
    assert _worker(schema, value, fields) is None is _fastavro(schema, value)
    valid = _fastavro(schema, b"\x04abcd\x00")
    assert _worker(schema, b"\x04abcd\x00", fields) == (valid if fields is None else _only(valid, fields))
    assert time.perf_counter() - started < 1


SIZED = parse_schema({"type": "record", "name": "S", "fields": [
    {"name": "points", "type": {"type": "array", "items": {"type": "record", "name": "P", "fields": [
        {"name": "x", "type": "double"}, {"name": "y", "type": "float"}, {"name": "ok", "type": "boolean"}]}}},
    {"name": "id", "type": {"type": "fixed", "name": "Id", "size": 4}},
    {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B", "C"]}},
    {"name": "at", "type": "long"},
    {"name": "labels", "type": {"type": "map", "values": "string"}},
    {"name": "n", "type": "int"},
]})
POINT = b"\x00" * 12 + b"\x07"  # x, y, ok (any non-zero byte is True)


def _sized(points: bytes = b"\x02" + POINT + b"\x00", id_: bytes = b"abcd", kind: bytes = b"\x02",
           at: bytes = b"\x04", labels: bytes = b"\x02\x02k\x02v\x00", n: bytes = b"\x06") -> bytes:
    return points + id_ + kind + at + labels + n


@pytest.mark.parametrize(("name", "value"), [
    ("valid", _sized()),
    ("a block with its byte size", _sized(points=b"\x01\x1a" + POINT + b"\x00")),
    ("a block whose byte size lies", _sized(points=b"\x01\x00" + POINT + b"\x00")),  # fastavro ignores it too
    ("an absurd count of sized items", _sized(points=b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f" + POINT)),
    ("a truncated item", _sized(points=b"\x04" + POINT + b"\x00")),
    ("a short fixed", _sized(id_=b"abc")),
    ("enum index -1", _sized(kind=b"\x01")), ("enum index 3", _sized(kind=b"\x06")),
    ("a long of 11 bytes", _sized(at=b"\xff" * 10 + b"\x01")), ("a long of 10 bytes", _sized(at=b"\xff" * 9 + b"\x01")),
    ("a long of 3 bytes", _sized(at=b"\x80\x80\x01")), ("a truncated long", _sized(at=b"\x80", labels=b"", n=b"")),
    ("an invalid UTF-8 key", _sized(labels=b"\x02\x02\xff\x02v\x00")),
    ("an invalid UTF-8 value", _sized(labels=b"\x02\x02k\x04\xc3\x28\x00")),
    ("a non-ASCII value", _sized(labels=b"\x02\x02k\x04\xc3\xa9\x00")),
    ("a negative key length", _sized(labels=b"\x02\x03k\x02v\x00")),
    ("a truncated map", _sized(labels=b"\x02\x02k\x02", n=b"")),
])
@pytest.mark.parametrize("fields", [frozenset({"n"}), frozenset({"points", "labels"}), frozenset()])
def test_skipped_fields_get_fastavros_decision(name: str, value: bytes, fields: frozenset[str]) -> None:
    assert repr(_worker(SIZED, value, fields)) == repr(_only(_fastavro(SIZED, value), fields)), name


def test_a_recursive_record_is_skipped_and_checked() -> None:
    schema = parse_schema({"type": "record", "name": "Node", "fields": [
        {"name": "next", "type": ["null", "Node"]}, {"name": "label", "type": "string"}]})
    value = _encode(schema, {"next": {"next": {"next": None, "label": "c"}, "label": "b"}, "label": "a"})
    assert _worker(schema, value, frozenset({"label"})) == {"label": "a"}
    invalid = value.replace(b"c", b"\xff")
    assert _fastavro(schema, invalid) is None
    assert _worker(schema, invalid, frozenset({"label"})) is None


def test_a_projected_record_read_by_fastavro_has_the_projected_fields_only() -> None:
    """A value the compiled reader leaves to fastavro (a long beyond 10 bytes in a read field) comes
    back with the same fields as one it reads itself."""
    value = _sized(n=b"\xff" * 10 + b"\x01")
    assert _worker(SIZED, value, frozenset({"n", "kind"})) == {"kind": "B", "n": _fastavro(SIZED, value)["n"]}


def test_a_modest_count_of_items_that_take_no_bytes_reads_as_fastavro_reads_it() -> None:
    value = b"\x00\x00\x00" + b"\xc8\x01" + b"\x00"
    assert _worker(ARRAYS, value) == _fastavro(ARRAYS, value) == {"tags": [], "counts": {}, "choice": None,
                                                                 "nothing": [None] * 100}


def test_recursive_records_are_compiled() -> None:
    schema = parse_schema({"type": "record", "name": "Node", "fields": [
        {"name": "value", "type": "long"}, {"name": "next", "type": ["null", "Node"]}]})
    record = {"value": 1, "next": {"value": 2, "next": {"value": 3, "next": None}}}
    compiled = compile_reader(schema)
    assert compiled is not None
    assert compiled.read(_encode(schema, record), 0) == (record, len(_encode(schema, record)))


def test_decimals_and_other_logical_types_fall_back_to_fastavro() -> None:
    schema = parse_schema({"type": "record", "name": "Price", "fields": [
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}}]})
    assert compile_reader(schema) is None
    record = {"amount": fastavro.schemaless_reader(io.BytesIO(b"\x04\x01\x00"), schema)["amount"]}
    assert PlainAvroDecoder(schema)(_encode(schema, record), MESSAGE) == record


def _one(node: Any) -> Any:
    return parse_schema({"type": "record", "name": "One", "fields": [{"name": "f", "type": node}]})


@pytest.mark.parametrize(("node", "value"), [
    ("boolean", b"\x02"), ("boolean", b"\xff"),  # fastavro: any non-zero byte is True
    ("long", b"\xff" * 9 + b"\x7f"), ("long", b"\xfe" * 9 + b"\x03"),  # 10 bytes: fastavro keeps the low 64 bits
    ("long", b"\xff" * 12 + b"\x01"), ("int", b"\xfe\xff\xff\xff\x7f"),  # longer; an int beyond 32 bits
    ({"type": "enum", "name": "E", "symbols": ["A", "B"]}, b"\x01"),  # index -1: the last symbol
    ({"type": "enum", "name": "E", "symbols": ["A", "B"]}, b"\x05"), ({"type": "enum", "name": "E", "symbols": ["A"]},
                                                                      b"\x81\x01"),
    (["null", "int"], b"\x01\x02"), (["null", "int"], b"\x0a"), (["null", "int"], b"\x80\x01"),
    ("string", b"\x06\xed\xa0\x80"), ("string", b"\x81\x01"), ("bytes", b"\x80\x01" + b"x" * 64),
    ("long", b"\xff\x7f"), ("long", b"\xff\xff\x7f"), ("long", b"\x80"),  # two bytes, three, truncated
    ("long", b"\x80\x00"), ("long", b"\x80\x80\x00"), ("string", b"\x80\x00"),  # zeros written long
    ("string", b"\x80\x01" + b"x" * 64), ("string", b"\x80\x01" + b"x" * 63), ("string", b"\x80"),  # 2-byte
    ("bytes", b"\x83\x01x"),  # lengths: whole, short, truncated, negative
    ({"type": "map", "values": "int"}, b"\x04\x02a\x02\x02a\x04\x00"),  # a repeated key: the last one wins
])
def test_fastavros_quirks_are_kept(node: Any, value: bytes) -> None:
    schema = _one(node)
    assert repr(_worker(schema, value)) == repr(_fastavro(schema, value))
