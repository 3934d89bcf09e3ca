"""Avro codecs: round trips, framing, schema resolution, and every failure as a per-event error."""

from __future__ import annotations

import io
import json
import random
import struct
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.codecs.avro import ConfluentAvroDecoder, ConfluentAvroEncoder, PlainAvroDecoder, PlainAvroEncoder
from worker.codecs.registry import InMemorySchemaRegistry, SchemaText
from worker.codecs.schemas import parse_schema
from worker.codecs.writer import compile_writer
from worker.errors import DecodeError, EncodeError
from worker.records import InputMessage

TRANSACTION: dict[str, Any] = {
    "type": "record", "name": "Transaction", "namespace": "test",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "mcc", "type": "int"},
        {"name": "card_present", "type": "boolean"},
        {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["POS", "ECOM"]}},
        {"name": "user", "type": {"type": "record", "name": "User", "fields": [
            {"name": "id", "type": "long"}, {"name": "country", "type": "string"}]}},
        {"name": "distance", "type": ["null", "double"], "default": None},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
RECORD = {"event_id": "e-1", "amount": 12.5, "mcc": 5411, "card_present": True, "channel": "ECOM",
          "user": {"id": 2**40, "country": "NL"}, "distance": None, "at": 1_700_000_000_123}


@pytest.fixture
def schema() -> dict[str, Any]:
    return parse_schema(TRANSACTION)


@pytest.fixture
def message() -> InputMessage:
    return InputMessage(b"", b"key", "in", 3, 42)


def encoded(schema: dict[str, Any], record: dict[str, Any] = RECORD) -> bytes:
    return PlainAvroEncoder(schema)(record, InputMessage(None))


def test_plain_round_trip_keeps_timestamps_as_integers(schema: dict[str, Any], message: InputMessage) -> None:
    value = encoded(schema)

    assert PlainAvroDecoder(schema)(value, message) == RECORD
    assert PlainAvroDecoder(schema)(encoded(schema, {**RECORD, "distance": 3.25}), message)["distance"] == 3.25


def test_the_encoder_reuses_its_buffer_without_mixing_values(schema: dict[str, Any], message: InputMessage) -> None:
    encoder, decoder = PlainAvroEncoder(schema), PlainAvroDecoder(schema)
    long_value = encoder({**RECORD, "event_id": "x" * 100}, message)
    short_value = encoder(RECORD, message)

    assert decoder(short_value, message) == RECORD
    assert decoder(long_value, message)["event_id"] == "x" * 100


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda v: v[: len(v) // 2], id="truncated"),
    pytest.param(lambda v: v[:-1], id="last-byte-missing"),
    pytest.param(lambda v: b"", id="empty"),
    pytest.param(lambda v: b"\xff" * 40, id="varint-garbage"),
    pytest.param(lambda v: bytes(range(200, 240)), id="bad-utf8"),
])
def test_malformed_values_raise_decode_error_wrapping_the_library_error(
        schema: dict[str, Any], message: InputMessage, mangle: Any) -> None:
    with pytest.raises(DecodeError) as caught:
        PlainAvroDecoder(schema)(mangle(encoded(schema)), message)

    error = caught.value
    assert error.raw is message
    assert error.stage == "decode"
    assert error.__cause__ is not None
    assert type(error.__cause__).__name__ in error.reason
    assert error.reason.startswith("not a valid Transaction Avro record")
    assert not error.reason.rstrip().endswith(":"), f"a reason with no detail: {error.reason!r}"


def test_random_values_raise_decode_error(schema: dict[str, Any], message: InputMessage) -> None:
    rng = random.Random(7)
    decoder = PlainAvroDecoder(schema)
    for _ in range(200):
        value = rng.randbytes(rng.randint(1, 80))
        with pytest.raises(DecodeError) as caught:
            decoder(value, message)
        assert caught.value.raw is message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_any_bytes_decode_or_raise_decode_error(value: bytes) -> None:
    schema, message = parse_schema(TRANSACTION), InputMessage(value)
    try:
        record = PlainAvroDecoder(schema)(value, message)
    except DecodeError as exc:
        assert exc.raw is message
    else:
        assert set(record) == {f["name"] for f in TRANSACTION["fields"]}


def test_trailing_garbage_is_refused(schema: dict[str, Any], message: InputMessage) -> None:
    with pytest.raises(DecodeError) as caught:
        PlainAvroDecoder(schema)(encoded(schema) + b"\x00\x01", message)

    assert caught.value.reason == "2 bytes left over after a Transaction Avro record"
    assert caught.value.raw is message


def test_a_tombstone_is_a_decode_error(schema: dict[str, Any], message: InputMessage) -> None:
    with pytest.raises(DecodeError, match="no value") as caught:
        PlainAvroDecoder(schema)(None, message)

    assert caught.value.raw is message


@pytest.mark.parametrize("change", [
    {"amount": "twelve"}, {"amount": None}, {"channel": "FAX"}, {"user": {"id": 1}}, {"event_id": 5},
    {"user": {"id": 2**70, "country": "NL"}}, {"distance": "far"},
], ids=["string-for-double", "null-for-double", "unknown-symbol", "nested-field-missing", "int-for-string",
        "long-overflow", "string-in-nullable-double"])
def test_an_unencodable_record_raises_encode_error(schema: dict[str, Any], message: InputMessage,
                                                   change: dict[str, Any]) -> None:
    with pytest.raises(EncodeError) as caught:
        PlainAvroEncoder(schema)({**RECORD, **change}, message)

    error = caught.value
    assert error.raw is message
    assert error.stage == "encode"
    assert error.__cause__ is not None
    assert error.reason.startswith(f"cannot encode a Transaction: {type(error.__cause__).__name__}: ")


records = st.fixed_dictionaries({
    "event_id": st.text(), "amount": st.floats(allow_nan=False), "mcc": st.integers(-(2**31), 2**31 - 1),
    "card_present": st.booleans(), "channel": st.sampled_from(["POS", "ECOM"]),
    "user": st.fixed_dictionaries({"id": st.integers(-(2**63), 2**63 - 1), "country": st.text(max_size=3)}),
    "distance": st.none() | st.floats(allow_nan=False), "at": st.integers(-(2**63), 2**63 - 1)})


@settings(max_examples=300, deadline=None)
@given(records)
def test_encoded_records_are_what_fastavro_writes(record: dict[str, Any]) -> None:
    schema = parse_schema(TRANSACTION)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)

    value = PlainAvroEncoder(schema)(record, InputMessage(None))

    assert value == buf.getvalue()
    assert PlainAvroDecoder(schema)(value, InputMessage(value)) == record


def test_a_missing_field_raises_encode_error(schema: dict[str, Any], message: InputMessage) -> None:
    record = {k: v for k, v in RECORD.items() if k != "mcc"}

    with pytest.raises(EncodeError, match="mcc") as caught:
        PlainAvroEncoder(schema)(record, message)

    assert caught.value.__cause__ is not None


# --- Schema Registry framing ------------------------------------------------------------------

WRITER_V1 = {"type": "record", "name": "User", "fields": [
    {"name": "id", "type": "int"}, {"name": "name", "type": "string"}, {"name": "legacy", "type": "string"}]}
READER_V2 = {"type": "record", "name": "User", "fields": [
    {"name": "id", "type": "long"}, {"name": "name", "type": "string"},
    {"name": "country", "type": "string", "default": "NL"}]}


class CountingRegistry(InMemorySchemaRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def get_schema(self, schema_id: int) -> SchemaText:
        self.lookups += 1
        return super().get_schema(schema_id)


def framed(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    return struct.pack(">bI", 0, schema_id) + PlainAvroEncoder(parse_schema(schema))(record, InputMessage(None))


def test_confluent_round_trip_registers_the_output_schema(message: InputMessage) -> None:
    registry = InMemorySchemaRegistry()
    text = json.dumps(READER_V2)
    encoder = ConfluentAvroEncoder(parse_schema(READER_V2), registry, "users-value", text)
    record = {"id": 7, "name": "Ann", "country": "BE"}

    value = encoder(record, message)

    schema_id = registry.subjects["users-value"]
    assert value[:5] == struct.pack(">bI", 0, schema_id)
    assert ConfluentAvroDecoder(registry, parse_schema(READER_V2))(value, message) == record


def test_confluent_resolves_the_writer_schema_against_the_reader(message: InputMessage) -> None:
    registry = CountingRegistry()
    writer_id = registry.register("users-value", json.dumps(WRITER_V1))
    decoder = ConfluentAvroDecoder(registry, parse_schema(READER_V2))

    first = decoder(framed(writer_id, WRITER_V1, {"id": 1, "name": "Ann", "legacy": "x"}), message)
    second = decoder(framed(writer_id, WRITER_V1, {"id": 2, "name": "Bob", "legacy": "y"}), message)

    assert first == {"id": 1, "name": "Ann", "country": "NL"}  # legacy dropped, country defaulted, int → long
    assert second["id"] == 2
    assert registry.lookups == 1  # the writer schema is fetched once per id


def test_confluent_unknown_schema_id(message: InputMessage) -> None:
    decoder = ConfluentAvroDecoder(InMemorySchemaRegistry(), parse_schema(READER_V2))

    with pytest.raises(DecodeError) as caught:
        decoder(framed(99, WRITER_V1, {"id": 1, "name": "Ann", "legacy": "x"}), message)

    assert caught.value.reason == "schema id 99 is unknown to the registry"
    assert isinstance(caught.value.__cause__, LookupError)
    assert caught.value.raw is message


def test_confluent_incompatible_writer_schema(message: InputMessage) -> None:
    registry = CountingRegistry()
    writer = {"type": "record", "name": "User", "fields": [{"name": "id", "type": "string"}]}
    writer_id = registry.register("users-value", json.dumps(writer))
    decoder = ConfluentAvroDecoder(registry, parse_schema(READER_V2))

    for _ in range(3):
        with pytest.raises(DecodeError) as caught:
            decoder(framed(writer_id, writer, {"id": "a"}), message)

    assert caught.value.reason == (f"schema id {writer_id} cannot be read as User: "
                                   "field 'id' is written as a string, the reader expects a long")
    assert caught.value.raw is message
    assert registry.lookups == 1  # the verdict is remembered per schema id


def test_confluent_reads_older_and_newer_compatible_writers(message: InputMessage) -> None:
    registry = InMemorySchemaRegistry()
    older = {"type": "record", "name": "User", "fields": [{"name": "id", "type": "int"},
                                                          {"name": "name", "type": "string"}]}
    newer = {"type": "record", "name": "User", "namespace": "other", "fields": [
        *READER_V2["fields"], {"name": "email", "type": ["null", "string"], "default": None}]}
    decoder = ConfluentAvroDecoder(registry, parse_schema(READER_V2))

    old = decoder(framed(registry.register("u", json.dumps(older)), older, {"id": 1, "name": "Ann"}), message)
    new = decoder(framed(registry.register("u", json.dumps(newer)), newer,
                         {"id": 2, "name": "Bob", "country": "BE", "email": "b@x"}), message)

    assert old == {"id": 1, "name": "Ann", "country": "NL"}
    assert new == {"id": 2, "name": "Bob", "country": "BE"}


def test_confluent_reads_the_readers_own_schema_without_resolution(message: InputMessage,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    registry = InMemorySchemaRegistry()
    schema_id = registry.register("u", json.dumps({**READER_V2, "doc": "the same shape, documented"}))
    reader = parse_schema(READER_V2)
    decoder = ConfluentAvroDecoder(registry, reader)
    calls: list[Any] = []
    real = fastavro.schemaless_reader
    monkeypatch.setattr(fastavro, "schemaless_reader", lambda buf, w, r: calls.append((w, r)) or real(buf, w, r))

    assert decoder(framed(schema_id, READER_V2, {"id": 1, "name": "A", "country": "BE"}), message)["id"] == 1
    assert calls == []  # the common case reads with the reader compiled for the reader schema, no resolution

    with pytest.raises(DecodeError):
        decoder(framed(schema_id, READER_V2, {"id": 1, "name": "A", "country": "BE"})[:-1], message)
    assert calls == [(reader, None)]  # a value it cannot read is read again by fastavro, which decides


@pytest.mark.parametrize(("writer_field", "reason"), [
    ({"name": "name", "type": "int"}, "field 'name' is written as an int, the reader expects a string"),
    ({"name": "name", "type": ["null", "string"]}, "field 'name' is written as a null, the reader expects a string"),
    ({"name": "nom", "type": "string"},
     "field 'name' is not in the writer's schema and the reader gives it no default"),
])
def test_confluent_names_what_does_not_match(message: InputMessage, writer_field: dict[str, Any],
                                             reason: str) -> None:
    registry = InMemorySchemaRegistry()
    writer = {"type": "record", "name": "User", "fields": [{"name": "id", "type": "long"}, writer_field]}
    schema_id = registry.register("u", json.dumps(writer))

    with pytest.raises(DecodeError) as caught:
        ConfluentAvroDecoder(registry, parse_schema(READER_V2))(b"\x00" + struct.pack(">I", schema_id) + b"\x02",
                                                                message)

    assert caught.value.reason == f"schema id {schema_id} cannot be read as User: {reason}"


def test_confluent_unusable_registry_schema(message: InputMessage) -> None:
    registry = InMemorySchemaRegistry()
    registry.schemas[5] = '{"type": "string"}'

    with pytest.raises(DecodeError, match="schema id 5 is not a usable Avro record schema") as caught:
        ConfluentAvroDecoder(registry, parse_schema(READER_V2))(b"\x00\x00\x00\x00\x05\x02a", message)

    assert caught.value.__cause__ is not None


@pytest.mark.parametrize("value", [None, b"", b"\x00\x00", b"\x01\x00\x00\x00\x01\x02"], ids=["none", "empty",
                                                                                                "short", "magic-1"])
def test_confluent_refuses_unframed_values(message: InputMessage, value: bytes | None) -> None:
    registry = InMemorySchemaRegistry()
    registry.register("s", json.dumps(READER_V2))

    with pytest.raises(DecodeError, match="not Schema Registry framed"):
        ConfluentAvroDecoder(registry, parse_schema(READER_V2))(value, message)


def test_confluent_body_errors_are_decode_errors(message: InputMessage) -> None:
    registry = InMemorySchemaRegistry()
    schema_id = registry.register("s", json.dumps(WRITER_V1))
    value = framed(schema_id, WRITER_V1, {"id": 1, "name": "Ann", "legacy": "x"})

    with pytest.raises(DecodeError) as caught:
        ConfluentAvroDecoder(registry, parse_schema(READER_V2))(value[:-2], message)

    assert caught.value.__cause__ is not None


def test_registry_reuses_the_id_of_a_known_schema() -> None:
    registry = InMemorySchemaRegistry()

    first = registry.register("a-value", json.dumps(READER_V2))
    again = registry.register("b-value", json.dumps(READER_V2, indent=2))
    other = registry.register("c-value", json.dumps(WRITER_V1))

    assert first == again != other
    with pytest.raises(LookupError):
        registry.get_schema(other + 1)


# --- size limit -------------------------------------------------------------------------------

def test_values_over_the_size_limit_are_refused(schema: dict[str, Any], message: InputMessage) -> None:
    value = encoded(schema)

    with pytest.raises(DecodeError) as caught:
        PlainAvroDecoder(schema, len(value) - 1)(value, message)

    assert caught.value.reason == f"value of {len(value)} bytes is over the {len(value) - 1}-byte limit"
    assert caught.value.raw is message
    assert caught.value.__cause__ is None
    assert PlainAvroDecoder(schema, len(value))(value, message) == RECORD


def test_the_size_limit_applies_to_framed_values(message: InputMessage) -> None:
    registry = InMemorySchemaRegistry()
    schema_id = registry.register("s", json.dumps(WRITER_V1))
    value = framed(schema_id, WRITER_V1, {"id": 1, "name": "Ann" * 20, "legacy": "x"})

    with pytest.raises(DecodeError, match="-byte limit"):
        ConfluentAvroDecoder(registry, parse_schema(READER_V2), 40)(value, message)
    assert ConfluentAvroDecoder(registry, parse_schema(READER_V2), len(value))(value, message)["id"] == 1


EXPLAINED = {"type": "record", "name": "Explained", "fields": [
    {"name": "score", "type": "double"},
    {"name": "reasons", "type": {"type": "array", "items": "string"}},
    {"name": "contributions", "type": {"type": "map", "values": "double"}},
    {"name": "counts", "type": ["null", {"type": "array", "items": "long"}]}]}
explained = st.fixed_dictionaries({
    "score": st.floats(allow_nan=False), "reasons": st.lists(st.text(max_size=12), max_size=5),
    "contributions": st.dictionaries(st.text(max_size=12), st.floats(allow_nan=False), max_size=5),
    "counts": st.none() | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4)})


@settings(max_examples=300, deadline=None)
@given(explained)
def test_arrays_and_maps_are_written_as_fastavro_writes_them(record: dict[str, Any]) -> None:
    schema = parse_schema(EXPLAINED)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)

    assert compile_writer(schema) is not None, "arrays and maps need no fallback to fastavro"
    value = PlainAvroEncoder(schema)(record, InputMessage(None))

    assert value == buf.getvalue()
    assert PlainAvroDecoder(schema)(value, InputMessage(value)) == record


# --- Batches written as columns -----------------------------------------------------------------

def _columns(batch: list[dict[str, Any]], names: list[str]) -> dict[str, list[Any]]:
    return {name: [record[name] for record in batch] for name in names}


@settings(max_examples=200, deadline=None)
@given(st.lists(records, max_size=6))
def test_a_batch_written_as_columns_is_each_row_written_alone(batch: list[dict[str, Any]]) -> None:
    schema = parse_schema(TRANSACTION)
    encoder = PlainAvroEncoder(schema)

    values = encoder.encode_columns(_columns(batch, [f["name"] for f in TRANSACTION["fields"]]))

    assert values == [encoder(record, InputMessage(None)) for record in batch]


@settings(max_examples=100, deadline=None)
@given(st.lists(explained, min_size=1, max_size=4))
def test_arrays_and_maps_written_as_columns_are_what_fastavro_writes(batch: list[dict[str, Any]]) -> None:
    schema = parse_schema(EXPLAINED)
    expected = []
    for record in batch:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record)
        expected.append(buf.getvalue())

    assert PlainAvroEncoder(schema).encode_columns(_columns(batch, list(batch[0]))) == expected


def test_columns_take_defaults_for_missing_fields_and_framed_values_their_header() -> None:
    registry = InMemorySchemaRegistry()
    encoder = ConfluentAvroEncoder(parse_schema(READER_V2), registry, "users-value", json.dumps(READER_V2))
    rows = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]

    values = encoder.encode_columns(_columns(rows, ["id", "name"]))

    assert values == [encoder(row, InputMessage(None)) for row in rows]
    assert values is not None and values[0].endswith(b"\x04NL")


def test_a_batch_with_a_row_that_does_not_encode_is_left_to_the_row_by_row_path(
        schema: dict[str, Any], message: InputMessage) -> None:
    encoder = PlainAvroEncoder(schema)
    good, bad = dict(RECORD), {**RECORD, "mcc": "not a number"}
    names = list(RECORD)

    assert encoder.encode_columns(_columns([good, bad], names)) is None
    assert encoder.encode_columns(_columns([good], [n for n in names if n != "mcc"])) is None  # no default
    assert encoder.encode_columns(_columns([good, good], names)) == [encoder(good, message)] * 2
