"""Avro binary writers compiled from a record schema.

fastavro's generic writer walks the schema for every record; for the flat records a
prediction usually is, a function generated once per schema (one ``b"".join`` of the
fields' encodings) writes the same bytes in about half the time. Supported: null, boolean,
int, long, float, double, string, bytes, enum, fixed, nested records, arrays and maps (one
block, as fastavro writes them: a prediction's reasons and contributions), and unions of null
with one other type. Anything else (wider unions, decimals) makes ``compile_writer`` return
None and the caller keeps fastavro. Byte equality with fastavro is property-tested.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from worker.codecs.codegen import Namespace
from worker.codecs.schemas import Schema, TypeNode

Writer = Callable[[dict[str, Any]], bytes]
_SMALL = 1 << 14


@lru_cache(maxsize=4096)  # large values repeat within a batch (timestamps, versions)
def encode_long(n: int) -> bytes:
    """Avro's zigzag varint."""
    if not -(1 << 63) <= n < 1 << 63:  # zigzag would wrap silently and write another number
        raise OverflowError(f"{n} does not fit an Avro long")
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_VARINTS = [encode_long(i) for i in range(_SMALL)]


def _long(n: int) -> bytes:
    return _VARINTS[n] if 0 <= n < _SMALL else encode_long(n)  # a float fails either way


def _string(s: str) -> bytes:
    b = s.encode()
    return _long(len(b)) + b


def _bytes(b: bytes) -> bytes:
    return _long(len(b)) + b


def _null(v: Any) -> bytes:
    if v is not None:
        raise TypeError(f"expected null, got {type(v).__name__}")
    return b""


def _boolean(v: Any) -> bytes:
    return b"\x01" if v else b"\x00"


_PRIMITIVES: dict[str, Callable[[Any], bytes]] = {
    "null": _null, "boolean": _boolean, "int": _long, "long": _long, "float": struct.Struct("<f").pack,
    "double": struct.Struct("<d").pack, "string": _string, "bytes": _bytes,
}


class _Unsupported(Exception):
    pass


class _Gen(Namespace):
    """Builds ``write(record)``: statements binding each field, then one join of their parts."""

    def __init__(self, schema: Schema) -> None:
        self.named = schema.get("__named_schemas", {})
        self.lines: list[str] = []
        self.parts: list[str] = []
        super().__init__(_PRIMITIVES)

    def record(self, node: dict[str, Any], source: str) -> None:
        for field in node["fields"]:
            v = self.fresh("v")
            if "default" in field:
                self.lines.append(f"{v} = {source}.get({field['name']!r}, {self.constant(field['default'])})")
            else:
                self.lines.append(f"{v} = {source}[{field['name']!r}]")
            self.inline(field["type"], v)

    def inline(self, node: TypeNode, v: str) -> None:
        node = self.resolve(node)
        if node == "string":
            b = self.fresh("b")
            self.lines.append(f"{b} = {v}.encode()")
            self.parts += [f"long(len({b}))", b]
        elif isinstance(node, dict) and node["type"] == "record":
            self.record(node, v)
        else:
            self.parts.append(f"{self.function(node)}({v})")

    def resolve(self, node: TypeNode) -> TypeNode:
        node = self.named.get(node, node) if isinstance(node, str) else node
        if isinstance(node, dict) and node.get("logicalType"):
            raise _Unsupported(node["logicalType"])
        if isinstance(node, dict) and node["type"] in _PRIMITIVES:
            return node["type"]
        return node

    def function(self, node: TypeNode) -> str:
        """The name of a function writing one value of ``node``."""
        node = self.resolve(node)
        if isinstance(node, str):
            if node not in _PRIMITIVES:
                raise _Unsupported(node)
            return node
        if isinstance(node, list):
            return self.constant(_union(node, self))
        kind = node["type"]
        if kind == "enum":
            return self.constant({s: _long(i) for i, s in enumerate(node["symbols"])}.__getitem__)
        if kind == "fixed":
            return self.constant(_fixed(node["size"]))
        if kind == "record":
            return self.constant(_compile({**node, "__named_schemas": self.named}))
        if kind == "array":
            return self.constant(_array(self.names[self.function(node["items"])]))
        if kind == "map":
            return self.constant(_map(self.names[self.function(node["values"])]))
        raise _Unsupported(kind)


def _union(branches: list[TypeNode], gen: _Gen) -> Callable[[Any], bytes]:
    if len(branches) != 2 or "null" not in branches:
        raise _Unsupported("union")
    null_at = branches.index("null")
    tag_null, tag_other = _long(null_at), _long(1 - null_at)
    other = gen.names[gen.function(branches[1 - null_at])]

    def write(v: Any) -> bytes:
        return tag_null if v is None else tag_other + other(v)

    return write


def _array(item: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """One block (its count, the items) and the closing 0; an empty array is the 0 alone."""
    def write(v: Any) -> bytes:
        return b"".join((_long(len(v)), *map(item, v), b"\x00")) if v else b"\x00"

    return write


def _map(value: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    def write(v: Any) -> bytes:
        if not v:
            return b"\x00"
        return b"".join((_long(len(v)), *(_string(k) + value(x) for k, x in v.items()), b"\x00"))

    return write


def _fixed(size: int) -> Callable[[bytes], bytes]:
    def write(v: bytes) -> bytes:
        if len(v) != size:
            raise ValueError(f"fixed of size {size} given {len(v)} bytes")
        return v

    return write


def _compile(schema: Schema) -> Writer:
    gen = _Gen(schema)
    gen.record(schema, "record")
    body = "".join(f"    {line}\n" for line in gen.lines)
    source = f"def write(record):\n{body}    return b''.join(({', '.join(gen.parts)},))\n"
    writer: Writer = gen.define(source, f"<avro writer {schema.get('name')}>", "write")
    return writer


ColumnWriter = Callable[[Mapping[str, Sequence[Any]]], list[bytes]]


def _compile_columns(schema: Schema, prefix: bytes) -> ColumnWriter:
    """``write_columns(columns)``: every row's bytes from one sequence per top-level field, in a single
    loop; no per-row dict is built or looked up. A field the columns lack takes its default."""
    gen = _Gen(schema)
    loop_vars, sources = [], []
    for field in schema["fields"]:
        v = gen.fresh("v")
        loop_vars.append(v)
        name = field["name"]
        sources.append(f"(columns[{name!r}] if {name!r} in columns else [{gen.constant(field['default'])}] * n)"
                       if "default" in field else f"columns[{name!r}]")
        gen.inline(field["type"], v)
    body = "".join(f"        {line}\n" for line in gen.lines)
    parts = ", ".join([gen.constant(prefix), *gen.parts] if prefix else gen.parts)
    source = (f"def write_columns(columns):\n    n = len(next(iter(columns.values()), ()))\n    out = []\n"
              f"    append = out.append\n    for {', '.join(loop_vars)}, in zip({', '.join(sources)}, strict=True):\n"
              f"{body}        append(b''.join(({parts},)))\n    return out\n")
    writer: ColumnWriter = gen.define(source, f"<avro column writer {schema.get('name')}>", "write_columns")
    return writer


def compile_column_writer(schema: Schema, prefix: bytes = b"") -> ColumnWriter | None:
    """A function writing a batch given as columns (``{field: values}``) as Avro binary, each value
    after ``prefix`` (a framing header), or None if the schema needs fastavro. The bytes are those
    of ``compile_writer`` on the rows as dicts (property-tested); any error means "write the rows one
    by one", which names the row and the field."""
    try:
        return _compile_columns(schema, prefix)
    except _Unsupported:
        return None


def compile_writer(schema: Schema) -> Writer | None:
    """A function writing a record dict as Avro binary, or None if the schema needs fastavro."""
    try:
        return _compile(schema)
    except _Unsupported:
        return None
