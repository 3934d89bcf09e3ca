"""The hands-on commands' pure parts: sources of items, validation, encoding, feature hashes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from worker.app.tools import entity_matcher
from worker.cli.tail import render
from worker.codecs.avro import PlainAvroDecoder, PlainAvroEncoder
from worker.codecs.explain import mismatch
from worker.codecs.schemas import load_schema
from worker.config.settings import load_settings
from worker.devtools.console import ProgressLine
from worker.devtools.loader import hash_fields, load_hashes
from worker.devtools.sender import EventSender
from worker.devtools.sources import generated, json_lines
from worker.errors import ToolError
from worker.records import InputMessage

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "config" / "fraud-example.yaml"
SCHEMA = load_schema(REPO / "schemas" / "fraud" / "transaction.avsc")


def transaction(**changes: Any) -> dict[str, Any]:
    record = {"event_id": "t1", "event_time": 1_700_000_000_000, "amount": 12.5, "currency": "EUR",
              "channel": "ECOM", "card": {"id": "c-1", "present": False},
              "merchant": {"id": "m-1", "category": 5411, "country": "DE"},
              "device": {"id": "d-1", "ip_country": None}, "distance_from_home_km": None}
    return {**record, **changes}


class FakeProducer:
    """Stands in for confluent_kafka.Producer: keeps what is produced and acknowledges on poll."""

    def __init__(self, fail: bool = False) -> None:
        self.messages: list[tuple[str, bytes, bytes | None]] = []
        self.pending: list[Any] = []
        self.fail = fail

    def produce(self, topic: str, value: bytes, key: bytes | None = None, on_delivery: Any = None,
                headers: Any = None) -> None:
        self.messages.append((topic, value, key))
        self.pending.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        for callback in self.pending:
            callback(FakeError() if self.fail else None, None)
        self.pending.clear()
        return 0

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


class FakeError:
    def str(self) -> str:
        return "broker said no"


def write_lines(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_json_lines_parses_each_line_and_reports_bad_ones_in_place(tmp_path: Path) -> None:
    path = write_lines(tmp_path, '{"a": 1}', "", "  ", "{oops", "[2]")
    items = list(json_lines(path))
    assert [where for where, _ in items] == [f"{path}:1", f"{path}:4", f"{path}:5"]
    assert items[0][1] == {"a": 1} and items[2][1] == [2]
    assert isinstance(items[1][1], ToolError) and "not JSON" in str(items[1][1])


def test_json_lines_loops_and_stops_on_an_empty_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path, '{"a": 1}', '{"a": 2}')
    looped = json_lines(path, loop=True)
    assert [next(looped)[1]["a"] for _ in range(5)] == [1, 2, 1, 2, 1]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert list(json_lines(empty, loop=True)) == []
    with pytest.raises(ToolError, match="cannot read"):
        list(json_lines(tmp_path / "missing.jsonl"))


def test_a_generator_gets_only_the_arguments_it_takes(tmp_path: Path) -> None:
    source = tmp_path / "gen.py"
    source.write_text("def counted(n):\n    yield from ({'i': i} for i in range(n))\n\n"
                      "def anything(**kw):\n    yield kw\n\n"
                      "def plain():\n    return [{'x': 1}]\n")
    assert [item for _, item in generated(f"{source}:counted", n=3, seed=9)] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [item for _, item in generated(f"{source}:anything", n=None, seed=9)] == [{"seed": 9}]
    assert [item for _, item in generated(f"{source}:plain", n=3, seed=9)] == [{"x": 1}]


@pytest.mark.parametrize(("spec", "message"), [
    ("nothing-here", "path/to/file.py:function"),
    ("missing.py:f", "no such file"),
    ("{file}:absent", "has no function 'absent'"),
    ("{broken}:f", "cannot load"),
    ("{file}:fails", r"RuntimeError: boom \(at .*gen.py:5\)"),
])
def test_generator_mistakes_are_clear_errors(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "gen.py").write_text("x = 1\n\n\ndef fails():\n    raise RuntimeError('boom')\n    yield\n")
    (tmp_path / "broken.py").write_text("def f(:\n")
    spec = spec.format(file=tmp_path / "gen.py", broken=tmp_path / "broken.py")
    with pytest.raises(ToolError, match=message):
        list(generated(spec))


@pytest.mark.parametrize(("change", "problem"), [
    ({"amount": "12"}, "amount: expected double, got string '12'"),
    ({"card": {"id": "c-1", "present": "yes"}}, "card.present: expected boolean, got string 'yes'"),
    ({"channel": "WIRE"}, "channel: 'WIRE' is not one of"),
    ({"device": {"id": 7}}, "device.id: expected string, got integer 7"),
    ({"device": "d-1"}, "device: expected null or Device, got string 'd-1'"),
    ({"distance_km": 3.0}, "distance_km: not a field of Transaction"),
    ({"merchant": {"id": "m", "category": 2**40, "country": "DE"}}, "merchant.category: expected int"),
])
def test_mismatch_names_the_field_and_the_problem(change: dict[str, Any], problem: str) -> None:
    assert mismatch(transaction(), SCHEMA) is None
    found = mismatch(transaction(**change), SCHEMA)
    assert found is not None and found.startswith(problem)


def test_mismatch_reports_a_missing_field_without_default() -> None:
    record = transaction()
    del record["event_time"], record["device"]  # device has a default, event_time has none
    assert mismatch(record, SCHEMA) == "event_time: missing"


def test_the_sender_encodes_keys_and_rejects_with_reasons() -> None:
    producer = FakeProducer()
    sender = EventSender(producer, "tx", SCHEMA, PlainAvroEncoder(SCHEMA), key_path="card.id")
    assert sender.send("line 1", transaction())
    assert not sender.send("line 2", transaction(amount="x"))
    assert not sender.send("line 3", ["not", "a", "record"])
    assert not sender.send("line 4", ToolError("not JSON"))
    sender.flush()
    topic, value, key = producer.messages[0]
    assert (topic, key, len(producer.messages)) == ("tx", b"c-1", 1)
    assert PlainAvroDecoder(SCHEMA)(value, InputMessage(value)) == transaction()
    tally = sender.tally
    assert (tally.sent, tally.delivered, tally.rejected) == (1, 1, 3)
    assert tally.problems[0].startswith("line 2: amount: expected double")
    assert tally.problems[1:] == ["line 3: an event must be a JSON object, not list", "line 4: not JSON"]


def test_poison_truncates_about_the_share_asked_and_failures_are_counted() -> None:
    producer = FakeProducer(fail=True)
    sender = EventSender(producer, "tx", SCHEMA, PlainAvroEncoder(SCHEMA), poison=0.2, seed=1)
    for i in range(500):
        sender.send(str(i), transaction())
    sender.flush()
    full = len(PlainAvroEncoder(SCHEMA)(transaction(), InputMessage(None)))
    short = [v for _, v, _ in producer.messages if len(v) < full]
    assert len(short) == sender.tally.poisoned and 60 < len(short) < 140
    assert sender.tally.failed == 500 and "broker said no" in sender.tally.problems[0]


def test_hash_fields_writes_numbers_exactly_and_rejects_bad_items() -> None:
    key, fields = hash_fields({"key": "fraud:card:c-1", "fields": {"a": 0.1, "b": 3, "c": True, "d": "x", "e": None}})
    assert key == "fraud:card:c-1"
    assert fields == {"a": "0.1", "b": "3", "c": "1", "d": "x"}
    assert float(hash_fields({"key": "k", "fields": {"f": 1 / 3}})[1]["f"]) == 1 / 3
    for bad in ({"fields": {"a": 1}}, {"key": "k"}, {"key": "k", "fields": {}}, {"key": "k", "fields": {"a": [1]}},
                "text"):
        with pytest.raises(ValueError):
            hash_fields(bad)


class FakePipeline:
    def __init__(self, store: dict[str, Any]) -> None:
        self.store = store
        self.ops: list[tuple[str, str, dict[str, str] | None]] = []

    def delete(self, key: str) -> None:
        self.ops.append(("del", key, None))

    def hset(self, key: str, mapping: dict[str, str]) -> None:
        self.ops.append(("hset", key, mapping))

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        results: list[Any] = []
        for op, key, mapping in self.ops:
            if op == "del":
                results.append(int(self.store.pop(key, None) is not None))
            elif isinstance(self.store.get(key), str):
                results.append(RuntimeError("WRONGTYPE Operation against a key holding the wrong kind of value"))
            else:
                self.store.setdefault(key, {}).update(mapping or {})
                results.append(len(mapping or {}))
        self.ops.clear()
        return results


class FakeRedis:
    def __init__(self) -> None:
        self.store: dict[str, Any] = {"fraud:card:taken": "a string"}
        self.round_trips = 0

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        self.round_trips += 1
        return FakePipeline(self.store)


def test_load_hashes_chunks_counts_and_notes_what_the_config_does_not_read() -> None:
    settings = load_settings(CONFIG)
    items = [("1", {"key": "fraud:card:c-1", "fields": {"txn_count_1h": 2, "colour": "red"}}),
             ("2", {"key": "fraud:merchant:m-1", "fields": {"fraud_rate_30d": 0.02}}),
             ("3", {"key": "elsewhere:x", "fields": {"a": 1}}),
             ("4", {"key": "fraud:card:taken", "fields": {"txn_count_1h": 1}}),
             ("5", ToolError("not JSON")),
             ("6", {"key": "fraud:device:d-1", "fields": {"age_days": 3}})]
    client = FakeRedis()
    tally = load_hashes(client, items, entity_matcher(settings), chunk=2)
    assert (tally.written, tally.failed, tally.rejected) == (4, 1, 1)
    assert client.round_trips == 3
    assert client.store["fraud:card:c-1"] == {"txn_count_1h": "2", "colour": "red"}
    assert tally.per_entity == {"card": 2, "merchant": 1, "device": 1, "(no entity)": 1}
    assert dict(tally.unknown_fields) == {"card.colour": 1}
    assert any("WRONGTYPE" in p for p in tally.problems) and "5: not JSON" in tally.problems
    replaced = load_hashes(client, [("7", {"key": "fraud:card:taken", "fields": {"txn_count_1h": 1}})],
                           entity_matcher(settings), replace=True)
    assert (replaced.written, replaced.failed) == (1, 0)
    assert client.store["fraud:card:taken"] == {"txn_count_1h": "1"}


def test_render_shows_a_dead_letter_with_its_headers_and_raw_bytes() -> None:
    decode = PlainAvroDecoder(SCHEMA)
    message = InputMessage(b"\x02\x05", b"c-1", "tx-dlq", 2, 7, [("dlq.error.stage", b"decode")])
    out = render(message, decode, dead_letter=True, meta=False)
    assert out["headers"] == {"dlq.error.stage": "decode"}
    assert (out["partition"], out["offset"], out["key"], out["value_hex"], out["value_bytes"]) == (2, 7, "c-1",
                                                                                                   "0205", 2)
    value = PlainAvroEncoder(SCHEMA)(transaction(), InputMessage(None))
    assert render(InputMessage(value), decode, dead_letter=False, meta=False) == transaction()


def test_a_progress_line_in_a_log_is_printed_at_intervals_only() -> None:
    stream = io.StringIO()
    progress = ProgressLine(stream, interval_s=3600)
    progress.update("half way")
    progress.above("a row", stream)
    progress.done("finished")
    progress.done()
    assert stream.getvalue() == "a row\nfinished\n"
