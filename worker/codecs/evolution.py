"""Schema evolution: whether data written with one Avro schema can be read with another.

fastavro resolves a writer schema to a reader schema while it reads, so a mismatch surfaces only
when an event reaches it, and sometimes not at all (a reader field without a default comes out
unset). The Schema Registry decoder therefore checks each writer schema once, with the Avro
specification's resolution rules, and either reads its events or dead-letters them with the reason.

The rules (Avro 1.11, "Schema Resolution"): records match by unqualified name or a reader alias,
their fields by name or a reader field's alias; a writer field the reader lacks is skipped, a reader
field the writer lacks needs a default. int promotes to long, float and double; long to float and
double; float to double; string and bytes to each other. An enum's writer symbols must be known to
the reader unless the reader's enum has a default; fixed types need the same size. Every branch
of a writer union must resolve, and a non-union writer must resolve to some branch of a reader union.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import fastavro.schema

from worker.codecs.schemas import PRIMITIVES, Schema, TypeNode, a_or_an

_PROMOTIONS = {"int": {"long", "float", "double"}, "long": {"float", "double"}, "float": {"double"},
               "string": {"bytes"}, "bytes": {"string"}}


def same_shape(writer: Schema, reader: Schema) -> bool:
    """Whether the two schemas read the same bytes the same way (equal Parsing Canonical Forms):
    then the reader schema reads the data alone, without resolution."""
    return bool(fastavro.schema.to_parsing_canonical_form(writer) == fastavro.schema.to_parsing_canonical_form(reader))


def incompatibility(writer: Schema, reader: Schema) -> str | None:
    """Why data written with ``writer`` cannot be read with ``reader``, or None if it can."""
    return _Resolution(writer.get("__named_schemas", {}), reader.get("__named_schemas", {})).check(writer, reader, "")


@dataclass
class _Resolution:
    writer_named: dict[str, Any]
    reader_named: dict[str, Any]
    visiting: set[tuple[str, str]] = field(default_factory=set)  # record pairs being checked (recursive types)

    def check(self, writer: TypeNode, reader: TypeNode, path: str) -> str | None:
        w, r = _follow(self.writer_named, writer), _follow(self.reader_named, reader)
        if isinstance(w, list):
            return next(filter(None, (self.check(branch, r, path) for branch in w)), None)
        if isinstance(r, list):
            return self._reader_union(w, r, path)
        w_kind, r_kind = _kind(w), _kind(r)
        if w_kind == r_kind:
            return self._same_kind(w_kind, w, r, path)
        if r_kind in _PROMOTIONS.get(w_kind, ()):
            return None
        return f"{_where(path)} is written as {_describe(w)}, the reader expects {_describe(r)}"

    def _reader_union(self, w: TypeNode, r: list[TypeNode], path: str) -> str | None:
        if any(self.check(w, branch, path) is None for branch in r):
            return None
        kinds = ", ".join(_describe(_follow(self.reader_named, b)) for b in r)
        return f"{_where(path)} is written as {_describe(w)}, which is none of the reader's union ({kinds})"

    def _same_kind(self, kind: str, w: TypeNode, r: TypeNode, path: str) -> str | None:
        if kind in ("record", "enum", "fixed") and not _names_match(w, r):
            return f"{_where(path)} is written as {_describe(w)}, the reader expects {_describe(r)}"
        if kind == "record":
            return self._record(w, r, path)
        if kind == "enum":
            unknown = [s for s in w["symbols"] if s not in r["symbols"]]
            if unknown and "default" not in r:
                return f"{_where(path)}: the writer's symbols {unknown} are not in the reader's enum {r['name']}"
        if kind == "fixed" and w["size"] != r["size"]:
            return f"{_where(path)}: fixed {w['name']} is {w['size']} bytes written, {r['size']} read"
        if kind == "array":
            return self.check(w["items"], r["items"], f"{path}[]")
        if kind == "map":
            return self.check(w["values"], r["values"], f"{path}{{}}")
        return None

    def _record(self, w: dict[str, Any], r: dict[str, Any], path: str) -> str | None:
        pair = (w["name"], r["name"])
        if pair in self.visiting:
            return None  # a recursive type: this pair is being checked further up
        self.visiting.add(pair)
        try:
            written = {f["name"]: f for f in w["fields"]}
            for reader_field in r["fields"]:
                problem = self._field(written, reader_field, f"{path}.{reader_field['name']}".lstrip("."))
                if problem:
                    return problem
            return None
        finally:
            self.visiting.discard(pair)

    def _field(self, written: dict[str, Any], reader_field: dict[str, Any], path: str) -> str | None:
        names = [reader_field["name"], *reader_field.get("aliases", [])]
        writer_field = next((written[n] for n in names if n in written), None)
        if writer_field is not None:
            return self.check(writer_field["type"], reader_field["type"], path)
        if "default" in reader_field:
            return None
        return f"{_where(path)} is not in the writer's schema and the reader gives it no default"


def _follow(named: dict[str, Any], node: TypeNode) -> TypeNode:
    """A named type's definition in place of its name (fastavro keeps later uses as bare names)."""
    if isinstance(node, str) and node not in PRIMITIVES:
        return named.get(node, node)
    return node


def _kind(node: TypeNode) -> str:
    if isinstance(node, dict):
        return str(node["type"]) if isinstance(node["type"], str) else _kind(node["type"])
    return str(node)


def _names_match(w: dict[str, Any], r: dict[str, Any]) -> bool:
    unqualified = str(w["name"]).rsplit(".", 1)[-1]
    aliases = set(r.get("aliases", []))
    return unqualified == str(r["name"]).rsplit(".", 1)[-1] or w["name"] in aliases or unqualified in aliases


def _describe(node: TypeNode) -> str:
    if isinstance(node, list):
        return "a union"
    kind = _kind(node)
    if kind in ("record", "enum", "fixed"):
        return f"{a_or_an(kind)} {node['name']}"
    return a_or_an(kind)


def _where(path: str) -> str:
    return f"field '{path}'" if path else "the record"
