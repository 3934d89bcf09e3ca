"""Schema resolution checked ahead of reading: every verdict is checked against fastavro reading the
data (compatible: it reads; incompatible: the reason names the field and the mismatch)."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest

from worker.codecs.evolution import incompatibility, same_shape
from worker.codecs.schemas import parse_schema


def record(*fields: dict[str, Any], name: str = "R", **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


def f(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


COLOR = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}
NODE = record(f("value", "int"), f("next", ["null", "Node"], default=None), name="Node")

COMPATIBLE = {  # writer, reader, a record written with the writer, what the reader reads
    "int to long": (record(f("a", "int")), record(f("a", "long")), {"a": 1}, {"a": 1}),
    "long to double": (record(f("a", "long")), record(f("a", "double")), {"a": 2}, {"a": 2.0}),
    "string to bytes": (record(f("a", "string")), record(f("a", "bytes")), {"a": "x"}, {"a": b"x"}),
    "field added with a default": (record(f("a", "int")), record(f("a", "int"), f("b", "string", default="d")),
                                   {"a": 1}, {"a": 1, "b": "d"}),
    "field removed": (record(f("a", "int"), f("b", "string")), record(f("a", "int")), {"a": 1, "b": "x"}, {"a": 1}),
    "field renamed with an alias": (record(f("old", "int")), record(f("new", "int", aliases=["old"])),
                                    {"old": 4}, {"new": 4}),
    "record renamed with an alias": (record(f("a", "int"), name="Old"), record(f("a", "int"), name="New",
                                                                               aliases=["Old"]), {"a": 1}, {"a": 1}),
    "into a nullable union": (record(f("a", "double")), record(f("a", ["null", "double"])), {"a": 1.5}, {"a": 1.5}),
    "enum symbols added": (record(f("c", COLOR)), record(f("c", {**COLOR, "symbols": ["RED", "GREEN", "BLUE"]})),
                           {"c": "RED"}, {"c": "RED"}),
    "enum symbol removed, reader default": (
        record(f("c", COLOR)), record(f("c", {**COLOR, "symbols": ["RED", "OTHER"], "default": "OTHER"})),
        {"c": "GREEN"}, {"c": "OTHER"}),
    "array items promoted": (record(f("xs", {"type": "array", "items": "int"})),
                             record(f("xs", {"type": "array", "items": "long"})), {"xs": [1, 2]}, {"xs": [1, 2]}),
    "recursive type": (NODE, NODE, {"value": 1, "next": {"value": 2, "next": None}},
                       {"value": 1, "next": {"value": 2, "next": None}}),
}

INCOMPATIBLE = {  # writer, reader, the reason
    "type changed": (record(f("a", "string")), record(f("a", "double")),
                     "field 'a' is written as a string, the reader expects a double"),
    "no promotion back": (record(f("a", "long")), record(f("a", "int")),
                          "field 'a' is written as a long, the reader expects an int"),
    "required field added": (record(f("a", "int")), record(f("a", "int"), f("b", "int")),
                             "field 'b' is not in the writer's schema and the reader gives it no default"),
    "nullable writer, required reader": (record(f("a", ["null", "int"])), record(f("a", "int")),
                                         "field 'a' is written as a null, the reader expects an int"),
    "not in the reader's union": (record(f("a", "boolean")), record(f("a", ["null", "string"])),
                                  "field 'a' is written as a boolean, which is none of the reader's union "
                                  "(a null, a string)"),
    "enum symbol unknown": (record(f("c", COLOR)), record(f("c", {**COLOR, "symbols": ["RED"]})),
                            "field 'c': the writer's symbols ['GREEN'] are not in the reader's enum Color"),
    "fixed size": (record(f("h", {"type": "fixed", "name": "H", "size": 4})),
                   record(f("h", {"type": "fixed", "name": "H", "size": 8})),
                   "field 'h': fixed H is 4 bytes written, 8 read"),
    "nested record field": (record(f("u", record(f("id", "string"), name="U"))),
                            record(f("u", record(f("id", "int"), name="U"))),
                            "field 'u.id' is written as a string, the reader expects an int"),
    "record renamed": (record(f("a", "int"), name="Old"), record(f("a", "int"), name="New"),
                       "the record is written as a record Old, the reader expects a record New"),
    "map values": (record(f("m", {"type": "map", "values": "string"})),
                   record(f("m", {"type": "map", "values": "int"})),
                   "field 'm{}' is written as a string, the reader expects an int"),
}


@pytest.mark.parametrize(("writer", "reader", "written", "read"), COMPATIBLE.values(), ids=COMPATIBLE.keys())
def test_compatible_writers_are_read_by_fastavro(writer: dict[str, Any], reader: dict[str, Any],
                                                 written: dict[str, Any], read: dict[str, Any]) -> None:
    w, r = parse_schema(writer), parse_schema(reader)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, w, written)

    assert incompatibility(w, r) is None
    assert fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), w, r) == read


@pytest.mark.parametrize(("writer", "reader", "reason"), INCOMPATIBLE.values(), ids=INCOMPATIBLE.keys())
def test_incompatible_writers_are_named(writer: dict[str, Any], reader: dict[str, Any], reason: str) -> None:
    assert incompatibility(parse_schema(writer), parse_schema(reader)) == reason


def test_same_shape_ignores_docs_and_defaults_but_not_types() -> None:
    plain = parse_schema(record(f("a", "int")))

    assert same_shape(parse_schema(record(f("a", "int", doc="d", default=0), doc="x")), plain)
    assert not same_shape(parse_schema(record(f("a", "long"))), plain)
    assert not same_shape(parse_schema(record(f("b", "int"))), plain)
