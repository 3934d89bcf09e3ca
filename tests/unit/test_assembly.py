"""Model input assembly: conversions, shapes, defaults, and bad values marking only their events."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import AssemblyError, FeatureValueError
from worker.features.fetcher import EntitySpec, FeatureFetcher
from worker.features.keys import KeyTemplate
from worker.features.store import InMemoryFeatureStore
from worker.pipeline.assembly import Assembled, Assembler, ConstColumn, EventColumn, FeatureColumn, TensorSpec

CARD = EntitySpec("card", KeyTemplate("card:{card_id}"), ("count", "avg", "tier"),
                  {"count": 0, "avg": 2.5, "tier": "none"})
USER = EntitySpec("user", KeyTemplate("u:{user.id}"), ("age",), {"age": -1})


def assemble(tensors: list[TensorSpec], events: list[dict[str, Any]],
             store: InMemoryFeatureStore | None = None) -> Assembled:
    lookups = FeatureFetcher(store or InMemoryFeatureStore(), [CARD, USER]).fetch(events)
    return Assembler(tensors).assemble(events, lookups)


def event(**fields: Any) -> dict[str, Any]:
    base = {"card_id": "a", "user": {"id": 1, "country": "NL"}, "amount": 10.0, "mcc": 5411,
            "present": True, "channel": "POS", "distance": None}
    return {**base, **fields}


def test_bool_becomes_one_or_zero() -> None:
    spec = TensorSpec("x", "float32", (EventColumn("present"),))
    ints = TensorSpec("i", "int64", (EventColumn("present"),))

    feeds = assemble([spec, ints], [event(present=True), event(present=False)]).feeds

    assert feeds["x"].tolist() == [[1.0], [0.0]]
    assert feeds["x"].dtype == np.float32
    assert feeds["i"].tolist() == [[1], [0]]
    assert feeds["i"].dtype == np.int64


def test_null_takes_the_column_default() -> None:
    spec = TensorSpec("x", "float32", (EventColumn("distance", default=-1),))

    feeds = assemble([spec], [event(distance=None), event(distance=3.5)]).feeds

    assert feeds["x"].tolist() == [[-1.0], [3.5]]


def test_nested_event_fields() -> None:
    spec = TensorSpec("x", "int64", (EventColumn("user.id"),))

    assert assemble([spec], [event(user={"id": 9, "country": "BE"})]).feeds["x"].tolist() == [[9]]


def test_enum_and_int_feed_string_tensors() -> None:
    spec = TensorSpec("s", "string", (EventColumn("channel"), EventColumn("mcc"), EventColumn("user.country")))

    feeds = assemble([spec], [event(channel="ECOM", mcc=4829), event()]).feeds

    assert feeds["s"].dtype == object
    assert feeds["s"].tolist() == [["ECOM", "4829", "NL"], ["POS", "5411", "NL"]]


def test_mapping_turns_values_into_numbers_and_unmapped_into_the_default() -> None:
    spec = TensorSpec("x", "float32", (EventColumn("channel", default=-1, mapping={"POS": 0, "ECOM": 1}),))

    result = assemble([spec], [event(channel="ECOM"), event(channel="POS"), event(channel="ATM")])

    assert result.feeds["x"].tolist() == [[1.0], [0.0], [-1.0]]
    assert result.bad == {}


def test_an_unmapped_value_without_default_marks_only_its_event_bad() -> None:
    spec = TensorSpec("x", "float32", (EventColumn("channel", mapping={"POS": 0, "ECOM": 1}),))

    result = assemble([spec], [event(channel="ECOM"), event(channel="ATM"), event(channel="POS")])

    assert list(result.bad) == [1]
    assert isinstance(result.bad[1], AssemblyError)
    assert "'ATM' is not in its mapping" in result.bad[1].reason
    assert result.feeds["x"][[0, 2]].tolist() == [[1.0], [0.0]]


def test_constant_columns() -> None:
    spec = TensorSpec("x", "float32", (ConstColumn(7), EventColumn("amount")))
    text = TensorSpec("s", "string", (ConstColumn(3),))

    feeds = assemble([spec, text], [event(), event(amount=1.5)]).feeds

    assert feeds["x"].tolist() == [[7.0, 10.0], [7.0, 1.5]]
    assert feeds["s"].tolist() == [["3"], ["3"]]


def test_shapes_rank_one_n_by_one_and_n_by_k() -> None:
    tensors = [TensorSpec("flat", "float32", (EventColumn("amount"),), rank=1),
               TensorSpec("flat_text", "string", (EventColumn("channel"),), rank=1),
               TensorSpec("column", "float32", (EventColumn("amount"),)),
               TensorSpec("wide", "float64", (EventColumn("amount"), EventColumn("mcc"),
                                              FeatureColumn("card", "count", 0)))]
    events = [event(amount=float(i)) for i in range(4)]

    feeds = assemble(tensors, events).feeds

    assert feeds["flat"].shape == (4,)
    assert feeds["flat"].dtype == np.float32
    assert feeds["flat_text"].shape == (4,)
    assert feeds["flat_text"].tolist() == ["POS"] * 4
    assert feeds["column"].shape == (4, 1)
    assert feeds["wide"].shape == (4, 3)
    assert feeds["wide"].dtype == np.float64
    assert feeds["wide"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_missing_entities_and_fields_take_defaults_and_are_counted() -> None:
    store = InMemoryFeatureStore({"card:a": {"count": 3, "avg": "1.25", "tier": "gold"}, "card:b": {"count": 4},
                                  "u:1": {"age": 40}})
    spec = TensorSpec("x", "float32", (FeatureColumn("card", "count", 0), FeatureColumn("card", "avg", 2.5),
                                       FeatureColumn("user", "age", -1)))
    tier = TensorSpec("t", "string", (FeatureColumn("card", "tier", "none"),))
    events = [event(card_id="a"), event(card_id="b", user={"id": 2, "country": "NL"}),
              event(card_id="zz", user={"id": 3, "country": "NL"}), event(card_id="a", user=None)]

    result = assemble([spec, tier], events, store)

    assert result.feeds["x"].tolist() == [[3, 1.25, 40], [4, 2.5, -1], [0, 2.5, -1], [3, 1.25, -1]]
    assert result.feeds["t"].tolist() == [["gold"], ["none"], ["none"], ["gold"]]
    assert result.defaulted == {"card": 5, "user": 3}  # values that fell back to a default, per entity
    assert result.bad == {}


def test_a_non_numeric_feature_marks_only_the_events_using_that_key() -> None:
    store = InMemoryFeatureStore({"card:a": {"count": "3"}, "card:bad": {"count": "three"}, "card:c": {"count": 5}})
    spec = TensorSpec("x", "float32", (FeatureColumn("card", "count", 0), EventColumn("amount")))
    events = [event(card_id=c) for c in ("a", "bad", "c", "bad", "new")]

    result = assemble([spec], events, store)

    assert sorted(result.bad) == [1, 3]
    for row in (1, 3):
        error = result.bad[row]
        assert isinstance(error, FeatureValueError)
        assert error.stage == "features"
        assert "card.count of 'card:bad'" in error.reason
        assert "b'three'" in error.reason
    assert result.feeds["x"][[0, 2, 4], 0].tolist() == [3.0, 5.0, 0.0]


def test_a_text_field_feeding_only_a_string_tensor_is_not_parsed_as_a_number() -> None:
    store = InMemoryFeatureStore({"card:a": {"count": "3", "tier": "gold"}, "card:b": {"count": "4", "tier": "silver"}})
    numeric = TensorSpec("x", "float32", (FeatureColumn("card", "count", 0),))
    text = TensorSpec("t", "string", (FeatureColumn("card", "tier", "none"),))

    result = assemble([numeric, text], [event(card_id="a"), event(card_id="b"), event(card_id="c")], store)

    assert result.bad == {}
    assert result.feeds["x"].tolist() == [[3.0], [4.0], [0.0]]
    assert result.feeds["t"].tolist() == [["gold"], ["silver"], ["none"]]


class ErrorForKeyStore(InMemoryFeatureStore):
    """Answers one key with an error, as Redis does for a key of the wrong type."""

    def fetch(self, requests: Any) -> Any:
        answers = super().fetch(requests)
        for (_, keys), values in zip(requests, answers, strict=True):
            for i, key in enumerate(keys):
                if key == "card:wrongtype":
                    values[i] = ValueError("WRONGTYPE Operation against a key holding the wrong kind of value")
        return answers


def test_a_store_error_for_one_key_marks_only_its_events() -> None:
    store = ErrorForKeyStore({"card:a": {"count": 1, "tier": "gold"}})
    numeric = TensorSpec("x", "float32", (FeatureColumn("card", "count", 0),))
    text = TensorSpec("t", "string", (FeatureColumn("card", "tier", "none"),))
    events = [event(card_id="a"), event(card_id="wrongtype"), event(card_id="a")]

    result = assemble([numeric, text], events, store)

    assert list(result.bad) == [1]
    assert "the store answered WRONGTYPE" in result.bad[1].reason
    assert result.feeds["x"][[0, 2], 0].tolist() == [1.0, 1.0]
    assert result.feeds["t"][[0, 2], 0].tolist() == ["gold", "gold"]


def test_float32_rounds_like_numpy_from_python_floats() -> None:
    values = [0.1, 1 / 3, 16777217.0, 3.4028234663852886e38, 1e-45, 2.5e-8, 123456.789, -0.0]
    store = InMemoryFeatureStore({f"card:{i}": {"avg": repr(v)} for i, v in enumerate(values)})
    spec = TensorSpec("x", "float32", (EventColumn("amount"), FeatureColumn("card", "avg", 2.5)))
    events = [event(card_id=str(i), amount=v) for i, v in enumerate(values)]

    got = assemble([spec], events, store).feeds["x"]

    want = np.asarray([[v, v] for v in values], dtype=np.float32)
    assert got.tobytes() == want.tobytes()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(allow_nan=False, width=64), st.integers(-(2**53), 2**53)), min_size=1,
                max_size=20))
def test_float32_rounding_property(rows: list[tuple[float, int]]) -> None:
    store = InMemoryFeatureStore({f"card:{i}": {"avg": repr(f)} for i, (f, _) in enumerate(rows)})
    spec = TensorSpec("x", "float32", (EventColumn("amount"), EventColumn("mcc"), FeatureColumn("card", "avg", 0)))
    events = [event(card_id=str(i), amount=f, mcc=n) for i, (f, n) in enumerate(rows)]

    with np.errstate(over="ignore"):
        got = assemble([spec], events, store).feeds["x"]
        want = np.asarray([[f, n, f] for f, n in rows], dtype=np.float32)

    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", ["float64", "int64", "int32"])
def test_other_numeric_tensor_types(dtype: str) -> None:
    store = InMemoryFeatureStore({"card:a": {"count": "7"}})
    spec = TensorSpec("x", dtype, (EventColumn("mcc"), FeatureColumn("card", "count", 0), EventColumn("present")))

    feeds = assemble([spec], [event(card_id="a"), event(card_id="b", present=False)], store).feeds

    assert feeds["x"].dtype == np.dtype(dtype)
    assert feeds["x"].tolist() == [[5411, 7, 1], [5411, 0, 0]]


def test_an_empty_batch_assembles_empty_tensors() -> None:
    spec = TensorSpec("x", "float32", (EventColumn("amount"), FeatureColumn("card", "count", 0)))

    feeds = Assembler([spec]).assemble([], FeatureFetcher(InMemoryFeatureStore(), [CARD]).fetch([])).feeds

    assert feeds["x"].shape == (0, 2)


def test_a_double_too_large_for_float32_dead_letters_its_event_only() -> None:
    wide = TensorSpec("x", "float32", (EventColumn("amount"), ConstColumn(1)))
    flat = TensorSpec("y", "float32", (EventColumn("amount"),), rank=1)

    result = assemble([wide, flat], [event(amount=1e39), event(amount=5.0), event(amount=float("inf"))])

    assert sorted(result.bad) == [0], "an infinity in the data itself is passed on"
    assert isinstance(result.bad[0], AssemblyError)
    assert "1e+39" in result.bad[0].reason and "float32" in result.bad[0].reason
    assert result.feeds["x"][1].tolist() == [5.0, 1.0]
