"""Avro schema loading and introspection (field paths, types, compatibility).

The worker reads timestamps, dates and times as plain integers: fastavro would otherwise build
a ``datetime`` per field per event, which costs more than the rest of the decode and is
converted straight back to a number for the model or the output record.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

Schema = dict[str, Any]
TypeNode = Any  # str | dict | list, as fastavro's parsed schema has it

_INTEGER_LOGICAL = {
    "timestamp-millis", "timestamp-micros", "timestamp-nanos", "local-timestamp-millis",
    "local-timestamp-micros", "local-timestamp-nanos", "date", "time-millis", "time-micros",
}
NUMERIC = ("int", "long", "float", "double")
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


class SchemaError(ValueError):
    """A schema file cannot be read, or a path does not exist in a schema."""


def load_schema(path: Path) -> Schema:
    """Read and parse an .avsc file, with integer timestamps (see the module note)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SchemaError(f"cannot read schema file {path}: {exc.strerror or exc}") from exc
    try:
        return parse_schema(json.loads(text))
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path} is not JSON: {exc}") from exc
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from exc


def parse_schema(raw: Any, references: Sequence[Any] = ()) -> Schema:
    """A parsed record schema; ``references`` are the parsed JSON of the schemas whose named types
    it uses (Schema Registry references), each after the ones it uses in turn."""
    named: dict[str, Any] = {}
    try:
        for referenced in references:
            fastavro.parse_schema(_integer_times(referenced), named)
        parsed = fastavro.parse_schema(_integer_times(raw), named)
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise SchemaError(f"not a valid Avro schema: {exc}") from exc
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise SchemaError("the top-level Avro type must be a record")
    return dict(parsed)


def _integer_times(node: Any) -> Any:
    if isinstance(node, list):
        return [_integer_times(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _integer_times(v) for k, v in node.items() if k != "logicalType"}
    if node.get("logicalType") not in _INTEGER_LOGICAL and "logicalType" in node:
        out["logicalType"] = node["logicalType"]
    return out


def record_name(schema: Schema) -> str:
    return str(schema["name"]).rsplit(".", 1)[-1]


@dataclass(frozen=True)
class FieldType:
    """The type found at a field path: its non-null kind, and whether null can occur on the way."""

    node: TypeNode
    nullable: bool

    @property
    def kind(self) -> str:
        return kind_of(self.node)

    @property
    def symbols(self) -> list[str]:
        return list(self.node["symbols"]) if self.kind == "enum" else []

    def describe(self) -> str:
        return ("nullable " if self.nullable else "") + self.kind


def a_or_an(word: str) -> str:
    """``word`` after its indefinite article: "an int", "an array", "a nullable long"."""
    vowel = word[:1] in "aeiou" and not word.startswith("uint")
    return f"{'an' if vowel else 'a'} {word}"


def kind_of(node: TypeNode) -> str:
    """'int', 'string', 'enum', 'record', ... or 'union' for a union of several non-null types."""
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        branches = [b for b in node if b != "null"]
        return kind_of(branches[0]) if len(branches) == 1 else "union"
    return str(node["type"])


def _strip_null(node: TypeNode) -> tuple[TypeNode, bool]:
    if isinstance(node, list) and "null" in node:
        branches = [b for b in node if b != "null"]
        return (branches[0] if len(branches) == 1 else branches), True
    return node, False


def _named(schema: Schema, node: TypeNode) -> TypeNode:
    """Follow a reference to a named type (fastavro keeps later uses as bare names)."""
    if isinstance(node, str) and node not in PRIMITIVES:
        return schema.get("__named_schemas", {}).get(node, node)
    return node


def field_type(schema: Schema, path: str) -> FieldType:
    """The type at a dotted path such as ``user.id``; ``SchemaError`` names what exists instead."""
    node: TypeNode = schema
    nullable = False
    walked: list[str] = []
    for part in path.split("."):
        node, maybe_null = _strip_null(_named(schema, node))
        nullable = nullable or maybe_null
        if kind_of(node) != "record":
            raise SchemaError(f"'{'.'.join(walked)}' is {a_or_an(kind_of(node))}, it has no field '{part}'")
        fields = {f["name"]: f for f in node["fields"]}
        if part not in fields:
            where = ".".join(walked) or record_name(schema)
            raise SchemaError(f"no field '{part}' in {where} (it has: {', '.join(fields)})")
        node = fields[part]["type"]
        walked.append(part)
    node, maybe_null = _strip_null(_named(schema, node))
    return FieldType(node, nullable or maybe_null)


def top_fields(schema: Schema) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in schema["fields"]}


def assignable(source: FieldType, target: TypeNode) -> str | None:
    """Why a value of ``source`` cannot be written to an Avro field of type ``target``, or None."""
    target_plain, target_nullable = _strip_null(target)
    if source.nullable and not target_nullable:
        return f"the source is nullable ({source.describe()}) but the output field does not allow null"
    return kind_assignable(source.kind, kind_of(target_plain), source.symbols, target_plain)


_PROMOTIONS = {"int": {"int", "long", "float", "double"}, "long": {"long", "float", "double"},
               "float": {"float", "double"}, "double": {"double", "float"},
               "string": {"string", "bytes"}, "bytes": {"bytes", "string"}, "boolean": {"boolean"},
               "enum": {"enum", "string"}}


def kind_assignable(kind: str, target_kind: str, symbols: list[str], target: TypeNode) -> str | None:
    if target_kind == "union":
        return None  # fastavro picks the branch at write time; checked per event
    if target_kind == "enum" and kind == "enum":
        missing = sorted(set(symbols) - set(target["symbols"]))
        return f"enum symbols {missing} are not in the output enum" if missing else None
    if target_kind in _PROMOTIONS.get(kind, {kind}):
        return None
    return f"{a_or_an(kind)} cannot be written as {target_kind}"
