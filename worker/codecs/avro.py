"""Avro codecs: ``(value, ctx)`` callables between Kafka bytes and Python records.

Two framings are supported. ``plain`` is schemaless Avro binary (the writer schema is the
configured one). ``confluent`` is the Schema Registry wire format: a zero magic byte, a
4-byte big-endian schema id, then the Avro body; the writer schema is fetched by id and
resolved against the configured reader schema (see ``evolution``).

Every failure is raised as ``DecodeError`` / ``EncodeError`` wrapping the library's error and
carrying the source message, so that the dead-letter topic can republish it unchanged.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol, runtime_checkable

import fastavro

from worker.codecs.evolution import incompatibility, same_shape
from worker.codecs.reader import CompiledReader, ReadRefused, compile_reader
from worker.codecs.registry import SchemaRegistry
from worker.codecs.schemas import Schema, parse_schema, record_name
from worker.codecs.writer import compile_column_writer, compile_writer
from worker.errors import DecodeError, EncodeError
from worker.records import Message, Record

logger = logging.getLogger(__name__)

_MAGIC = 0
_HEADER = struct.Struct(">bI")
_OBJECT_REPR = re.compile(r" from <[\w.]+ object at 0x[0-9a-f]+>")


class Decoder(Protocol):
    def __call__(self, value: bytes | None, ctx: Message) -> Record: ...


class Encoder(Protocol):
    def __call__(self, record: Record, ctx: Message) -> bytes: ...


@runtime_checkable
class ColumnEncoder(Protocol):
    """An encoder that can also write a whole batch given as columns (``{field: values}``): None
    means "encode the rows one by one" (some row fails, or the schema needs fastavro)."""

    def encode_columns(self, columns: Mapping[str, Sequence[Any]]) -> list[bytes] | None: ...


DEFAULT_MAX_BYTES = 1 << 20


def _read_exactly(schema: Schema, name: str, value: bytes | None, ctx: Message, limit: int, start: int = 0,
                  reader: Schema | None = None, where: str | None = None) -> Record:
    """One record that must use every byte of ``value``; anything else is a ``DecodeError`` (naming
    the field ``where`` the compiled reader stopped, when it did)."""
    if value is None:
        raise DecodeError("the message has no value (a tombstone)", ctx)
    if len(value) > limit:
        raise DecodeError(f"value of {len(value)} bytes is over the {limit}-byte limit", ctx)
    buf = BytesIO(value)
    if start:
        buf.seek(start)
    try:
        record = fastavro.schemaless_reader(buf, schema, reader)
    except Exception as exc:  # fastavro raises EOFError, UnicodeDecodeError, IndexError, ...
        at = f" (at field '{where}')" if where else ""
        raise DecodeError(f"not a valid {name} Avro record{at}: {type(exc).__name__}: {_detail(exc)}", ctx) from exc
    if buf.tell() != len(value):
        raise DecodeError(f"{len(value) - buf.tell()} bytes left over after a {name} Avro record", ctx)
    return record  # type: ignore[return-value]  # a record schema always reads as a dict


def _detail(exc: Exception) -> str:
    """What went wrong, never empty (fastavro's EOFError says nothing)."""
    detail = _OBJECT_REPR.sub("", str(exc)).strip()
    if detail:
        return detail
    if isinstance(exc, EOFError):
        return "the value ends before the record does (truncated, or written with another schema)"
    return "the decoder gave no detail"


def _projected(record: Record, fields: frozenset[str] | None) -> Record:
    """The record with only ``fields`` (all of them when None): fastavro's records have the shape
    of the compiled reader's, so that a field read but not projected fails every time, not by chance."""
    return record if fields is None else {k: v for k, v in record.items() if k in fields}


class _Compiled:
    """Reads ``schema``'s records with the reader compiled for it (see ``reader``), and any value it
    does not read to the end with fastavro, whose decision stands (the dead letters stay the same).
    With ``fields``, the records hold those top-level fields only (the others are skipped)."""

    def __init__(self, schema: Schema, name: str, limit: int, compiled: bool,
                 fields: frozenset[str] | None = None) -> None:
        self._schema, self._name, self._limit, self._fields = schema, name, limit, fields
        self._reader: CompiledReader | None = compile_reader(schema, fields) if compiled else None

    def read(self, value: bytes | None, ctx: Message, start: int = 0) -> Record:
        if self._reader is None or value is None or len(value) > self._limit:
            return self._fastavro(value, ctx, start)
        try:
            record, end = self._reader.read(value, start)
        except ReadRefused as exc:
            raise DecodeError(f"not a valid {self._name} Avro record: {exc}", ctx) from exc
        except Exception as exc:  # IndexError, EOFError, UnicodeDecodeError, struct.error, ...: fastavro decides
            return self._fastavro(value, ctx, start, self._reader.field_at(exc))
        if end != len(value):
            return self._fastavro(value, ctx, start)
        return record

    def _fastavro(self, value: bytes | None, ctx: Message, start: int, where: str | None = None) -> Record:
        record = _read_exactly(self._schema, self._name, value, ctx, self._limit, start, where=where)
        return _projected(record, self._fields)


class PlainAvroDecoder:
    """Schemaless Avro binary written with exactly the configured schema; ``compiled=False`` reads
    with fastavro alone (the benchmark's baseline); ``fields``: only those top-level fields are read."""

    def __init__(self, schema: Schema, max_bytes: int = DEFAULT_MAX_BYTES, compiled: bool = True,
                 fields: frozenset[str] | None = None) -> None:
        self._read = _Compiled(schema, record_name(schema), max_bytes, compiled, fields).read

    def __call__(self, value: bytes | None, ctx: Message) -> Record:
        return self._read(value, ctx)


@dataclass(frozen=True)
class _Reading:
    """How the events of one writer schema id are read, decided once per id: with ``writer``,
    resolved to ``reader`` (None when the two have the same shape), or not at all (``refusal``)."""

    writer: Schema
    reader: Schema | None = None
    refusal: str | None = None


class ConfluentAvroDecoder:
    """Schema Registry framing. Each writer schema id is fetched, parsed and checked against the
    reader schema once; its events are then read with schema resolution (evolution), or
    dead-lettered with the reason the two schemas do not resolve. ``fields``: only those top-level
    fields (of the reader schema) are in the records."""

    def __init__(self, registry: SchemaRegistry, reader_schema: Schema, max_bytes: int = DEFAULT_MAX_BYTES,
                 fields: frozenset[str] | None = None) -> None:
        self._registry = registry
        self._reader = reader_schema
        self._limit = max_bytes
        self._name = record_name(reader_schema)
        self._readings: dict[int, _Reading] = {}
        self._fields = fields
        self._same_shape = _Compiled(reader_schema, self._name, max_bytes, True, fields).read

    def __call__(self, value: bytes | None, ctx: Message) -> Record:
        if value is None or len(value) < _HEADER.size or value[0] != _MAGIC:
            raise DecodeError("not Schema Registry framed (no magic byte 0 and schema id)", ctx)
        _, schema_id = _HEADER.unpack_from(value)
        reading = self._readings.get(schema_id) or self._decide(schema_id, ctx)
        if reading.refusal is not None:
            raise DecodeError(reading.refusal, ctx)
        if reading.reader is None:  # the writer has the reader's shape: the compiled reader applies
            return self._same_shape(value, ctx, _HEADER.size)
        record = _read_exactly(reading.writer, self._name, value, ctx, self._limit, _HEADER.size, reading.reader)
        return _projected(record, self._fields)

    def _decide(self, schema_id: int, ctx: Message) -> _Reading:
        writer = self._fetch(schema_id, ctx)
        if same_shape(writer, self._reader):
            reading = _Reading(self._reader)  # the common case: read as plain Avro, no resolution per event
        elif (problem := incompatibility(writer, self._reader)) is None:
            reading = _Reading(writer, self._reader)
            logger.info("events of schema id %d are resolved to the reader schema", schema_id,
                        extra={"schema_id": schema_id})
        else:
            reading = _Reading(writer, refusal=f"schema id {schema_id} cannot be read as {self._name}: {problem}")
            logger.warning("events of schema id %d will be dead-lettered: %s", schema_id, problem,
                           extra={"schema_id": schema_id})
        self._readings[schema_id] = reading
        return reading

    def _fetch(self, schema_id: int, ctx: Message) -> Schema:
        try:
            fetched = self._registry.get_schema(schema_id)
        except LookupError as exc:
            raise DecodeError(f"schema id {schema_id} is unknown to the registry", ctx) from exc
        try:
            return parse_schema(json.loads(fetched.text), [json.loads(t) for t in fetched.references])
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"schema id {schema_id} is not a usable Avro record schema: {exc}", ctx) from exc


class PlainAvroEncoder:
    """Schemaless Avro binary; a writer compiled for the schema when it can be (see avro_writer)."""

    def __init__(self, schema: Schema, prefix: bytes = b"") -> None:
        self._schema = schema
        self._name = record_name(schema)
        self._write = compile_writer(schema) or self._fastavro
        self._columns = compile_column_writer(schema, prefix)

    def encode_columns(self, columns: Mapping[str, Sequence[Any]]) -> list[bytes] | None:
        """Every row of a batch given as columns, or None when some row does not encode (or the
        schema needs fastavro): then each row is encoded on its own, and the failing ones named."""
        if self._columns is None:
            return None
        try:
            return self._columns(columns)
        except Exception:  # any error: the row-by-row path says which row and why
            return None

    def __call__(self, record: Record, ctx: Message) -> bytes:
        try:
            return self._write(record)
        except Exception as exc:  # KeyError, TypeError, ValueError, struct.error, ... from either writer
            raise EncodeError(f"cannot encode a {self._name}: {type(exc).__name__}: {exc}", ctx) from exc

    def _fastavro(self, record: Record) -> bytes:
        buf = BytesIO()
        fastavro.schemaless_writer(buf, self._schema, record)
        return buf.getvalue()


class ConfluentAvroEncoder(PlainAvroEncoder):
    """Registers the output schema under ``subject`` at construction and frames each value."""

    def __init__(self, schema: Schema, registry: SchemaRegistry, subject: str, schema_text: str) -> None:
        schema_id = registry.register(subject, schema_text)
        self._prefix = _HEADER.pack(_MAGIC, schema_id)
        super().__init__(schema, self._prefix)
        logger.info("output schema registered", extra={"subject": subject, "schema_id": schema_id})

    def __call__(self, record: Record, ctx: Message) -> bytes:
        return self._prefix + super().__call__(record, ctx)
