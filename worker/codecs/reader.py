"""Avro binary readers compiled from a record schema, the decoding twin of ``writer``.

fastavro's reader walks the schema for every record and reads through a file object; a function
generated once per schema reads the fields straight from the ``bytes`` with an index, each
one-byte varint through a table and each two-byte one in line, and builds the record dict in one
literal. The dicts are the ones fastavro builds (same keys, order and values), which a property
test checks on random records of random schemas.

With ``fields`` (projection) only those top-level fields are built, and the record holds only
them; the others are read past: strings and bytes by their length, values of one size (doubles,
fixed, records of such) by that size, varints to their last byte, unions by branch, arrays and maps
item by item. A block's byte size is not used to jump over it: fastavro ignores it and reads the
items, so a jump would leave unchecked items fastavro could refuse (and a size that lies would
land elsewhere). Skipping refuses what reading refuses (below), a string included: it must be
valid UTF-8 (checked as ASCII first, which costs less than decoding it).

On the fraud workload's events it decodes in 2.3 µs per event against fastavro's 3.8, and in
2.0 with the fields the fraud config reads (all but currency, channel and event_time); 2.8-2.9
before two-byte varints were read in line (``python -m bench.decode``, CPU time, best of 5, load
1.3-2.4). The contract check went from 16.6k-22.8k to 23.6k-25.0k events/s with the first
version of this reader (3 alternating runs each, load 2.3-4.3).

The generated code reads well-formed data only. Anything unusual (a truncated value, a negative
length, a union or enum index it does not expect, a varint longer than 10 bytes, invalid UTF-8)
raises, and the caller reads the value again with fastavro, whose decision (and message) stands:
the dead-letter decisions stay fastavro's, at no cost to the valid events. One exception is final
(``ReadRefused``): an array of items that take no bytes (nulls, empty records) with a block count
beyond any real array, which fastavro would build item by item for as long as the count says.

Supported: null, boolean, int, long, float, double, string, bytes, enum, fixed, records (nested
and recursive), arrays, maps and unions. Logical types other than the integer times the worker
reads as numbers (decimal, uuid, ...) make ``compile_reader`` return None: fastavro reads those.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from worker.codecs.codegen import Namespace
from worker.codecs.schemas import PRIMITIVES, Schema, TypeNode

Read = Callable[[bytes, int], tuple[dict[str, Any], int]]

_FILENAME = "<avro reader>"
_MASK64 = (1 << 64) - 1
# One-byte varints (most integers, lengths and counts) are read through a table; None is "read it in full".
_LONG = tuple((x >> 1) ^ -(x & 1) for x in range(128)) + (None,) * 128
_LENGTH = tuple(x >> 1 if x % 2 == 0 else None for x in range(128)) + (None,) * 128
_SIZES = {"null": 0, "boolean": 1, "float": 4, "double": 8}  # bytes a value takes; the others vary
_MAX_EMPTY_ITEMS = 1 << 20  # a block count of zero-byte items beyond this is hostile, never data
# A two-byte varint in line, once its first byte missed the table and its second is read into v: when it
# ends there (a length also must not be negative: the first byte even), the value, and else the call.
_TWO_BYTES = {
    "LONG": ("{v} < 128", "{v} = b[p] - 128 + ({v} << 7); {v} = ({v} >> 1) ^ -({v} & 1)",
             "varint3(b, p, b[p] - 128 + (({v} - 128) << 7))"),  # a long of more: from its third byte on
    "LENGTH": ("{v} < 128 and b[p] & 129 == 128", "{v} = (b[p] >> 1) - 64 + ({v} << 6)", "length(b, p)"),
}


class ReadRefused(Exception):
    """A value refused by the compiled reader itself (fastavro would not finish reading it)."""


class _Unsupported(Exception):
    pass


def _unrolled_varint(first: int) -> Callable[..., tuple[int, int]]:
    """A varint read one byte after another with no loop (a 6-byte long in 0.54 µs, 0.76 with a
    loop): ``varint(b, p)`` from its first byte, or with ``first`` > 0 ``varint(b, p, n)`` from byte
    ``first`` with ``n`` the value of the bytes before it (which the caller has read already).
    fastavro keeps the low 64 bits of a 10-byte varint (so do we); a longer one is left to fastavro
    (``IndexError`` also means truncated: fastavro decides)."""
    lines = ["def varint(b, p, n):" if first else "def varint(b, p):\n    n = 0"]
    for i in range(first, 10):
        wrap = " n &= MASK;" if i == 9 else ""  # only the tenth byte reaches past bit 63
        lines += [f"    x = b[p + {i}]; n |= (x & 127) << {7 * i}",
                  f"    if x < 128:{wrap} return (n >> 1) ^ -(n & 1), p + {i + 1}"]
    lines.append("    raise ValueError('a varint of more than 10 bytes')")
    namespace: dict[str, Any] = {"MASK": _MASK64}
    exec(compile("\n".join(lines), "<avro varint>", "exec"), namespace)
    return namespace["varint"]  # type: ignore[no-any-return]


_varint = _unrolled_varint(0)
_varint_from_third = _unrolled_varint(2)


def _length(b: bytes, p: int) -> tuple[int, int]:
    """A string's or bytes' length; a negative one is refused here, as it would move ``p`` backwards."""
    n, p = _varint(b, p)
    if n < 0:
        raise EOFError(f"a negative length ({n})")
    return n, p


def _enum_reader(symbols: list[str]) -> Callable[[bytes, int], tuple[str, int]]:
    def read(b: bytes, p: int) -> tuple[str, int]:
        i, p = _varint(b, p)
        return symbols[i], p  # an IndexError as fastavro's

    return read


def _refuse_empty_items(count: int, path: str) -> None:
    if count > _MAX_EMPTY_ITEMS:
        raise ReadRefused(f"field '{path}': a block of {count} items that take no bytes is not a real array")


_BUILTINS: dict[str, Any] = {
    "LONG": _LONG, "LENGTH": _LENGTH, "varint": _varint, "varint3": _varint_from_third, "length": _length,
    "refuse_empty": _refuse_empty_items, "SKIP_VARINT": re.compile(rb"[\x80-\xff]{0,9}[\x00-\x7f]").match,
    "F": struct.Struct("<f").unpack_from, "D": struct.Struct("<d").unpack_from,
}


@dataclass(frozen=True)
class CompiledReader:
    """``read(value, start)`` returns the record and where it ends; ``field_at`` names the field
    being read when an exception was raised from ``read`` (for the dead letter's reason)."""

    read: Read
    fields_by_line: dict[int, str]

    def field_at(self, exc: BaseException) -> str | None:
        tb: TracebackType | None = exc.__traceback__
        line = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == _FILENAME:
                line = tb.tb_lineno
            tb = tb.tb_next
        return self.fields_by_line.get(line) if line is not None else None


class _Function:
    """The lines of one generated function, each with the field path it reads."""

    def __init__(self, header: str) -> None:
        self.lines: list[tuple[str, str]] = [(header, "")]

    def emit(self, line: str, indent: int, path: str) -> None:
        self.lines.append(("    " * indent + line, path))


class _Gen(Namespace):
    """Generates ``read(b, p)``; a recursive record type becomes a function of its own."""

    def __init__(self, schema: Schema) -> None:
        self.named: dict[str, Any] = schema.get("__named_schemas", {})
        super().__init__(_BUILTINS)
        self.functions: list[_Function] = []
        self.record_functions: dict[tuple[str, str], str] = {}
        self.stack: list[str] = []
        self.fn = _Function("def read(b, p):")

    def emit(self, line: str, indent: int, path: str) -> None:
        self.fn.emit(line, indent, path)

    def resolve(self, node: TypeNode) -> TypeNode:
        node = self.named.get(node, node) if isinstance(node, str) and node not in PRIMITIVES else node
        if isinstance(node, dict) and node.get("logicalType"):
            raise _Unsupported(node["logicalType"])
        if isinstance(node, dict) and node["type"] in PRIMITIVES:
            return node["type"]
        return node

    def value(self, node: TypeNode, var: str, indent: int, path: str) -> None:
        """Lines that read one value of ``node`` at ``p`` into ``var`` and move ``p`` past it."""
        node = self.resolve(node)
        if isinstance(node, list):
            self.union(node, var, indent, path)
        elif isinstance(node, str):
            self.primitive(node, var, indent, path)
        else:
            getattr(self, f"kind_{node['type']}", self.unsupported)(node, var, indent, path)

    def unsupported(self, node: dict[str, Any], var: str, indent: int, path: str) -> None:
        raise _Unsupported(str(node["type"]))

    def long(self, var: str, indent: int, path: str, table: str = "LONG", slow: str = "varint") -> None:
        """A varint through ``table`` (one-byte values; None for the rest, read by ``slow``). A two-byte
        long or length (an mcc, a string of 64 to 8191 bytes) is read in line: a call costs more."""
        self.emit(f"{var} = {table}[b[p]]", indent, path)
        two = _TWO_BYTES.get(table)
        if two is None:
            self.emit(f"if {var} is None: {var}, p = {slow}(b, p)", indent, path)
        else:
            self.emit(f"if {var} is None:", indent, path)
            self.emit(f"{var} = b[p + 1]", indent + 1, path)  # truncated: IndexError, fastavro decides
            self.emit(f"if {two[0].format(v=var)}: {two[1].format(v=var)}; p += 2", indent + 1, path)
            self.emit(f"else: {var}, p = {two[2].format(v=var)}", indent + 1, path)
        self.emit("else: p += 1", indent, path)

    def primitive(self, kind: str, var: str, indent: int, path: str) -> None:
        if kind in ("int", "long"):
            self.long(var, indent, path)
        elif kind in ("string", "bytes"):
            # Not checked against the end: a short slice leaves p past it, which every later read and
            # the caller's final check refuse; a negative length never gets here (see _length).
            self.long(var, indent, path, "LENGTH", "length")
            self.emit(f"e = p + {var}; {var} = b[p:e]{'.decode()' if kind == 'string' else ''}; p = e", indent, path)
        elif kind in ("float", "double"):
            self.emit(f"{var} = {kind[0].upper()}(b, p)[0]; p += {4 if kind == 'float' else 8}", indent, path)
        elif kind == "boolean":
            self.emit(f"{var} = b[p] != 0; p += 1", indent, path)  # fastavro reads any non-zero byte as True
        elif kind == "null":
            self.emit(f"{var} = None", indent, path)
        else:
            raise _Unsupported(kind)

    def union(self, branches: list[TypeNode], var: str, indent: int, path: str) -> None:
        self.branches(branches, indent, path, lambda branch: self.value(branch, var, indent + 1, path))

    def branches(self, branches: list[TypeNode], indent: int, path: str, body: Callable[[TypeNode], None]) -> None:
        """A union: the lines ``body`` emits for the branch its index picks (``pass`` where it emits none)."""
        tag = self.fresh("t")
        self.emit(f"{tag} = b[p]; p += 1", indent, path)
        for i, branch in enumerate(branches):
            self.emit(f"{'if' if i == 0 else 'elif'} {tag} == {2 * i}:", indent, path)  # zigzag of index i
            emitted = len(self.fn.lines)
            body(branch)
            if len(self.fn.lines) == emitted:
                self.emit("pass", indent + 1, path)
        self.emit(f"else: raise IndexError('union index ' + str({tag}))", indent, path)

    def kind_enum(self, node: dict[str, Any], var: str, indent: int, path: str) -> None:
        symbols = list(node["symbols"])
        table: list[str | None] = [None] * 256
        for i in range(-len(symbols), len(symbols)):  # indexed as fastavro does: -1 is the last symbol
            if -64 <= i < 64:
                table[(i << 1) ^ (i >> 63)] = symbols[i]
        self.long(var, indent, path, self.constant(tuple(table)), self.constant(_enum_reader(symbols)))

    def kind_fixed(self, node: dict[str, Any], var: str, indent: int, path: str) -> None:
        self.emit(f"e = p + {int(node['size'])}; {var} = b[p:e]; p = e", indent, path)

    def kind_record(self, node: dict[str, Any], var: str, indent: int, path: str,
                    only: AbstractSet[str] | None = None) -> None:
        """A record into ``var``; with ``only``, its other fields are skipped and left out of it."""
        if node["name"] in self.stack:
            self.emit(f"{var}, p = {self.function(node, 'R', 'r, p')}(b, p)", indent, path)
            return
        self.stack.append(node["name"])
        items = []
        for field in node["fields"]:
            name, where = field["name"], f"{path}.{field['name']}".lstrip(".")
            if only is not None and name not in only:
                self.skip(field["type"], indent, where)
                continue
            v = self.fresh("v")
            self.value(field["type"], v, indent, where)
            items.append(f"{name!r}: {v}")
        self.stack.pop()
        self.emit(f"{var} = {{{', '.join(items)}}}", indent, path)

    def function(self, node: dict[str, Any], kind: str, returns: str) -> str:
        """The name of a function reading (``kind`` R) or skipping (S) one ``node`` record and returning
        ``returns``, generated on first use: a recursive type calls it for its own kind."""
        key = (kind, str(node["name"]))
        if key not in self.record_functions:
            self.record_functions[key] = fn = self.fresh(kind)
            outer, outer_stack = self.fn, self.stack
            self.fn, self.stack = _Function(f"def {fn}(b, p):"), []
            if kind == "R":
                self.kind_record(node, "r", 1, key[1])
            else:
                self.skip_record(node, 1, key[1])
            self.emit(f"return {returns}", 1, key[1])
            self.functions.append(self.fn)
            self.fn, self.stack = outer, outer_stack
        return self.record_functions[key]

    def blocks(self, count: str, indent: int, path: str) -> None:
        """The loop header over Avro blocks: a negative count is followed by the block's byte size."""
        self.long(count, indent, path)
        self.emit(f"while {count}:", indent, path)
        self.emit(f"if {count} < 0:", indent + 1, path)
        self.emit(f"{count} = -{count}", indent + 2, path)
        self.long("_", indent + 2, path)

    def kind_array(self, node: dict[str, Any], var: str, indent: int, path: str) -> None:
        count, item, path = self.fresh("c"), self.fresh("i"), f"{path}[]"
        self.emit(f"{var} = []", indent, path)
        self.blocks(count, indent, path)
        if not self.takes_bytes(node["items"], set()):
            self.emit(f"refuse_empty({count}, {path!r})", indent + 1, path)
        if size := self.size(node["items"], set()):
            # Fixed values are sliced, never indexed: past the end they are short, not refused, and the
            # loop would go on appending for as long as the count says. Items that cannot fit go to fastavro.
            self.emit(f"if p + {count} * {size} > len(b): raise EOFError('{path}: more items than bytes')",
                      indent + 1, path)
        self.emit(f"for _ in range({count}):", indent + 1, path)
        self.value(node["items"], item, indent + 2, path)
        self.emit(f"{var}.append({item})", indent + 2, path)
        self.long(count, indent + 1, path)

    def kind_map(self, node: dict[str, Any], var: str, indent: int, path: str) -> None:
        count, key, item, path = self.fresh("c"), self.fresh("k"), self.fresh("i"), f"{path}{{}}"
        self.emit(f"{var} = {{}}", indent, path)
        self.blocks(count, indent, path)  # each entry takes a byte at least (its key's length): no refusal
        self.emit(f"for _ in range({count}):", indent + 1, path)
        self.primitive("string", key, indent + 2, path)
        self.value(node["values"], item, indent + 2, path)
        self.emit(f"{var}[{key}] = {item}", indent + 2, path)
        self.long(count, indent + 1, path)

    # Skipping: a value of a field left out is read past, refused wherever reading it would be refused (a
    # truncated value, a negative length, invalid UTF-8, an unknown union or enum index, a varint over 10
    # bytes), so that every event gets the same decision as without projection, fastavro's.

    def skip(self, node: TypeNode, indent: int, path: str) -> None:
        """Lines that move ``p`` past one value of ``node`` (none for a null)."""
        node = self.resolve(node)
        size = self.size(node, set())
        if size is not None:
            if size:  # not looked at: if this passes the end, the caller's end check sees it
                self.emit(f"p += {size}", indent, path)
        elif isinstance(node, list):
            self.branches(node, indent, path, lambda branch: self.skip(branch, indent + 1, path))
        elif node in ("int", "long"):
            self.skip_varint(indent, path)
        elif node in ("string", "bytes"):
            self.skip_bytes(node, indent, path)
        elif node["type"] == "enum":
            self.kind_enum(node, "_", indent, path)  # read as it is, for its index check
        else:
            getattr(self, f"skip_{node['type']}", self.skip_unsupported)(node, indent, path)

    def skip_unsupported(self, node: dict[str, Any], indent: int, path: str) -> None:
        raise _Unsupported(str(node["type"]))

    def skip_varint(self, indent: int, path: str) -> None:
        self.emit("if b[p] < 128: p += 1", indent, path)
        self.emit("elif b[p + 1] < 128: p += 2", indent, path)
        self.emit("else: p = SKIP_VARINT(b, p).end()", indent, path)  # None (no last byte in 10): fastavro decides

    def skip_bytes(self, kind: str, indent: int, path: str) -> None:
        n = self.fresh("n")
        self.long(n, indent, path, "LENGTH", "length")
        if kind == "bytes":
            self.emit(f"p += {n}", indent, path)
            return
        # Text must still be valid UTF-8. Checking for ASCII costs less than decoding, and less than a regex
        # search for a byte over 127 (3 ns a byte): only other text is decoded, and the string dropped.
        self.emit(f"e = p + {n}", indent, path)
        self.emit("if not b[p:e].isascii(): b[p:e].decode()", indent, path)
        self.emit("p = e", indent, path)

    def skip_record(self, node: dict[str, Any], indent: int, path: str) -> None:
        if node["name"] in self.stack:
            self.emit(f"p = {self.function(node, 'S', 'p')}(b, p)", indent, path)
            return
        self.stack.append(node["name"])
        for field in node["fields"]:
            self.skip(field["type"], indent, f"{path}.{field['name']}".lstrip("."))
        self.stack.pop()

    def skip_array(self, node: dict[str, Any], indent: int, path: str) -> None:
        """Item by item, as fastavro reads them: a block's byte size (when written) would let us jump
        over it, but then its items would go unchecked, and fastavro, which reads them, could refuse."""
        count, items, path = self.fresh("c"), node["items"], f"{path}[]"
        self.blocks(count, indent, path)
        if not self.takes_bytes(items, set()):
            self.emit(f"refuse_empty({count}, {path!r})", indent + 1, path)
        size = self.size(items, set())
        if size is None:
            self.emit(f"for _ in range({count}):", indent + 1, path)
            self.skip(items, indent + 2, path)
        elif size:
            self.emit(f"p += {count} * {size}", indent + 1, path)  # items of one size: no loop
        self.long(count, indent + 1, path)

    def skip_map(self, node: dict[str, Any], indent: int, path: str) -> None:
        count, path = self.fresh("c"), f"{path}{{}}"
        self.blocks(count, indent, path)
        self.emit(f"for _ in range({count}):", indent + 1, path)
        self.skip_bytes("string", indent + 2, path)
        self.skip(node["values"], indent + 2, path)
        self.long(count, indent + 1, path)

    def size(self, node: TypeNode, seen: set[str]) -> int | None:
        """The bytes each value of ``node`` takes when that is one number (None: it varies)."""
        node = self.resolve(node)
        if isinstance(node, str):
            return _SIZES.get(node)
        if isinstance(node, list) or node["type"] not in ("fixed", "record") or node["name"] in seen:
            return None
        if node["type"] == "fixed":
            return int(node["size"])
        total = 0
        for field in node["fields"]:
            size = self.size(field["type"], seen | {node["name"]})
            if size is None:
                return None
            total += size
        return total

    def takes_bytes(self, node: TypeNode, seen: set[str]) -> bool:
        """Whether every value of ``node`` takes at least one byte (a recursive record does: it
        ends in a union or an array somewhere)."""
        node = self.resolve(node)
        if isinstance(node, list) or node in ("boolean", "int", "long", "float", "double", "string", "bytes"):
            return True
        if not isinstance(node, dict) or node["type"] not in ("record", "fixed"):
            return bool(node != "null")
        if node["type"] == "fixed":
            return int(node["size"]) > 0
        if node["name"] in seen:
            return True
        return any(self.takes_bytes(f["type"], seen | {node["name"]}) for f in node["fields"])

    def source(self) -> tuple[str, dict[int, str]]:
        """The functions' text, and the field path read on each line. Tables and helpers are bound as
        keyword defaults: locals are read faster than globals (9 lookups per field on average)."""
        bound = ", ".join(f"{name}={name}" for name in self.names)
        lines = [line for fn in (*self.functions, self.fn) for line in fn.lines]
        text = "".join(f"{line.replace('(b, p):', f'(b, p, *, {bound}):') if not path else line}\n"
                       for line, path in lines)
        return text, {i + 1: path for i, (_, path) in enumerate(lines) if path}


def _compile(schema: Schema, fields: AbstractSet[str] | None) -> CompiledReader:
    gen = _Gen(schema)
    gen.kind_record(schema, "r", 1, "", fields)
    gen.emit("return r, p", 1, "")
    source, paths = gen.source()
    return CompiledReader(gen.define(source, _FILENAME, "read"), paths)


def compile_reader(schema: Schema, fields: AbstractSet[str] | None = None) -> CompiledReader | None:
    """A reader of ``schema``'s records from Avro binary, or None if the schema needs fastavro. With
    ``fields``, only those top-level fields are in the records it reads; the others are skipped."""
    try:
        return _compile(schema, fields)
    except _Unsupported:
        return None
