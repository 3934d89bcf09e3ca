"""The tests' side of Feast: runs with the Feast virtualenv's python (``.venv-feast``), never
imported by the suite, because Feast's pins clash with the worker's.

    feast_tool.py typed   --work-dir D --redis-url URL --output OUT.json
        a feature view of every scalar type (nulls included) under a composite entity key,
        written with Feast into Redis, rows written at several times; OUT holds each row's
        entity, write time and what ``get_online_features`` returns (also for unknown entities)
    feast_tool.py online  --work-dir D --redis-url URL --ids IDS.json --output OUT.json
        for the example repository materialised in D: ``{view: {id: {feature: value}}}``
    feast_tool.py refresh --work-dir D --redis-url URL --view V --ids IDS.json --timestamp ISO
        rewrites those rows of the example with the values they hold, at a newer event time
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.types import Bool, Float32, Float64, Int32, Int64, String

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_VIEWS = {"card_stats": "card_id", "merchant_stats": "merchant_id", "device_stats": "device_id"}
TYPED = {"i32": (Int32, "Int32"), "i64": (Int64, "Int64"), "f32": (Float32, "Float32"), "f64": (Float64, "Float64"),
         "flag": (Bool, "boolean"), "tier": (String, "string")}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def materialize_module() -> Any:
    spec = importlib.util.spec_from_file_location("materialize", ROOT / "deploy" / "feast" / "materialize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def store_at(work: Path, redis_url: str) -> FeatureStore:
    os.environ["FEAST_REDIS"] = materialize_module().redis_connection_string(redis_url)
    return FeatureStore(repo_path=str(work))


def typed_rows() -> pd.DataFrame:
    """Twelve accounts; every third value null; written 0, 1, 2 ... 11 hours before NOW."""
    rows = []
    for i in range(12):
        row: dict[str, Any] = {"account_id": 1000 + i, "region": "eu" if i % 2 else "us",
                               "i32": -5 * i, "i64": 2**40 + i, "f32": 0.25 * i, "f64": 1e6 / (i + 1),
                               "flag": i % 4 == 1, "tier": f"t{i % 3}",
                               "event_timestamp": NOW - timedelta(hours=i)}
        for j, name in enumerate(TYPED):
            if (i + j) % 3 == 0:
                row[name] = None
        rows.append(row)
    frame = pd.DataFrame(rows)
    for name, (_, dtype) in TYPED.items():
        frame[name] = frame[name].astype(dtype)
    frame["account_id"] = frame["account_id"].astype("int64")
    return frame


def cmd_typed(args: argparse.Namespace) -> None:
    work = Path(args.work_dir)
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / "feature_store.yaml").write_text(textwrap.dedent("""\
        project: typed
        provider: local
        registry: data/registry.db
        online_store: {type: redis, connection_string: "${FEAST_REDIS}"}
        offline_store: {type: file}
        entity_key_serialization_version: 3
        """))
    frame = typed_rows()
    frame.to_parquet(work / "data" / "typed.parquet", index=False)
    # A composite key is a view over several entities (Feast allows one join key per entity).
    account = Entity(name="account", join_keys=["account_id"], value_type=ValueType.INT64)
    region = Entity(name="region", join_keys=["region"], value_type=ValueType.STRING)
    view = FeatureView(name="typed_stats", entities=[account, region], ttl=timedelta(days=30), online=True,
                       source=FileSource(name="typed_source", path="data/typed.parquet",
                                         timestamp_field="event_timestamp"),
                       schema=[Field(name="account_id", dtype=Int64), Field(name="region", dtype=String),
                               *(Field(name=n, dtype=t) for n, (t, _) in TYPED.items())])
    store = store_at(work, args.redis_url)
    store.apply([account, region, view])
    store.write_to_online_store("typed_stats", frame)
    entities = [{"account_id": int(r.account_id), "region": r.region} for r in frame.itertuples()]
    entities += [{"account_id": 1001, "region": "us"}, {"account_id": 5, "region": "eu"}]  # no such rows
    online = store.get_online_features(features=[f"typed_stats:{n}" for n in TYPED], entity_rows=entities).to_dict()
    written = {(int(r.account_id), r.region): r.event_timestamp.timestamp() for r in frame.itertuples()}
    out = [{**e, "written": written.get((e["account_id"], e["region"])),
            "values": {n: online[n][i] for n in TYPED}} for i, e in enumerate(entities)]
    Path(args.output).write_text(json.dumps(out))


def online(store: FeatureStore, view: str, keys: list[str]) -> dict[str, list[Any]]:
    """What Feast's own online read returns for ``keys`` of an example view: feature → values."""
    features = [f.name for f in store.get_feature_view(view).features]
    found = store.get_online_features(features=[f"{view}:{f}" for f in features],
                                      entity_rows=[{EXAMPLE_VIEWS[view]: k} for k in keys]).to_dict()
    return {f: found[f] for f in features}


def cmd_online(args: argparse.Namespace) -> None:
    store = store_at(Path(args.work_dir), args.redis_url)
    ids: dict[str, list[str]] = json.loads(Path(args.ids).read_text())
    out: dict[str, dict[str, Any]] = {}
    for view, keys in ids.items():
        found = online(store, view, keys)
        out[view] = {k: {f: values[i] for f, values in found.items()} for i, k in enumerate(keys)}
    Path(args.output).write_text(json.dumps(out))


def cmd_refresh(args: argparse.Namespace) -> None:
    store = store_at(Path(args.work_dir), args.redis_url)
    keys: list[str] = json.loads(Path(args.ids).read_text())
    frame = pd.DataFrame({EXAMPLE_VIEWS[args.view]: keys, **online(store, args.view, keys)})
    frame["event_timestamp"] = pd.Timestamp(datetime.fromisoformat(args.timestamp))
    store.write_to_online_store(args.view, frame)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="feast_tool.py")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("typed", "online", "refresh"):
        p = sub.add_parser(name)
        p.add_argument("--work-dir", required=True)
        p.add_argument("--redis-url", required=True)
        p.add_argument("--output")
        p.add_argument("--ids")
        p.add_argument("--view")
        p.add_argument("--timestamp")
    args = parser.parse_args(argv)
    {"typed": cmd_typed, "online": cmd_online, "refresh": cmd_refresh}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
