"""Features that the real ``feast`` package wrote into a real redis-server, read by the worker.

Feast runs in its own virtualenv (``.venv-feast``, made by ``make test``; its pins clash with the
worker's), through ``tests/support/feast_tool.py`` and ``deploy/feast/materialize.py``. What Feast's
own ``get_online_features`` returns is the oracle: every value the worker reads, of every scalar
type and null, under a composite key; and on the fraud example, every score the worker publishes
equals ONNX Runtime on the inputs built from Feast's values, with rows older than ``max_age_s``
replaced by defaults and counted."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro
import numpy as np
import onnxruntime as ort
import pytest

from tests.support.infra import new_local_broker, repo_root
from tests.support.telemetry import metric_samples, total, wait_http
from tests.unit.test_example_model import data
from worker.app.tools import create_topics, make_sender, topic_reader
from worker.codecs.schemas import load_schema
from worker.config.settings import load_settings
from worker.devtools.local import LocalBroker, LocalProcess, LocalRedis, NoidaBroker, free_port
from worker.devtools.sender import send_all
from worker.features.feast import FeastKey, FeastLayout
from worker.features.fetcher import EntitySpec, FeatureFetcher
from worker.features.redis_store import RedisAddress, RedisFeatureStore

pytestmark = pytest.mark.integration

ROOT = repo_root()
FEAST_PYTHON = ROOT / ".venv-feast" / "bin" / "python"
TOOL = ROOT / "tests" / "support" / "feast_tool.py"
CONFIG = ROOT / "deploy" / "config" / "fraud-feast.yaml"
MODEL = ROOT / "models" / "fraud" / "1" / "model.onnx"
TYPED = ("i32", "i64", "f32", "f64", "flag", "tier")


def feast(*args: str | Path) -> None:
    """A Feast step in Feast's virtualenv; its output in the failure if it fails."""
    if not FEAST_PYTHON.exists():
        pytest.fail("no .venv-feast: `make test` makes it (or `make feast-setup`)")
    done = subprocess.run([str(FEAST_PYTHON), *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, check=False)
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout}\n{done.stderr}"


def test_every_scalar_type_and_null_reads_as_feasts_own_online_read(redis_db_url: str, tmp_path: Path) -> None:
    feast(TOOL, "typed", "--work-dir", tmp_path / "feast", "--redis-url", redis_db_url,
          "--output", tmp_path / "typed.json")
    rows: list[dict[str, Any]] = json.loads((tmp_path / "typed.json").read_text())
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp() + 1800  # rows were written 0 to 11 hours before the hour
    spec = EntitySpec("account", FeastKey("typed", {"account_id": ("account_id", "int64"), "region": ("region",
                                                                                                    "string")}),
                      TYPED, dict.fromkeys(TYPED, 0), FeastLayout("typed_stats", TYPED), max_age_s=5 * 3600)
    store = RedisFeatureStore(RedisAddress.from_url(redis_db_url))

    lookup = FeatureFetcher(store, [spec], clock=lambda: now).fetch(rows)["account"]

    store.close()
    stale = [r["written"] is not None and now - r["written"] > 5 * 3600 for r in rows]
    assert 0 < sum(stale) < len(rows)
    for i, row in enumerate(rows):
        values = lookup.values[int(lookup.index[i])]
        assert isinstance(values, list)
        read = {name: v.decode() if isinstance(v, bytes) else v for name, v in zip(TYPED, values, strict=True)}
        want = dict.fromkeys(TYPED) if stale[i] else row["values"]
        assert read == pytest.approx(want), f"row {row['account_id']}/{row['region']}"
        assert [type(v) for v in read.values()] == [type(v) for v in want.values()]
    assert lookup.freshness()[0] == sum(stale)
    assert any(v is None for r in rows for v in r["values"].values()), "nulls of every kind were written"


def example_events(n: int) -> list[dict[str, Any]]:
    records = list(data.events(n, seed=23))
    unknown = {**records[0], "event_id": "edge-unknown", "card": {"id": "c-never-seen", "present": False}}
    return [*records, unknown]


def ids_of(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {"card_stats": sorted({r["card"]["id"] for r in records}),
            "merchant_stats": sorted({r["merchant"]["id"] for r in records}),
            "device_stats": sorted({r["device"]["id"] for r in records if r["device"]})}


def inputs_from_feast(records: list[dict[str, Any]], online: dict[str, dict[str, Any]],
                      stale_cards: set[str]) -> np.ndarray:
    """The model's inputs as models/fraud/data.py defines them, over a world holding what Feast
    returned (no row, or a null value: the default; the cards past max_age_s: no row)."""
    def table(view: str, drop: set[str] = set()) -> dict[str, dict[str, Any]]:  # noqa: B006  # never mutated
        return {key: {f: v for f, v in values.items() if v is not None}
                for key, values in online[view].items() if key not in drop}
    world = SimpleNamespace(cards=table("card_stats", stale_cards), merchants=table("merchant_stats"),
                            devices=table("device_stats"))
    return data.feature_matrix(records, world)


@pytest.mark.slow
def test_the_example_scores_from_feast_materialised_features_and_never_uses_stale_ones(tmp_path: Path) -> None:
    work = tmp_path / "feast"
    with LocalRedis(log_path=tmp_path / "redis.log", workdir=tmp_path) as redis_server, \
            new_local_broker(log_path=tmp_path / "broker.log") as broker:
        url = redis_server.url
        two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
        feast(ROOT / "deploy" / "feast" / "materialize.py", "--redis-url", url, "--work-dir", work,
              "--timestamp", two_hours_ago.isoformat())
        records = example_events(1500)
        ids = ids_of(records)
        fresh_cards = ids["card_stats"][::2]  # the others keep their two-hour-old rows: stale at max_age_s 3600
        (tmp_path / "fresh.json").write_text(json.dumps(fresh_cards))
        feast(TOOL, "refresh", "--work-dir", work, "--redis-url", url, "--view", "card_stats",
              "--ids", tmp_path / "fresh.json", "--timestamp", datetime.now(UTC).isoformat())
        (tmp_path / "ids.json").write_text(json.dumps(ids))
        feast(TOOL, "online", "--work-dir", work, "--redis-url", url, "--ids", tmp_path / "ids.json",
              "--output", tmp_path / "online.json")
        online = json.loads((tmp_path / "online.json").read_text())
        stale_cards = {c for c in ids["card_stats"][1::2] if online["card_stats"][c]["txn_count_24h"] is not None}

        published, samples = score_with_the_worker(broker, url, records, tmp_path)

    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    expected = session.run(["probabilities"], {"features": inputs_from_feast(records, online, stale_cards)})[0][:, 1]
    scores = np.array([published[r["event_id"]] for r in records])
    worst = int(np.argmax(np.abs(scores - expected)))
    assert np.abs(scores - expected).max() <= 1e-5, f"{records[worst]}: {scores[worst]} vs {expected[worst]}"
    stale_lookups = sum(r["card"]["id"] in stale_cards for r in records)
    assert stale_cards and total(samples, "worker_feature_stale_total", entity="card") == stale_lookups
    assert total(samples, "worker_feature_stale_total", entity="merchant") == 0
    assert total(samples, "worker_feature_age_seconds_count", entity="merchant") == len(records)
    assert total(samples, "worker_feature_age_seconds_bucket", entity="merchant", le="3600.0") == 0
    assert total(samples, "worker_feature_age_seconds_bucket", entity="merchant", le="10800.0") == len(records)


def score_with_the_worker(broker: LocalBroker | NoidaBroker, redis_url: str, records: list[dict[str, Any]],
                          tmp_path: Path) -> tuple[dict[str, float], dict[Any, float]]:
    """``worker run`` on fraud-feast.yaml (cards past 3600 s are stale); every prediction and the
    final metrics."""
    uid = str(time.monotonic_ns())
    port = free_port()
    overrides = {"kafka": {"bootstrap_servers": broker.bootstrap_servers, "input_topics": [f"tx-{uid}"],
                           "output_topic": f"scores-{uid}", "dlq_topic": f"dlq-{uid}", "group_id": f"feast-{uid}"},
                 "redis": {"url": redis_url}}
    settings = load_settings(CONFIG, overrides)
    create_topics(settings, partitions=2)
    tally = send_all(make_sender(settings, "card.id"), [(r["event_id"], r) for r in records])
    assert tally.delivered == len(records)
    env = {**os.environ, "WORKER_FEATURES__CARD__MAX_AGE_S": "3600", "WORKER_TELEMETRY__PORT": str(port),
           "WORKER_TELEMETRY__HOST": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    k = settings.kafka
    command = [sys.executable, "-m", "worker", "run", "--config", str(CONFIG), "--bootstrap-servers",
               k.bootstrap_servers, "--redis-url", redis_url, "--input-topic", k.input_topics[0], "--output-topic",
               k.output_topic, "--dlq-topic", k.dlq_topic, "--group-id", k.group_id]
    reader = topic_reader(settings, [k.output_topic], from_beginning=True)
    output = load_schema(settings.avro.output_schema)
    published: dict[str, float] = {}
    with LocalProcess("worker", command, tmp_path / "worker.log", env=env) as worker:
        deadline = time.monotonic() + 120
        while len(published) < len(records) and time.monotonic() < deadline:
            assert worker.running(), "the worker died:\n" + "\n".join(worker.log_lines()[-30:])
            for m in reader.read():
                p = fastavro.schemaless_reader(io.BytesIO(m.value()), output)
                published[p["event_id"]] = p["score"]
        page = wait_http(f"http://127.0.0.1:{port}/metrics", lambda _, body: total(
            metric_samples(body), "worker_events_consumed_total") == len(records))[1]
    reader.close()
    assert len(published) == len(records), f"{len(records) - len(published)} predictions missing"
    return published, metric_samples(page)
