"""Feast's Redis layout: keys, field names, Value and Timestamp decoding, and freshness.

The expected bytes for the example's card entity are what Feast 0.67 wrote into a real Redis
(deploy/feast/materialize.py); ``Value`` cells are encoded by protobuf itself, from a message
declared here with the field numbers of ``feast/types/Value.proto`` (feast is not installed in
this venv; the integration test runs the real package)."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from worker.features.feast import (
    FeastKey,
    FeastLayout,
    decode_rows,
    decode_timestamp,
    decode_timestamps,
    decode_values,
    feature_field,
)
from worker.features.fetcher import EntitySpec, FeatureFetcher, HashLayout
from worker.features.keys import KeyTemplate
from worker.features.store import InMemoryFeatureStore

SCALARS = {"bytes_val": (1, "TYPE_BYTES"), "string_val": (2, "TYPE_STRING"), "int32_val": (3, "TYPE_INT32"),
           "int64_val": (4, "TYPE_INT64"), "double_val": (5, "TYPE_DOUBLE"), "float_val": (6, "TYPE_FLOAT"),
           "bool_val": (7, "TYPE_BOOL"), "unix_timestamp_val": (8, "TYPE_INT64"), "null_val": (19, "TYPE_INT32")}


def value_class() -> Any:
    """``feast.types.Value``'s scalar part (a oneof, as Feast declares it) plus one list type."""
    file = descriptor_pb2.FileDescriptorProto(name="test_feast_value.proto", package="testfeast", syntax="proto3")
    message = file.message_type.add(name="Value")
    message.oneof_decl.add(name="val")
    for name, (number, kind) in SCALARS.items():
        message.field.add(name=name, number=number, type=getattr(descriptor_pb2.FieldDescriptorProto, kind),
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, oneof_index=0)
    lists = message.nested_type.add(name="Int64List")
    lists.field.add(name="val", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                    label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    message.field.add(name="int64_list_val", number=14, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                      type_name=".testfeast.Value.Int64List", label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                      oneof_index=0)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("testfeast.Value"))


Value = value_class()


def cell(**kwargs: Any) -> bytes:
    data: bytes = Value(**kwargs).SerializeToString()
    return data


def test_field_names_and_the_key_are_the_bytes_feast_writes() -> None:
    assert feature_field("card_stats", "txn_count_1h").hex() == "ce5bad53"
    assert feature_field("card_stats", "amount_avg_30d").hex() == "61ed3bb2"
    key = FeastKey("fraud", {"card_id": ("card.id", "string")})
    assert key({"card": {"id": "c-000001"}}).hex() == (  # type: ignore[union-attr]
        "010000000200000007000000636172645f69640200000008000000632d3030303030316672617564")


def test_a_composite_key_orders_the_join_keys_by_name_and_packs_each_type() -> None:
    key = FeastKey("p", {"zone": ("z", "int32"), "account": ("a", "int64")})

    assert key({"a": -2, "z": 7}) == b"".join([
        struct.pack("<I", 2), struct.pack("<II", 2, 7), b"account", struct.pack("<II", 2, 4), b"zone",
        struct.pack("<IIq", 4, 8, -2), struct.pack("<IIi", 3, 4, 7), b"p"])
    assert key({"a": None, "z": 7}) is None, "a null join key names no row: the defaults apply"
    assert str(key) == "feast project p, account=a, zone=z"


scalar_values = st.one_of(
    st.builds(lambda v: ({"double_val": v}, v), st.floats(allow_nan=False)),
    st.builds(lambda v: ({"float_val": v}, v), st.floats(width=32, allow_nan=False)),
    st.builds(lambda v: ({"int32_val": v}, v), st.integers(-2**31, 2**31 - 1)),
    st.builds(lambda v: ({"int64_val": v}, v), st.integers(-2**63, 2**63 - 1)),
    st.builds(lambda v: ({"unix_timestamp_val": v}, v), st.integers(-2**63, 2**63 - 1)),
    st.builds(lambda v: ({"bool_val": v}, v), st.booleans()),
    st.builds(lambda v: ({"string_val": v}, v.encode()), st.text(max_size=300)),
    st.builds(lambda v: ({"bytes_val": v}, v), st.binary(max_size=200)),
    st.just(({"null_val": 0}, None)),
    st.just(({}, None)),
)


@given(st.lists(st.one_of(scalar_values, st.none()), max_size=40))
def test_decoding_agrees_with_protobuf_for_every_scalar_type_and_null(cells: list[Any]) -> None:
    raw = [None if c is None else cell(**c[0]) for c in cells]

    decoded = decode_values(raw)

    assert decoded.bad == {}
    assert decoded.values == [None if c is None else c[1] for c in cells]
    assert [type(v) for v in decoded.values] == [type(None) if c is None else type(c[1]) for c in cells]


def test_cells_no_scalar_column_can_take_are_named() -> None:
    listed = cell(int64_list_val=Value.Int64List(val=[1, 2]))
    decoded = decode_values([cell(double_val=1.5), listed, b"\x20\xff", b"\x12\x05ab", b"\x29\x00\x00"])

    assert decoded.values[0] == 1.5
    assert decoded.bad == {1: "a int64_list_val, which no scalar column can take", 2: "a corrupt varint",
                           3: "a truncated string", 4: "a field 5, which no scalar column can take"}


def test_timestamps_as_feast_writes_them() -> None:
    stamp = Timestamp(seconds=1_764_417_600, nanos=250_000_000)

    assert decode_timestamp(stamp.SerializeToString()) == 1_764_417_600.25
    assert decode_timestamp(bytes.fromhex("08b08bb0d806")) == 1_795_950_000  # 2026-11-29T11:00:00Z, from Redis
    assert math.isnan(decode_timestamp(Timestamp().SerializeToString())), "the epoch: no feature row is that old"
    assert math.isnan(decode_timestamp(None))
    assert math.isnan(decode_timestamp(b"\x1a\x00"))


@given(st.lists(st.one_of(st.none(), st.builds(lambda s, n: Timestamp(seconds=s, nanos=n).SerializeToString(),
                                               st.integers(-62135596800, 253402300799), st.integers(0, 999_999_999)),
                          st.just(b"\x10\x05"), st.just(b"\x08"), st.just(b"\x08\x01\x10")), max_size=30))
def test_timestamps_decode_in_bulk_as_one_by_one(cells: list[bytes | None]) -> None:
    bulk = decode_timestamps(cells)

    one_by_one = np.array([decode_timestamp(c) for c in cells])
    assert np.array_equal(bulk, one_by_one, equal_nan=True)


def test_rows_keep_store_errors_and_fail_only_the_key_with_an_unreadable_cell() -> None:
    ts = Timestamp(seconds=100).SerializeToString()
    wrongtype = ValueError("WRONGTYPE")
    replies = [[cell(int64_val=3), cell(double_val=0.5), ts], wrongtype,
               [cell(int64_list_val=Value.Int64List(val=[1])), cell(double_val=1.0), ts], [None, None, None]]

    rows, written = decode_rows(replies, ("count", "avg"), "card_stats")

    assert rows[0] == [3, 0.5] and rows[1] is wrongtype and rows[3] == [None, None]
    assert isinstance(rows[2], ValueError)
    assert str(rows[2]) == "feature view card_stats: count: a int64_list_val, which no scalar column can take"
    assert written[[0, 2]].tolist() == [100.0, 100.0] and np.isnan(written[[1, 3]]).all()


def feast_store(rows: dict[str, tuple[dict[str, Any], float]]) -> InMemoryFeatureStore:
    key = FeastKey("p", {"card_id": ("card_id", "string")})
    data: dict[Any, dict[Any, Any]] = {}
    for card, (values, at) in rows.items():
        fields: dict[Any, Any] = {feature_field("card_stats", f): cell(**v) for f, v in values.items()}
        fields[b"_ts:card_stats"] = Timestamp(seconds=int(at)).SerializeToString()
        data[key({"card_id": card})] = fields
    return InMemoryFeatureStore(data)


def test_a_feast_entity_fetches_decodes_and_sets_stale_rows_aside() -> None:
    now = 1_000_000.0
    store = feast_store({"fresh": ({"count": {"int64_val": 4}, "avg": {"double_val": 2.5}}, now - 60),
                         "old": ({"count": {"int64_val": 9}, "avg": {"double_val": 9.5}}, now - 7200),
                         "half": ({"count": {"int64_val": 1}}, now - 10)})
    spec = EntitySpec("card", FeastKey("p", {"card_id": ("card_id", "string")}), ("count", "avg"),
                      {"count": 0, "avg": 0.0}, FeastLayout("card_stats", ("count", "avg")), max_age_s=3600)
    records = [{"card_id": c} for c in ("fresh", "old", "none", "old", None, "half")]

    lookup = FeatureFetcher(store, [spec], clock=lambda: now).fetch(records)["card"]

    assert lookup.values == [[4, 2.5], [None, None], [None, None], [1, None]]
    assert lookup.stale is not None and lookup.stale.tolist() == [False, True, False, False]
    stale, ages = lookup.freshness()
    assert stale == 2, "one per event that read the old row"
    assert sorted(ages.tolist()) == [10.0, 60.0, 7200.0, 7200.0]


def test_plain_hashes_with_a_timestamp_field() -> None:
    now = 5000.0
    store = InMemoryFeatureStore({"c:a": {"n": 1, "at": now - 5}, "c:b": {"n": 2, "at": now - 500},
                                  "c:c": {"n": 3}, "c:d": {"n": 4, "at": "yesterday"}})
    spec = EntitySpec("card", KeyTemplate("c:{id}"), ("n",), {"n": 0}, HashLayout(("n",), "at"), max_age_s=100)
    records = [{"id": i} for i in "abcde"]

    lookup = FeatureFetcher(store, [spec], clock=lambda: now).fetch(records)["card"]

    assert lookup.values == [[b"1"], [None], [None], [None], [None]]
    assert lookup.freshness()[0] == 3, "too old, no time, an unreadable time: none can be shown fresh"
    assert lookup.stale is not None and not lookup.stale[4], "a key with no row is missing, not stale"


def test_without_max_age_the_ages_are_measured_and_nothing_is_set_aside() -> None:
    store = InMemoryFeatureStore({"c:a": {"n": 1, "at": 10}})
    spec = EntitySpec("card", KeyTemplate("c:{id}"), ("n",), {"n": 0}, HashLayout(("n",), "at"))

    lookup = FeatureFetcher(store, [spec], clock=lambda: 1e6).fetch([{"id": "a"}])["card"]

    assert lookup.values == [[b"1"]] and lookup.stale is None
    assert lookup.freshness()[1].tolist() == [1e6 - 10]


@pytest.mark.parametrize("max_age_s", [None, 60.0])
def test_describe_says_the_freshness_rule(max_age_s: float | None) -> None:
    spec = EntitySpec("card", FeastKey("fraud", {"card_id": ("card.id", "string")}), ("a", "b"), {},
                      FeastLayout("card_stats", ("a", "b")), max_age_s)
    text = spec.describe()

    assert text.startswith("card (feast project fraud, card_id=card.id, view card_stats, 2 fields)")
    if max_age_s:
        assert "over 60 s ago (by Feast's _ts:card_stats)" in text and "worker_feature_stale_total" in text
    else:
        assert "worker_feature_age_seconds; no max_age_s" in text
