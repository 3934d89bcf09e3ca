"""``worker demo`` speaks the configuration's own words, and asks before writing into a Redis in use."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.app.tools import entity_matcher
from worker.cli.demo import FRAUD_ROW, foreign_keys, roles
from worker.codecs.avro import PlainAvroDecoder, PlainAvroEncoder
from worker.codecs.schemas import load_schema
from worker.config.settings import WorkerSettings, load_settings
from worker.devtools.scoreboard import Scoreboard
from worker.records import InputMessage

CONFIGS = Path(__file__).resolve().parents[2] / "deploy" / "config"


@pytest.fixture(scope="module")
def eta() -> WorkerSettings:
    return load_settings(CONFIGS / "eta-example.yaml")


def test_the_roles_of_output_fields_come_from_the_configuration(eta: WorkerSettings) -> None:
    fraud = roles(load_settings(CONFIGS / "fraud-example.yaml"))
    own = roles(eta)

    assert (fraud.label, fraud.scored_at, fraud.event_time, fraud.row) == ("is_fraud", "scored_at", "event_time",
                                                                           FRAUD_ROW)
    assert (own.label, own.scored_at, own.event_time, own.row) == ("late", "scored_at", "placed_at", None)


def test_another_configs_predictions_are_counted_by_its_label_and_shown_as_json(eta: WorkerSettings) -> None:
    schema = load_schema(eta.avro.output_schema)
    encode = PlainAvroEncoder(schema)
    board = Scoreboard(PlainAvroDecoder(schema), "eta-estimates", "all", roles(eta))
    now = int(time.time() * 1000)
    predictions = [{"order_id": 10_000_000_001 + i, "placed_at": now - 50, "restaurant_id": "r-001",
                    "eta_minutes": 30.0 + 20 * i, "late": i == 2, "model_name": "eta", "model_version": "1",
                    "scored_at": now - 20} for i in range(3)]

    lines = [line for p in predictions for line in board.add(InputMessage(encode(p, InputMessage(None)),
                                                                          _topic="eta-estimates"))]

    assert (board.scored, board.flagged) == (3, 1)
    assert board.scored_ms == [30.0, 30.0, 30.0]
    assert lines[0].startswith('  {"order_id": 10000000001, ') and "fraud" not in " ".join(lines).lower()
    assert lines[2].split("}")[-1].split() == ["FLAGGED", "30", "ms"]


class FakeRedis:
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def scan_iter(self, count: int = 10) -> Iterator[Any]:
        return iter(k.encode() for k in self.keys)


def test_keys_of_something_else_in_the_database_are_found(eta: WorkerSettings) -> None:
    matcher = entity_matcher(eta)

    assert foreign_keys(FakeRedis(["eta:restaurant:r-001", "eta:restaurant:r-002"]), matcher) == []
    assert foreign_keys(FakeRedis(["eta:restaurant:r-001", "session:42", "cart:7", "user:1", "x"]), matcher) == [
        "session:42", "cart:7", "user:1"]
