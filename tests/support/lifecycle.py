"""A small payments workload for model-lifecycle tests: two model versions whose scores always
differ (v2's logit is v1's plus 2), so a prediction's score tells which version made it."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from tests.support.configs import write_config
from tests.support.kafka_io import ToSend
from tests.support.model_repo import add_version, logistic, run

PAYMENT = {"type": "record", "name": "Payment", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "account", "type": "string"},
    {"name": "amount", "type": "double"}]}
SCORE = {"type": "record", "name": "Score", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "account", "type": "string"},
    {"name": "score", "type": "double"}, {"name": "flagged", "type": "boolean"},
    {"name": "model_version", "type": "string"}]}
WEIGHTS = [0.004, 1.5]
BIAS = {"1": 0.0, "2": 2.0}
MODEL = "risk"


def build_repository(root: Path, versions: Sequence[str] = ("1", "2")) -> Path:
    for version in versions:
        add_version(root, MODEL, version, logistic(WEIGHTS, BIAS[version]))
    return root


def write_lifecycle_config(directory: Path, lifecycle: dict[str, Any], **sections: Any) -> Path:
    """Schemas, a repository with v1 and v2 of ``risk``, and a config serving v1."""
    (directory / "payment.avsc").write_text(json.dumps(PAYMENT))
    (directory / "score.avsc").write_text(json.dumps(SCORE))
    build_repository(directory / "models")
    return write_config(directory / "risk.yaml", {
        "kafka": {"input_topics": "payments", "output_topic": "scores", "dlq_topic": "payments-dlq",
                  "session_timeout_ms": 6000},
        "avro": {"input_schema": "payment.avsc", "output_schema": "score.avsc"},
        "features": {"account": {"key": "acct:{account}", "fields": ["risk"], "default": 0}},
        "model": {"repository": "models", "name": MODEL, "version": "1",
                  "inputs": {"x": {"columns": [{"event": "amount"}, {"feature": "account.risk"}]}},
                  "score": {"output": "probabilities", "column": 1}},
        "output": {"key": "account", "fields": {"event_id": "event_id", "account": "account", "score": "$score",
                                                "flagged": "$label", "model_version": "$model_version"}},
        "batch": {"max_events": 500},
        "lifecycle": lifecycle,
        **sections,
    })


def risks(accounts: int, seed: int = 1) -> dict[str, float]:
    """Feature values for two thirds of the accounts (the rest take the default, 0)."""
    rng = random.Random(seed)
    return {f"a{i}": round(rng.uniform(0, 1), 3) for i in range(accounts) if i % 3}


def payments(keys: Sequence[str], seed: int = 2, prefix: str = "e") -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"event_id": f"{prefix}{i}", "account": key, "amount": round(rng.uniform(1, 300), 2)}
            for i, key in enumerate(keys)]


def to_send(records: Sequence[dict[str, Any]]) -> list[ToSend]:
    out = []
    for record in records:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(PAYMENT), record)
        out.append(ToSend(record["account"].encode(), buf.getvalue()))
    return out


def decode_score(value: bytes | None) -> dict[str, Any]:
    buf = io.BytesIO(value or b"")
    record = fastavro.schemaless_reader(buf, fastavro.parse_schema(SCORE))
    assert isinstance(record, dict) and buf.tell() == len(value or b"")
    return record


def expected_scores(repository: Path, version: str, records: Sequence[dict[str, Any]],
                    features: dict[str, float]) -> dict[str, float]:
    """Each event's score under ``version``: ONNX Runtime run directly on the same inputs."""
    x = np.array([[r["amount"], features.get(r["account"], 0.0)] for r in records], dtype=np.float32)
    scores = run(repository / MODEL / version / "model.onnx", x)
    return {r["event_id"]: float(s) for r, s in zip(records, scores, strict=True)}


def load_risks(redis_url: str, n: int = 300) -> dict[str, float]:
    """Writes ``n`` accounts' risk features (``acct:<id>``) to Redis; returns them."""
    import redis

    values = risks(n)
    client = redis.Redis.from_url(redis_url)
    try:
        for account, risk in values.items():
            client.hset(f"acct:{account}", "risk", str(risk))
    finally:
        client.close()
    return values
