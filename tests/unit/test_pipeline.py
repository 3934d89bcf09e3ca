"""The batch pipeline with in-memory twins: bad events are dead-lettered, the rest are scored."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import numpy as np
import pytest

from worker.codecs.avro import PlainAvroDecoder, PlainAvroEncoder
from worker.codecs.schemas import parse_schema
from worker.errors import FeatureStoreUnavailable
from worker.features.fetcher import EntitySpec, FeatureFetcher
from worker.features.keys import KeyTemplate
from worker.features.store import InMemoryFeatureStore
from worker.inference import FunctionModel, TensorInfo
from worker.pipeline.assembly import Assembler, EventColumn, FeatureColumn, TensorSpec
from worker.pipeline.deadline import LATE_HEADER, Deadline
from worker.pipeline.output import Computed, FromEvent, FromModel, KeySpec, OutputBuilder, ScoreSpec
from worker.pipeline.pipeline import Pipeline
from worker.records import InputMessage
from worker.serving import ModelSlot

EVENT = parse_schema({"type": "record", "name": "Payment", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "card_id", "type": "string"},
    {"name": "amount", "type": "double"}, {"name": "currency", "type": "string"}]})
PREDICTION = parse_schema({"type": "record", "name": "Prediction", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "score", "type": "double"}, {"name": "flagged", "type": "boolean"},
    {"name": "raw", "type": "float"}, {"name": "version", "type": "string"},
    {"name": "currency", "type": {"type": "enum", "name": "Currency", "symbols": ["EUR", "USD"]}}]})
CARD = EntitySpec("card", KeyTemplate("card:{card_id}"), ("count",), {"count": 0})
POISON_AMOUNT = 666.0


def scores(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(x[:, 0] / 100 + x[:, 1] / 10)))


def model_fn(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    x = feeds["x"]
    if np.any(x[:, 0] == POISON_AMOUNT):
        raise RuntimeError("model cannot handle 666")
    p = scores(x.astype(np.float64)).astype(np.float32)
    return {"probabilities": np.stack([1 - p, p], axis=1), "raw": x[:, :1] * 2}


def make_model(version: str = "1") -> FunctionModel:
    return FunctionModel(model_fn, [TensorInfo("x", "float32", (None, 2))],
                         [TensorInfo("probabilities", "float32", (None, 2)), TensorInfo("raw", "float32", (None, 1))],
                         name="twin", version=version)


def make_pipeline(store: InMemoryFeatureStore, model: FunctionModel | None = None) -> Pipeline:
    builder = OutputBuilder({"event_id": FromEvent("event_id"), "score": Computed("score"),
                             "flagged": Computed("label"), "raw": FromModel("raw", 0),
                             "version": Computed("model_version"), "currency": FromEvent("currency")},
                            ScoreSpec("probabilities", 1, 0.5), KeySpec("card_id"))
    tensors = [TensorSpec("x", "float32", (EventColumn("amount"), FeatureColumn("card", "count", 0)))]
    return Pipeline(PlainAvroDecoder(EVENT), FeatureFetcher(store, [CARD]), Assembler(tensors),
                    ModelSlot(model or make_model()), builder, PlainAvroEncoder(PREDICTION))


def payment(i: int, amount: float | None = None, currency: str = "EUR", card: str | None = None) -> InputMessage:
    card_id = card or f"c{i % 3}"
    record = {"event_id": f"e{i}", "card_id": card_id, "amount": float(i) if amount is None else amount,
              "currency": currency}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, EVENT, record)
    return InputMessage(buf.getvalue(), card_id.encode(), "payments", i % 2, 100 + i, [("trace", b"t%d" % i)])


def read(value: bytes | None, schema: dict[str, Any]) -> dict[str, Any]:
    record = fastavro.schemaless_reader(io.BytesIO(value or b""), schema)
    assert isinstance(record, dict)
    return record


def decoded(value: bytes) -> dict[str, Any]:
    return read(value, PREDICTION)


STORE = {"card:c0": {"count": "1"}, "card:c1": {"count": "2"}, "card:c2": {"count": "3"}}


def expected_score(message: InputMessage) -> float:
    record = read(message.value(), EVENT)
    count = float(STORE.get(f"card:{record['card_id']}", {}).get("count", 0))
    x = np.asarray([[record["amount"], count]], dtype=np.float32)
    return float(scores(x.astype(np.float64)).astype(np.float32)[0])


def test_a_clean_batch_is_scored_in_input_order() -> None:
    messages = [payment(i) for i in range(10)]

    result = make_pipeline(InMemoryFeatureStore(dict(STORE))).process(messages)

    assert result.dead_letters == []
    assert [o.source for o in result.outputs] == messages
    assert [o.key for o in result.outputs] == [m.key() for m in messages]
    for output, message in zip(result.outputs, messages, strict=True):
        record = decoded(output.value)
        assert record["event_id"] == f"e{message.offset() - 100}"
        assert record["score"] == pytest.approx(expected_score(message), abs=1e-7)
        assert record["flagged"] == (record["score"] >= 0.5)
        assert record["version"] == "1"
    assert [t.stage for t in result.timings] == ["decode", "features", "assemble", "inference", "encode"]
    assert result.model_version == "1"


def test_poison_events_are_dead_lettered_as_they_came_and_the_rest_scored() -> None:
    messages = [payment(i) for i in range(8)]
    truncated = InputMessage(messages[2].value()[:5], b"k2", "payments", 0, 7)  # type: ignore[index]
    garbage = InputMessage(b"\xff" * 30, b"k5", "payments", 1, 8, [("h", b"v")])
    tombstone = InputMessage(None, b"k6", "payments", 1, 9)
    batch = [*messages[:2], truncated, *messages[2:5], garbage, tombstone, *messages[5:]]

    result = make_pipeline(InMemoryFeatureStore(dict(STORE))).process(batch)

    assert [d.message for d in result.dead_letters] == [truncated, garbage, tombstone]
    assert all(d.stage == "decode" for d in result.dead_letters)
    # the library's error names the type; a tombstone has none
    assert [d.error_type for d in result.dead_letters] == ["EOFError", "IndexError", "DecodeError"]
    assert result.dead_letters[2].reason == "the message has no value (a tombstone)"
    assert result.dead_letters[0].message.value() == messages[2].value()[:5]  # type: ignore[index]
    assert [o.source for o in result.outputs] == messages
    assert [decoded(o.value)["event_id"] for o in result.outputs] == [f"e{i}" for i in range(8)]


def test_rows_the_model_fails_on_are_isolated_and_the_rest_scored() -> None:
    model = make_model()
    messages = [payment(i, amount=POISON_AMOUNT if i in (3, 11, 12) else None) for i in range(20)]

    result = make_pipeline(InMemoryFeatureStore(dict(STORE)), model).process(messages)

    dead = result.dead_letters
    assert [d.message for d in dead] == [messages[3], messages[11], messages[12]]
    assert {d.stage for d in dead} == {"inference"}
    assert "model cannot handle 666" in dead[0].reason
    scored = [m for i, m in enumerate(messages) if i not in (3, 11, 12)]
    assert [o.source for o in result.outputs] == scored
    for output, message in zip(result.outputs, scored, strict=True):
        record = decoded(output.value)
        assert record["score"] == pytest.approx(expected_score(message), abs=1e-7)
        assert record["raw"] == pytest.approx(2 * (message.offset() - 100))
    assert model.calls > 1


def test_a_model_failing_on_every_row_dead_letters_the_batch() -> None:
    messages = [payment(i, amount=POISON_AMOUNT) for i in range(5)]

    result = make_pipeline(InMemoryFeatureStore(dict(STORE))).process(messages)

    assert result.outputs == []
    assert [d.message for d in result.dead_letters] == messages


def test_the_feature_store_being_down_fails_the_batch_instead_of_dead_lettering_it() -> None:
    store = InMemoryFeatureStore(dict(STORE))
    store.available = False

    with pytest.raises(FeatureStoreUnavailable):
        make_pipeline(store).process([payment(i) for i in range(4)])


def test_a_bad_feature_value_dead_letters_only_the_events_of_that_key() -> None:
    messages = [payment(i, card="bad" if i in (1, 4) else None) for i in range(6)]

    result = make_pipeline(InMemoryFeatureStore({**STORE, "card:bad": {"count": "n/a"}})).process(messages)

    assert [d.message for d in result.dead_letters] == [messages[1], messages[4]]
    assert {d.stage for d in result.dead_letters} == {"features"}
    assert [o.source for o in result.outputs] == [messages[i] for i in (0, 2, 3, 5)]


def test_an_unencodable_prediction_dead_letters_only_its_event() -> None:
    messages = [payment(i, currency="GBP" if i == 2 else "EUR") for i in range(4)]

    result = make_pipeline(InMemoryFeatureStore(dict(STORE))).process(messages)

    assert [(d.message, d.stage) for d in result.dead_letters] == [(messages[2], "encode")]
    assert [o.source for o in result.outputs] == [messages[i] for i in (0, 1, 3)]


def test_a_batch_of_only_poison_never_calls_the_model() -> None:
    model = make_model()
    store = InMemoryFeatureStore(dict(STORE))

    result = make_pipeline(store, model).process([InputMessage(b"\x01"), InputMessage(None)])

    assert len(result.dead_letters) == 2
    assert result.outputs == []
    assert (model.calls, store.calls) == (0, 0)


def test_a_swapped_model_serves_from_the_next_batch() -> None:
    pipeline = make_pipeline(InMemoryFeatureStore(dict(STORE)))

    first = pipeline.process([payment(1)])
    previous = pipeline.slot.swap(make_model(version="2"))
    second = pipeline.process([payment(2)])

    assert previous.version == "1"
    assert (first.model_version, second.model_version) == ("1", "2")
    assert decoded(second.outputs[0].value)["version"] == "2"


NOW = 1_800_000_000.0
LATE_PREDICTION = parse_schema({"type": "record", "name": "LatePrediction", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "late", "type": "boolean"}]})


def stamped(i: int, age_s: float) -> InputMessage:
    m = payment(i)
    return InputMessage(m.value(), m.key(), m.topic(), m.partition(), m.offset(), m.headers(),
                        (1, int((NOW - age_s) * 1000)))


def deadline_pipeline(deadline: Deadline) -> Pipeline:
    builder = OutputBuilder({"event_id": FromEvent("event_id"), "late": Computed("late")},
                            ScoreSpec("probabilities", 1, 0.5), KeySpec("card_id"))
    tensors = [TensorSpec("x", "float32", (EventColumn("amount"), FeatureColumn("card", "count", 0)))]
    return Pipeline(PlainAvroDecoder(EVENT), FeatureFetcher(InMemoryFeatureStore(dict(STORE)), [CARD]),
                    Assembler(tensors), ModelSlot(make_model()), builder, PlainAvroEncoder(LATE_PREDICTION),
                    deadline=deadline)


# Ages of events 0..5 by their Kafka timestamps: 1, 2 and 5 are past a 5 s deadline; 4 has no timestamp.
AGES = {0: 0.2, 1: 60.0, 2: 5.5, 3: 4.9, 5: 3600.0}


def aged_batch() -> list[InputMessage]:
    return [stamped(i, AGES[i]) if i in AGES else payment(i) for i in range(6)]


def test_expired_events_are_dead_lettered_byte_for_byte_with_their_age() -> None:
    messages = aged_batch()

    result = deadline_pipeline(Deadline(5.0, "dead-letter", clock=lambda: NOW)).process(messages)

    assert [o.source for o in result.outputs] == [messages[i] for i in (0, 3, 4)]
    assert [(d.message, d.stage, d.error_type) for d in result.dead_letters] == [
        (messages[i], "deadline", "EventExpired") for i in (1, 2, 5)]
    assert result.dead_letters[0].reason == "event 60.0 s old when consumed, over the deadline of 5 s"
    assert result.expired == {"dead-letter": 3}
    assert all(o.headers is None and not decoded_late(o.value)["late"] for o in result.outputs)


def decoded_late(value: bytes) -> dict[str, Any]:
    return read(value, LATE_PREDICTION)


def test_expired_events_can_be_skipped_or_scored_and_marked_late() -> None:
    messages = aged_batch()

    skipped = deadline_pipeline(Deadline(5.0, "skip", clock=lambda: NOW)).process(messages)
    late = deadline_pipeline(Deadline(5.0, "score-late", clock=lambda: NOW)).process(messages)

    assert [o.source for o in skipped.outputs] == [messages[i] for i in (0, 3, 4)] and skipped.dead_letters == []
    assert skipped.expired == {"skip": 3}
    assert [o.source for o in late.outputs] == messages and late.expired == {"score-late": 3}
    assert [o.headers == LATE_HEADER for o in late.outputs] == [i in (1, 2, 5) for i in range(6)]
    assert [decoded_late(o.value)["late"] for o in late.outputs] == [i in (1, 2, 5) for i in range(6)]


def test_the_event_time_field_decides_when_one_is_configured() -> None:
    messages = [stamped(i, 0.0) for i in range(8)]  # fresh by their Kafka timestamps
    deadline = Deadline(5.0, "dead-letter", event_time=lambda r: NOW - r["amount"], clock=lambda: NOW)

    result = deadline_pipeline(deadline).process(messages)

    assert [d.message for d in result.dead_letters] == messages[6:], "amount 6 and 7: six and seven seconds old"
