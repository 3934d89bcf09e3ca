"""Which input fields the worker's decoder reads (``event_fields``), and that skipping the others
changes nothing the pipeline produces."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
from pathlib import Path
from typing import Any, get_args

import fastavro
import pytest

from tests.support.configs import changed, fraud_config, write_config
from tests.support.infra import repo_root
from worker.app.components import make_codecs, make_pipeline
from worker.codecs.avro import ConfluentAvroDecoder, PlainAvroDecoder
from worker.codecs.registry import InMemorySchemaRegistry
from worker.codecs.schemas import parse_schema
from worker.config import compile as compile_module
from worker.config.compile import Compiled, compile_settings, event_fields
from worker.config.settings import WorkerSettings, load_settings
from worker.features.store import InMemoryFeatureStore
from worker.pipeline.assembly import Column
from worker.pipeline.output import Computed, KeySpec, OutputBuilder, Source, Special
from worker.records import InputMessage, Output

FRAUD_READS = {"event_id", "card_id", "merchant_id", "amount", "mcc", "card_present", "distance_from_home_km"}


@pytest.fixture(autouse=True)
def _no_worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WORKER_"):
            monkeypatch.delenv(name)


def _compiled(tmp_path: Path, **changes: Any) -> tuple[WorkerSettings, Compiled]:
    settings = load_settings(write_config(tmp_path / "c.yaml", changed(fraud_config(), **changes)))
    return settings, compile_settings(settings)


def _only_entities(compiled: Compiled) -> Compiled:
    """The same, with no model column nor output field reading the event: the entity keys alone."""
    builder = OutputBuilder({}, compiled.builder.score, KeySpec(None))
    return dataclasses.replace(compiled, tensors=[], builder=builder)


def test_the_fraud_contract_reads_its_keys_columns_and_output_fields(tmp_path: Path) -> None:
    settings, compiled = _compiled(tmp_path)
    assert event_fields(settings, compiled) == FRAUD_READS  # currency, channel and event_time are skipped


def test_the_event_time_field_is_read_when_configured(tmp_path: Path) -> None:
    settings, compiled = _compiled(tmp_path, **{"telemetry.event_time_field": "event_time",
                                                "batch.max_event_age_ms": 60_000})
    assert event_fields(settings, compiled) == {*FRAUD_READS, "event_time"}


def test_each_reader_adds_its_fields(tmp_path: Path) -> None:
    settings, compiled = _compiled(tmp_path, **{
        "model.inputs.features.columns.0": {"event": "channel", "mapping": {"POS": 1}, "default": 0},
        "output.key": "currency", "output.fields.card_id": "merchant_id"})
    assert event_fields(settings, compiled) == {*FRAUD_READS - {"amount"}, "channel", "currency"}
    assert event_fields(settings, _only_entities(compiled)) == {"card_id", "merchant_id"}


@pytest.mark.parametrize("config", ["fraud-example.yaml", "fraud-feast.yaml", "eta-example.yaml"])
def test_nested_paths_read_their_top_level_field(config: str) -> None:
    settings = load_settings(repo_root() / "deploy" / "config" / config)
    compiled = compile_settings(settings)
    fields = event_fields(settings, compiled)
    assert fields is not None and all("." not in f for f in fields)
    if config != "eta-example.yaml":  # fraud:card:{card.id} and Feast's {card_id: card.id} alike (+ telemetry's)
        assert event_fields(settings, _only_entities(compiled)) == {"card", "merchant", "device", "event_time"}


def test_a_reader_of_an_unknown_kind_turns_projection_off(tmp_path: Path) -> None:
    settings, compiled = _compiled(tmp_path)
    b = compiled.builder
    new_special = OutputBuilder({**b.fields, "x": Computed("echo")}, b.score, b.key)  # type: ignore[arg-type]
    assert event_fields(settings, dataclasses.replace(compiled, builder=new_special)) is None
    new_source = OutputBuilder({**b.fields, "x": object()}, b.score, b.key)  # type: ignore[dict-item]
    assert event_fields(settings, dataclasses.replace(compiled, builder=new_source)) is None
    tensor = dataclasses.replace(compiled.tensors[0], columns=(*compiled.tensors[0].columns, object()))
    assert event_fields(settings, dataclasses.replace(compiled, tensors=[tensor])) is None
    entity = dataclasses.replace(compiled.entities[0], key=lambda record: "k")
    assert event_fields(settings, dataclasses.replace(compiled, entities=[entity])) is None


def test_every_kind_of_reader_is_known_to_event_fields() -> None:
    """A new special, output source or column type is a new reader of events, perhaps of the whole
    event: it falls back to whole events until ``event_fields`` is taught what it reads."""
    assert set(get_args(Special)) == compile_module._EVENTLESS_SPECIALS
    assert {t.__name__ for t in get_args(Source)} == {"FromEvent", "FromModel", "Computed", "Constant"}
    assert {t.__name__ for t in get_args(Column)} == {"EventColumn", "FeatureColumn", "ConstColumn"}


# Where decoded events are read. A module that starts reading them (a field path, the batch's
# events) must be known to ``event_fields`` first: this list is the reminder. (The monitor's join
# reads predictions and labels with decoders of its own; the demo's sender keys the events it makes.)
EVENT_READERS = {
    "path_getter(": {"worker/features/feast.py", "worker/features/keys.py", "worker/pipeline/assembly.py",
                     "worker/pipeline/output.py", "worker/records.py", "worker/monitoring/join.py",
                     "worker/devtools/sender.py"},
    "result.events": {"worker/pipeline/pipeline.py", "worker/telemetry/drift.py", "worker/telemetry/metrics.py"},
}


@pytest.mark.parametrize("reader", list(EVENT_READERS))
def test_the_readers_of_decoded_events_are_the_known_ones(reader: str) -> None:
    root = repo_root()
    found = {str(p.relative_to(root)) for p in (root / "worker").rglob("*.py") if reader in p.read_text()}
    assert found == EVENT_READERS[reader], "a new reader of events: teach worker.config.compile.event_fields"


def _event(i: int) -> InputMessage:
    record = {"event_id": f"e{i}", "card_id": f"c{i % 3}", "merchant_id": "m0001", "amount": 10.0 + i,
              "currency": "EUR", "mcc": 5411 + i, "card_present": i % 2 == 0, "channel": "ECOM",
              "distance_from_home_km": None if i % 4 else 3.5, "event_time": 1_700_000_000_000 + i}
    schema = fastavro.parse_schema(json.loads(Path(fraud_config()["avro"]["input_schema"]).read_text()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return InputMessage(buf.getvalue(), record["card_id"].encode(), "in", 0, i)


def _predictions(compiled: Compiled, outputs: list[Output]) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Each output's key and record, but for the time of scoring (the two pipelines ran apart)."""
    records = [fastavro.schemaless_reader(io.BytesIO(o.value), compiled.output_schema) for o in outputs]
    return [(o.key, {k: v for k, v in r.items() if k != "scored_at"}) for o, r in zip(outputs, records, strict=True)]


def test_the_pipelines_decoder_skips_what_nothing_reads_and_the_outputs_stay_the_same(tmp_path: Path) -> None:
    settings, compiled = _compiled(tmp_path)
    decoder, _ = make_codecs(settings, compiled)
    assert set(decoder(_event(0).value(), _event(0))) == FRAUD_READS
    store = InMemoryFeatureStore({"card:c1": {"txn_count_1h": "4", "chargebacks_90d": "1"},
                                  "merchant:m0001": {"risk_score": "0.9"}})
    projected = make_pipeline(settings, compiled, store)
    whole = make_pipeline(settings, compiled, store)
    whole.decoder = PlainAvroDecoder(compiled.input_schema)
    messages = [_event(i) for i in range(12)] + [InputMessage(_event(12).value()[:-3] + b"\xff\xff\xff")]
    a, b = projected.process(messages), whole.process(messages)
    assert _predictions(compiled, a.outputs) == _predictions(compiled, b.outputs) and len(a.outputs) == 12
    assert [(d.stage, d.reason) for d in a.dead_letters] == [(d.stage, d.reason) for d in b.dead_letters] != []


def _framed(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return struct.pack(">bI", 0, schema_id) + buf.getvalue()


def test_the_confluent_decoder_projects_both_its_compiled_and_its_resolved_records() -> None:
    reader = {"type": "record", "name": "User", "fields": [
        {"name": "id", "type": "long"}, {"name": "name", "type": "string"},
        {"name": "country", "type": "string", "default": "NL"}]}
    older = {"type": "record", "name": "User", "fields": [{"name": "id", "type": "int"},
                                                          {"name": "name", "type": "string"}]}
    registry = InMemorySchemaRegistry()
    decoder = ConfluentAvroDecoder(registry, parse_schema(reader), fields=frozenset({"id", "country"}))
    same = _framed(registry.register("u", json.dumps(reader)), reader, {"id": 1, "name": "Ann", "country": "BE"})
    resolved = _framed(registry.register("u", json.dumps(older)), older, {"id": 2, "name": "Bob"})
    assert decoder(same, InputMessage(same)) == {"id": 1, "country": "BE"}
    assert decoder(resolved, InputMessage(resolved)) == {"id": 2, "country": "NL"}  # fastavro's, cut likewise
