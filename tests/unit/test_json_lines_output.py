"""JSON lines predictions are records of the output schema in its own representation, whatever
logical types it carries (``worker.batch.files.JsonLinesWriter``)."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

import fastavro

from worker.batch.files import JsonLinesWriter

SCHEMA = fastavro.parse_schema({"type": "record", "name": "Out", "fields": [
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
    {"name": "raw", "type": "bytes"}]})


def test_values_are_written_as_the_schema_holds_them_and_read_back_the_same(tmp_path: Path) -> None:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMA, {"at": 1_795_000_000_123, "day": 20_000, "amount": Decimal("12.34"),
                                             "raw": b"\x00\xff"})
    writer = JsonLinesWriter(tmp_path / "out.jsonl", SCHEMA, None)
    writer.write([buf.getvalue()])
    writer.close()

    line = json.loads((tmp_path / "out.jsonl").read_text())

    assert line["at"] == 1_795_000_000_123 and line["day"] == 20_000, "not a date's text"
    as_avro = {**line, "amount": line["amount"].encode("latin-1"), "raw": line["raw"].encode("latin-1")}
    again = io.BytesIO()
    fastavro.schemaless_writer(again, fastavro.parse_schema(json.loads(json.dumps(_plain(SCHEMA)))), as_avro)
    assert again.getvalue() == buf.getvalue()


def _plain(node: object) -> object:
    """The schema without logical types: the representation Avro's JSON encoding uses."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items() if k != "logicalType" and not k.startswith("__")}
    return [_plain(v) for v in node] if isinstance(node, list) else node
