"""A workload the worker has never seen, wired by configuration alone.

Orders with a nested user record, an enum, a nullable field and a long key; features keyed by a
nested field (``u:{user.id}``); a multi-input ONNX model with string inputs (turned into numbers
inside the graph by ai.onnx.ml LabelEncoder and CategoryMapper) next to float ones; an output
schema with a ``float`` score, another model output, an enum and a long key.
"""

from __future__ import annotations

import io
import json
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import onnxruntime as ort
import pytest
import redis
from onnx import helper

from tests.support.configs import write_config
from tests.support.kafka_io import TopicReader, Topics, ToSend, produce
from tests.support.onnx_models import FLOAT, STRING, Value, const, save_model
from tests.support.worker_process import WorkerProcess
from worker.cli.main import main

pytestmark = pytest.mark.integration

TIERS = ["BRONZE", "SILVER", "GOLD", "PLATINUM"]
ORDER = {
    "type": "record", "name": "Order", "namespace": "shop", "fields": [
        {"name": "order_id", "type": "long"},
        {"name": "user", "type": {"type": "record", "name": "User", "fields": [
            {"name": "id", "type": "long"}, {"name": "country", "type": "string"}]}},
        {"name": "tier", "type": {"type": "enum", "name": "Tier", "symbols": TIERS}},
        {"name": "amount", "type": "double"},
        {"name": "coupon", "type": ["null", "double"], "default": None},
        {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ]}
ORDER_SCORE = {
    "type": "record", "name": "OrderScore", "namespace": "shop", "fields": [
        {"name": "order_id", "type": "long"},
        {"name": "user_id", "type": "long"},
        {"name": "tier", "type": {"type": "enum", "name": "Tier", "symbols": TIERS}},
        {"name": "score", "type": "float"},
        {"name": "logit", "type": "double"},
        {"name": "suspicious", "type": "boolean"},
        {"name": "model", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "note", "type": "string", "default": "none"},
    ]}
WEIGHTS = np.array([[0.8], [0.3], [0.01], [-0.05], [0.002], [0.1]], dtype=np.float32)
THRESHOLD = 0.6


def build_model(path: Path) -> Path:
    """tier [N,1] string, country [N] string, amount/coupon/spend/orders [N,1] float → score, logit [N,1]."""
    nodes = [
        helper.make_node("LabelEncoder", ["tier"], ["tier_f"], domain="ai.onnx.ml",
                         keys_strings=["BRONZE", "SILVER", "GOLD"], values_floats=[0.0, 1.0, 2.5], default_float=-1.0),
        helper.make_node("CategoryMapper", ["country"], ["country_i"], domain="ai.onnx.ml",
                         cats_strings=["NL", "BE", "DE"], cats_int64s=[1, 2, 3], default_int64=0),
        helper.make_node("Cast", ["country_i"], ["country_flat"], to=FLOAT),
        helper.make_node("Unsqueeze", ["country_flat", "axis1"], ["country_f"]),
        helper.make_node("Concat", ["tier_f", "country_f", "amount", "coupon", "spend", "orders"], ["x"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    column: list[int | str | None] = ["N", 1]
    inputs: list[Value] = [("tier", STRING, column), ("country", STRING, ["N"]),
                           *[(name, FLOAT, column) for name in ("amount", "coupon", "spend", "orders")]]
    return save_model(path, nodes, inputs, [("score", FLOAT, ["N", 1]), ("logit", FLOAT, ["N", 1])],
                      [const("w", WEIGHTS), const("b", np.array([-2.0], dtype=np.float32)),
                       const("axis1", np.array([1], dtype=np.int64))])


def build_config(directory: Path) -> Path:
    (directory / "order.avsc").write_text(json.dumps(ORDER))
    (directory / "order-score.avsc").write_text(json.dumps(ORDER_SCORE))
    build_model(directory / "order-risk.onnx")
    return write_config(directory / "orders.yaml", {
        "kafka": {"input_topics": "orders", "output_topic": "order-scores", "dlq_topic": "orders-dlq",
                  "session_timeout_ms": 6000},
        "avro": {"input_schema": "order.avsc", "output_schema": "order-score.avsc"},
        "features": {"user": {"key": "u:{user.id}", "fields": ["spend_30d", "orders_7d"],
                              "defaults": {"spend_30d": 0, "orders_7d": 1}}},
        "model": {
            "path": "order-risk.onnx", "name": "order-risk", "version": "7", "threshold": THRESHOLD,
            "inputs": {"tier": {"columns": [{"event": "tier"}]},
                       "country": {"columns": [{"event": "user.country"}]},
                       "amount": {"columns": [{"event": "amount"}]},
                       "coupon": {"columns": [{"event": "coupon", "default": 0}]},
                       "spend": {"columns": [{"feature": "user.spend_30d"}]},
                       "orders": {"columns": [{"feature": "user.orders_7d"}]}},
            "score": {"output": "score"}},
        "output": {"key": "order_id", "key_encoding": "int64", "fields": {
            "order_id": "order_id", "user_id": "user.id", "tier": "tier", "score": "$score",
            "logit": {"model_output": "logit", "column": 0}, "suspicious": "$label", "model": "$model_name",
            "version": "$model_version"}},
        "batch": {"max_events": 256},
    })


def make_orders(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"order_id": 10**12 + i * 7919, "user": {"id": rng.randint(1, 60), "country": rng.choice(["NL", "BE", "DE",
                                                                                                         "FR"])},
             "tier": rng.choice(TIERS), "amount": round(rng.lognormvariate(3, 1), 2),
             "coupon": None if rng.random() < 0.3 else round(rng.uniform(0, 20), 2),
             "placed_at": 1_700_000_000_000 + i} for i in range(n)]


def make_features(seed: int) -> dict[str, dict[str, str]]:
    """Users 1..40 have features (user 7 lacks orders_7d); 41..60 are unknown to the store."""
    rng = random.Random(seed)
    users = {f"u:{uid}": {"spend_30d": repr(round(rng.uniform(0, 900), 3)), "orders_7d": str(rng.randint(0, 30))}
             for uid in range(1, 41)}
    del users["u:7"]["orders_7d"]
    return users


def expected(orders: list[dict[str, Any]], features: dict[str, dict[str, str]], model: Path) -> dict[int, Any]:
    """onnxruntime run directly on the inputs the config describes: order_id → (score, logit)."""
    def feature(order: dict[str, Any], name: str, default: float) -> float:
        return float(features.get(f"u:{order['user']['id']}", {}).get(name, default))

    feeds = {
        "tier": np.array([[o["tier"]] for o in orders], dtype=object),
        "country": np.array([o["user"]["country"] for o in orders], dtype=object),
        "amount": np.asarray([[o["amount"]] for o in orders], dtype=np.float32),
        "coupon": np.asarray([[0.0 if o["coupon"] is None else o["coupon"]] for o in orders], dtype=np.float32),
        "spend": np.asarray([[feature(o, "spend_30d", 0)] for o in orders], dtype=np.float32),
        "orders": np.asarray([[feature(o, "orders_7d", 1)] for o in orders], dtype=np.float32),
    }
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    score, logit = session.run(["score", "logit"], feeds)
    return {o["order_id"]: (float(s), float(lg)) for o, s, lg in zip(orders, score[:, 0], logit[:, 0], strict=True)}


def encode(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(ORDER), record)
    return buf.getvalue()


def test_check_config_accepts_the_new_workload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = build_config(tmp_path)

    assert main(["check-config", "--config", str(config)]) == 0

    out = capsys.readouterr().out
    assert "order-risk v7" in out
    assert "tier[N,1] string, country[N] string, amount[N,1] float32" in out
    assert "user (u:{user.id}, 2 fields)" in out


def test_a_new_workload_runs_by_configuration_alone(tmp_path: Path, kafka_bootstrap: str, redis_db_url: str,
                                                    kafka_topics: Callable[..., Topics],
                                                    topic_reader: Callable[..., TopicReader],
                                                    start_worker: Callable[..., WorkerProcess]) -> None:
    config = build_config(tmp_path)
    orders, features = make_orders(1500, seed=3), make_features(seed=3)
    client = redis.Redis.from_url(redis_db_url)
    for key, fields in features.items():
        client.hset(key, mapping=fields)  # type: ignore[arg-type]
    client.close()
    topics = kafka_topics(partitions=2, prefix="orders")
    produce(kafka_bootstrap, topics.input, [ToSend(str(o["user"]["id"]).encode(), encode(o)) for o in orders])

    worker = start_worker(config, topics, redis_db_url)
    reader = topic_reader(topics.output, topics.dlq)
    done = reader.read_until(lambda r: r.count(topics.output) + r.count(topics.dlq) >= len(orders), 120,
                             alive=worker.alive)
    assert done, f"{reader.count(topics.output)} predictions, {reader.count(topics.dlq)} dead letters"
    reader.settle(1.0)

    assert reader.count(topics.dlq) == 0, reader.on(topics.dlq)[0].headers
    want = expected(orders, features, tmp_path / "order-risk.onnx")
    by_order = {o["order_id"]: o for o in orders}
    got = reader.on(topics.output)
    assert len(got) == len(orders)
    output_schema = fastavro.parse_schema(ORDER_SCORE)
    seen: set[int] = set()
    for message in got:
        prediction = fastavro.schemaless_reader(io.BytesIO(message.value or b""), output_schema)
        assert isinstance(prediction, dict)
        order_id = prediction["order_id"]
        order = by_order[order_id]
        score, logit = want[order_id]
        assert message.key == struct.pack(">q", order_id)
        assert prediction["user_id"] == order["user"]["id"]
        assert prediction["tier"] == order["tier"]
        assert abs(prediction["score"] - score) <= 1e-6
        assert abs(prediction["logit"] - logit) <= 1e-5
        assert prediction["suspicious"] == (score >= THRESHOLD)
        assert (prediction["model"], prediction["version"], prediction["note"]) == ("order-risk", "7", "none")
        seen.add(order_id)
    assert seen == set(by_order)
    scores = [s for s, _ in want.values()]
    assert 0.05 < np.mean(np.array(scores) >= THRESHOLD) < 0.95, "the check needs both labels to mean something"
    assert worker.stop() == 0
