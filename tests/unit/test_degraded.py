"""Scoring while the feature store is down (the ``degrade`` policy) and the fault settings."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from tests.support.configs import changed, fraud_config, write_config
from worker.app.components import loop_settings, make_pipeline
from worker.app.kafka import transactional_id
from worker.config.compile import compile_settings
from worker.config.settings import load_settings
from worker.errors import ConfigError
from worker.features.store import InMemoryFeatureStore
from worker.records import InputMessage


@pytest.fixture(autouse=True)
def _no_worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WORKER_"):
            monkeypatch.delenv(name)


def fraud_with_degraded_field(tmp_path: Path) -> Path:
    """The fraud config with a ``degraded`` boolean added to the prediction schema."""
    config = fraud_config()
    schema = json.loads(Path(config["avro"]["output_schema"]).read_text())
    schema["fields"].append({"name": "degraded", "type": "boolean", "default": False})
    (tmp_path / "prediction.avsc").write_text(json.dumps(schema))
    return write_config(tmp_path / "fraud.yaml", changed(config, **{
        "avro.output_schema": str(tmp_path / "prediction.avsc"), "output.fields.degraded": "$degraded"}))


def event(i: int, card: str) -> InputMessage:
    record = {"event_id": f"e{i}", "card_id": card, "merchant_id": "m0001", "amount": 10.0 + i, "currency": "EUR",
              "mcc": 5411, "card_present": True, "channel": "POS", "distance_from_home_km": 3.0, "event_time": 0}
    schema = fastavro.parse_schema(json.loads(Path(fraud_config()["avro"]["input_schema"]).read_text()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return InputMessage(buf.getvalue(), card.encode(), "in", 0, i)


def read(path: Path, value: bytes) -> dict[str, Any]:
    record = fastavro.schemaless_reader(io.BytesIO(value), fastavro.parse_schema(
        json.loads(path.read_text())))
    assert isinstance(record, dict)
    return record


def test_a_degraded_batch_scores_with_every_feature_at_its_default_without_asking_the_store(tmp_path: Path) -> None:
    path = fraud_with_degraded_field(tmp_path)
    settings = load_settings(path)
    rich = {"card:c1": {f: "50" for f in settings.features["card"].fields},
            "merchant:m0001": {"fraud_rate_30d": "0.9", "txn_count_24h": "900", "avg_amount_30d": "5",
                               "risk_score": "0.99"}}
    store = InMemoryFeatureStore(rich)
    pipeline = make_pipeline(settings, compile_settings(settings), store)
    empty = make_pipeline(settings, compile_settings(settings), InMemoryFeatureStore())
    messages = [event(i, "c1") for i in range(5)]

    normal = pipeline.process(messages)
    calls = store.calls
    degraded = pipeline.process(messages, degraded=True)
    defaults = empty.process(messages)

    assert store.calls == calls, "a degraded batch never asks the store"
    scores = {name: [read(tmp_path / "prediction.avsc", o.value)["score"] for o in r.outputs]
              for name, r in (("normal", normal), ("degraded", degraded), ("defaults", defaults))}
    assert scores["degraded"] == scores["defaults"], "as if no key were in the store"
    assert not np.allclose(scores["normal"], scores["degraded"]), "the features matter for these events"
    assert [read(tmp_path / "prediction.avsc", o.value)["degraded"] for o in degraded.outputs] == [True] * 5
    assert [read(tmp_path / "prediction.avsc", o.value)["degraded"] for o in normal.outputs] == [False] * 5


def test_degraded_can_only_be_written_to_a_boolean_or_integer_field(tmp_path: Path) -> None:
    path = write_config(tmp_path / "bad.yaml", changed(fraud_config(), **{"output.fields.model_version": "$degraded"}))

    with pytest.raises(ConfigError) as caught:
        compile_settings(load_settings(path))
    assert "$degraded cannot be written to a string field" in str(caught.value)


def test_fault_settings_reach_the_loop(tmp_path: Path) -> None:
    path = write_config(tmp_path / "f.yaml", changed(fraud_config(), **{
        "faults": {"retry_initial_ms": 50, "retry_max_ms": 500, "probe_interval_ms": 100,
                   "on_redis_down": "degrade", "degrade_after_retries": 3}}))

    loop = loop_settings(load_settings(path))

    assert (loop.retry_initial_s, loop.retry_max_s, loop.probe_interval_s, loop.degrade_after) == (0.05, 0.5, 0.1, 3)
    assert loop_settings(load_settings(write_config(tmp_path / "d.yaml", fraud_config()))).degrade_after is None


def test_bad_fault_settings_are_reported_by_key(tmp_path: Path) -> None:
    path = write_config(tmp_path / "f.yaml", changed(fraud_config(), **{
        "faults": {"retry_initial_ms": 2000, "retry_max_ms": 1000, "on_redis_down": "panic", "probe_ms": 1}}))

    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    keys = dict(caught.value.problems)
    assert "faults.on_redis_down" in keys
    assert "did you mean 'probe_interval_ms'" in keys["faults.probe_ms"]


def test_the_transactional_id_is_stable_per_replica_when_it_can_be(tmp_path: Path) -> None:
    base = changed(fraud_config(), **{"kafka.group_id": "g", "processing_guarantee": "exactly-once"})

    def tid(**changes: Any) -> str:
        return transactional_id(load_settings(write_config(tmp_path / "t.yaml", changed(base, **changes))))

    assert tid(**{"kafka.transactional_id": "scorer-0"}) == "scorer-0"
    assert tid(**{"kafka.group_instance_id": "pod-2"}) == "g-pod-2"
    assert tid() != tid(), "unique per process otherwise"
