"""Schema evolution through a real worker process, a real broker, a real Redis and a Schema Registry on
a loopback port: events in Schema Registry framing written with an older and a newer compatible
version of the input schema are scored exactly; events of an incompatible version are dead-lettered,
byte for byte, with the reason in their headers."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import fastavro
import pytest

from tests.support.configs import changed, fraud_config, fraud_workload_dir, write_config
from tests.support.faults import Expected
from tests.support.fraud import workload
from tests.support.kafka_io import TopicReader, Topics, ToSend, produce
from tests.support.schema_registry import SchemaRegistryServer
from tests.support.worker_process import StartWorker

pytestmark = pytest.mark.integration

FRAMING_BYTES = 5  # magic byte and schema id


@pytest.fixture
def registry() -> Iterator[SchemaRegistryServer]:
    with SchemaRegistryServer() as server:
        yield server


def versions(current: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The input schema as it is, an older version without an optional field (it has a default), a
    newer one with a field the worker does not know, and an incompatible one (a required field's
    type changed)."""
    fields = current["fields"]
    amount_as_text = [{**f, "type": "string"} if f["name"] == "amount" else f for f in fields]
    return {
        "current": current,
        "older": {**current, "fields": [f for f in fields if f["name"] != "distance_from_home_km"]},
        "newer": {**current, "fields": [*fields, {"name": "device_id", "type": "string", "default": ""}]},
        "incompatible": {**current, "fields": amount_as_text},
    }


def as_written(version: str, record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The record a producer on ``version`` writes, and the one the worker should read from it."""
    if version == "older":
        return ({k: v for k, v in record.items() if k != "distance_from_home_km"},
                {**record, "distance_from_home_km": None})  # the reader's default
    if version == "newer":
        return {**record, "device_id": "dev-7"}, record
    if version == "incompatible":
        return {**record, "amount": str(record["amount"])}, record
    return record, record


def framed(schema_id: int, schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\x00" + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def test_compatible_versions_are_scored_and_an_incompatible_one_is_dead_lettered_with_the_reason(
        gen: ModuleType, kafka_bootstrap: str, redis_db_url: str, kafka_topics: Callable[..., Topics],
        topic_reader: Callable[..., TopicReader], start_worker: StartWorker, registry: SchemaRegistryServer,
        tmp_path: Path) -> None:
    args, events = workload(gen, redis_db_url, n=400, seed=71)
    topics = kafka_topics(partitions=2, prefix="evolution")
    subject = f"{topics.input}-value"
    current = json.loads((fraud_workload_dir() / "transaction.avsc").read_text())
    schemas = {name: fastavro.parse_schema(raw) for name, raw in versions(current).items()}
    ids = {name: registry.state.register(subject, json.dumps(raw), []).id for name, raw in versions(current).items()}
    order = ["current", "older", "newer", "incompatible"]
    messages, readable, dead = [], [], []
    for i, (message, record) in enumerate(zip(events.messages, events.records, strict=True)):
        assert record is not None
        version = order[i % len(order)]
        written, read = as_written(version, record)
        messages.append(ToSend(message.key, framed(ids[version], schemas[version], written), [("n", b"%d" % i)]))
        (dead if version == "incompatible" else readable).append(i if version == "incompatible" else read)
    produce(kafka_bootstrap, topics.input, messages)
    config = changed(fraud_config(), **{"avro.framing": "confluent", "avro.schema_registry_url": registry.url})
    worker = start_worker(write_config(tmp_path / "fraud.yaml", config), topics, redis_db_url)
    reader = topic_reader(topics.output, topics.dlq)

    done = reader.read_until(lambda r: r.count(topics.output) >= len(readable) and r.count(topics.dlq) >= len(dead),
                             120, alive=worker.alive)
    reader.settle(1.0)

    assert done and worker.alive()
    outputs = [m.value or b"" for m in reader.on(topics.output)]
    assert {v[:FRAMING_BYTES] for v in outputs} == {b"\x00" + registry.state.versions[
        f"{topics.output}-value"][0].id.to_bytes(4, "big")}  # predictions are framed with the output schema's id
    tally = Expected(gen, args, readable).tally(v[FRAMING_BYTES:] for v in outputs)
    assert (tally.missing, tally.wrong, tally.duplicates, tally.unexpected) == ([], [], 0, 0)
    dead_letters = {int(m.headers["n"] or 0): m for m in reader.on(topics.dlq)}
    assert sorted(dead_letters) == dead
    reason = (f"schema id {ids['incompatible']} cannot be read as Transaction: "
              "field 'amount' is written as a string, the reader expects a double")
    for i, m in dead_letters.items():
        assert m.value == messages[i].value and m.key == messages[i].key
        assert m.headers["dlq.error.stage"] == b"decode"
        assert m.headers["dlq.error.reason"] == reason.encode()
    lookups = [p for p in registry.paths() if p.startswith("/schemas/ids/")]
    assert sorted(lookups) == sorted({f"/schemas/ids/{i}" for i in ids.values()})  # each writer schema once
    assert worker.stop() == 0
