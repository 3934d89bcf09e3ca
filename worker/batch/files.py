"""Files of events in, files of predictions out: Avro object container files (``.avro``), JSON
lines (``.jsonl``) and Parquet (``.parquet``, with pyarrow: ``pip install 'inference-worker[parquet]'``).

Readers yield ``Row``s: a record (or the reason it is not one) and, for the dead-letter file,
what the row was (its line, or the record). Writers take the pipeline's encoded outputs (plain
Avro bytes of the output schema): the container writer writes them as they are, in blocks, so
that the file costs no second encoding; the others decode them back into records.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, Protocol

import fastavro
from fastavro.schema import to_parsing_canonical_form

from worker.codecs.explain import mismatch
from worker.codecs.schemas import Schema
from worker.codecs.writer import encode_long
from worker.errors import ToolError, UsageError
from worker.records import Message

FORMATS = (".avro", ".jsonl", ".parquet")
MAGIC = b"Obj\x01"
PARQUET_EXTRA = "Parquet needs pyarrow: pip install 'inference-worker[parquet]'"


@dataclass(frozen=True)
class Row:
    """One input row: its record, or why it is not one (``problem``), and what it was."""

    record: dict[str, Any] | None
    problem: str | None = None
    line: bytes | None = None
    message: Message | None = None
    """A message read from a topic (still to decode), instead of a record."""
    error_type: str = "SchemaMismatch"
    """The dead letter's error type when the row is not a record."""


class Reader(Protocol):
    def rows(self, skip: int = 0) -> Iterator[Row]:
        """Every row after the first ``skip``."""

    def done(self) -> float | None:
        """The share of the input read so far, when it can be told."""


class Writer(Protocol):
    def write(self, values: list[bytes]) -> None: ...

    def flush(self) -> int:
        """Everything written reaches the file; returns its size (a resumable point)."""

    def close(self) -> None: ...


def format_of(path: Path, what: str) -> str:
    if path.suffix not in FORMATS:
        raise UsageError(f"{what} {path}: the format follows the extension, one of {', '.join(FORMATS)} "
                        "(or kafka:TOPIC)")
    return path.suffix


def open_reader(path: Path, schema: Schema) -> Reader:
    if not path.is_file():
        raise UsageError(f"--input {path}: no such file")
    suffix = format_of(path, "--input")
    if suffix == ".avro":
        return AvroFileReader(path, schema)
    if suffix == ".jsonl":
        return JsonLinesReader(path, schema)
    return ParquetReader(path, schema)


def open_writer(path: Path, schema: Schema, append_at: int | None = None) -> Writer:
    """A writer of ``path``; with ``append_at``, the file is cut back to that size and continued."""
    suffix = format_of(path, "--output")
    if suffix == ".avro":
        return AvroFileWriter(path, schema, append_at)
    if suffix == ".jsonl":
        return JsonLinesWriter(path, schema, append_at)
    if append_at is not None:
        raise UsageError("--resume continues .avro or .jsonl outputs; a Parquet file is written in one go")
    return ParquetWriter(path, schema)


class _Sized:
    """Tells how far into its file a reader is."""

    def __init__(self, path: Path) -> None:
        self.size = max(path.stat().st_size, 1)
        self.file: IO[bytes] | None = None

    def done(self) -> float | None:
        return None if self.file is None or self.file.closed else min(1.0, float(self.file.tell()) / self.size)


class AvroFileReader(_Sized):
    """Records of an Avro container file, read as the input schema. When the file was written with
    that schema (the same parsing canonical form), each block's records are decoded as the worker
    decodes a message (2.7 µs a record on the benchmark's file, against 6.9 through fastavro's schema
    resolution, which the reader uses for a file written with another, compatible schema).

    Records are decoded one by one, so one that cannot be (a value cut short, random bytes) is a
    dead letter, not the end of the run. A block keeps no record boundaries: the bytes from the bad
    record to the block's end go with its dead letter, the block's later records are dead letters
    too ("not read"), and reading goes on at the next block, which the sync marker delimits."""

    def __init__(self, path: Path, schema: Schema) -> None:
        super().__init__(path)
        self.path, self.schema = path, schema

    def rows(self, skip: int = 0) -> Iterator[Row]:
        with self.path.open("rb") as self.file:
            try:
                blocks = fastavro.block_reader(self.file)
                same = to_parsing_canonical_form(blocks.writer_schema) == to_parsing_canonical_form(self.schema)
                writer = self.schema if same else _parsed(blocks.writer_schema)
                reader = None if same else self.schema
                rows = (row for block in blocks for row in block_rows(block, writer, reader))
                yield from islice(rows, skip, None)
            except (ValueError, EOFError, fastavro.read.SchemaResolutionError) as exc:
                raise UsageError(f"{self.path} cannot be read as {self.schema.get('name')}: {exc}") from exc



def _parsed(schema: Any) -> Schema:
    parsed = fastavro.parse_schema(schema)
    if not isinstance(parsed, dict):  # an events file holds records
        raise UsageError(f"the file's schema is not a record schema: {schema}")
    return parsed


def block_rows(block: Any, writer: Schema, reader: Schema | None) -> Iterator[Row]:
    """The rows of one container block: its records until one cannot be decoded, which is a dead
    letter with the rest of the block's bytes, and the block's later records after it, unread."""
    data: io.BytesIO = block.bytes_
    end = len(data.getbuffer())
    for n in range(block.num_records):
        start = data.tell()
        record, problem = _next_record(data, writer, reader, last=n == block.num_records - 1, end=end)
        if problem is None:
            yield Row(record)
            continue
        where = f"record {n + 1} of {block.num_records} in the block at byte {block.offset}"
        yield Row(None, f"{where}: {problem[1]}", data.getvalue()[start:end], error_type=problem[0])
        lost = f"not read: after an undecodable record ({where}), the block's records cannot be told apart"
        yield from (Row(None, lost, None, error_type="Unread") for _ in range(block.num_records - n - 1))
        return


def _next_record(data: io.BytesIO, writer: Schema, reader: Schema | None, last: bool,
                 end: int) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """The next record, or (error type, reason) if the bytes are not one. A block's last record must
    end where the block does: bytes left over mean a record before it was not what it seemed."""
    try:
        record: dict[str, Any] = fastavro.schemaless_reader(data, writer, reader)  # type: ignore[assignment]
    except fastavro.read.SchemaResolutionError:
        raise  # the file's schema, not this record: the whole file cannot be read
    except Exception as exc:  # fastavro raises EOFError, UnicodeDecodeError, IndexError, ... on bad bytes
        return None, (type(exc).__name__, str(exc) or "cut short")
    if last and data.tell() != end:
        return None, ("TrailingBytes", f"{end - data.tell()} bytes left after the block's last record")
    return record, None


class JsonLinesReader(_Sized):
    def __init__(self, path: Path, schema: Schema) -> None:
        super().__init__(path)
        self.path, self.schema = path, schema

    def rows(self, skip: int = 0) -> Iterator[Row]:
        with self.path.open("rb") as self.file:
            n = 0
            for line in self.file:
                if not line.strip():
                    continue
                n += 1
                if n > skip:
                    yield self._row(line.rstrip(b"\r\n"))

    def _row(self, line: bytes) -> Row:
        try:
            record = json.loads(line)
        except ValueError as exc:
            return Row(None, f"not JSON: {exc}", line)
        if not isinstance(record, dict):
            return Row(None, f"an event must be a JSON object, not {type(record).__name__}", line)
        problem = mismatch(record, self.schema)
        return Row(None, problem, line) if problem else Row(record, None, line)


class ParquetReader:
    def __init__(self, path: Path, schema: Schema) -> None:
        pq = _pyarrow_parquet()
        self.file = pq.ParquetFile(path)
        self.schema = schema
        self.total = max(int(self.file.metadata.num_rows), 1)
        self.read = 0

    def rows(self, skip: int = 0) -> Iterator[Row]:
        for batch in self.file.iter_batches(batch_size=10_000):
            for record in batch.to_pylist():
                self.read += 1
                if self.read > skip:
                    problem = mismatch(record, self.schema)
                    yield Row(None, problem) if problem else Row(record)

    def done(self) -> float | None:
        return self.read / self.total


class OutFile:
    """A file written in chunks: ``flush`` makes what was written durable and says how long the file
    is (where a resumed run cuts it back to)."""

    file: IO[bytes]

    def flush(self) -> int:
        self.file.flush()
        os.fsync(self.file.fileno())
        return self.file.tell()

    def close(self) -> None:
        self.file.close()


class AvroFileWriter(OutFile):
    """An Avro object container file (codec null) written from encoded records, a block per call."""

    def __init__(self, path: Path, schema: Schema, append_at: int | None) -> None:
        self.path = path
        if append_at is None:
            self.file = path.open("wb")
            self.sync = os.urandom(16)
            self.file.write(_container_header(schema, self.sync))
        else:
            self.sync = _sync_marker(path)
            self.file = cut_back(path, append_at)

    def write(self, values: list[bytes]) -> None:
        if values:
            block = b"".join(values)
            self.file.write(b"".join((encode_long(len(values)), encode_long(len(block)), block, self.sync)))


class JsonLinesWriter(OutFile):
    """Records of the output schema as JSON objects, each value in the schema's own representation
    (a timestamp-millis as its long, a date as its int), so that the file reads back against the
    schema as ``worker produce`` and a ``.jsonl`` input read it; bytes as Avro's JSON encoding
    writes them (one character per byte)."""

    def __init__(self, path: Path, schema: Schema, append_at: int | None) -> None:
        self.schema = _parsed(_without_logical_types(schema))
        self.file = path.open("wb") if append_at is None else cut_back(path, append_at)

    def write(self, values: list[bytes]) -> None:
        schema = self.schema
        lines = [json.dumps(fastavro.schemaless_reader(io.BytesIO(v), schema), default=_bytes_as_text) for v in values]
        if lines:
            self.file.write(("\n".join(lines) + "\n").encode())


class ParquetWriter:
    def __init__(self, path: Path, schema: Schema) -> None:
        self.pa, self.pq = _pyarrow(), _pyarrow_parquet()
        self.path, self.schema = path, schema
        self.writer: Any = None

    def write(self, values: list[bytes]) -> None:
        records = [fastavro.schemaless_reader(io.BytesIO(v), self.schema) for v in values]
        if not records:
            return
        table = self.pa.Table.from_pylist(records)
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def flush(self) -> int:
        return 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _without_logical_types(node: Any) -> Any:
    """A schema's plain JSON with no logical types: decoding it gives the underlying Avro values."""
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType" and not k.startswith("__")}
    if isinstance(node, list):
        return [_without_logical_types(v) for v in node]
    return node


def _bytes_as_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")  # Avro's JSON encoding of bytes and fixed
    raise TypeError(f"{type(value).__name__} has no JSON form")


def _container_header(schema: Schema, sync: bytes) -> bytes:
    plain = {k: v for k, v in schema.items() if not k.startswith("__")}
    meta = {"avro.schema": json.dumps(plain).encode(), "avro.codec": b"null"}
    parts = [MAGIC, encode_long(len(meta))]
    for key, value in meta.items():
        parts += [encode_long(len(key)), key.encode(), encode_long(len(value)), value]
    return b"".join([*parts, b"\x00", sync])


def _sync_marker(path: Path) -> bytes:
    """The sync marker of a container file this module wrote: the 16 bytes that end its header."""
    with path.open("rb") as f:
        if f.read(4) != MAGIC:
            raise UsageError(f"cannot resume: {path} is not an Avro container file")
        _skip_map(f)
        return f.read(16)


def _skip_map(f: IO[bytes]) -> None:
    """Reads past the header's metadata map (blocks of string keys and bytes values)."""
    while (count := _read_long(f)) != 0:
        if count < 0:  # a block with its size in bytes after the count
            _read_long(f)
            count = -count
        for _ in range(2 * count):
            f.read(_read_long(f))


def _read_long(f: IO[bytes]) -> int:
    shift = result = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise UsageError("cannot resume: the output file's header is cut short")
        result |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            return (result >> 1) ^ -(result & 1)


def cut_back(path: Path, size: int) -> IO[bytes]:
    """``path`` cut back to ``size`` bytes (dropping what an interrupted run wrote after its last
    completed chunk), open for appending."""
    if not path.is_file() or path.stat().st_size < size:
        raise UsageError(f"cannot resume: {path} is shorter than the progress file says; start over without --resume")
    f = path.open("r+b")
    f.truncate(size)
    f.seek(size)
    return f


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError as exc:
        raise ToolError(PARQUET_EXTRA) from exc
    return pyarrow


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet
    except ImportError as exc:
        raise ToolError(PARQUET_EXTRA) from exc
    return pyarrow.parquet
