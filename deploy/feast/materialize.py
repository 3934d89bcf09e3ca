"""Load the fraud example's features into Redis in Feast's online-store layout.

``worker features load`` writes the example world as plain hashes (``fraud:card:<id>``).
This script writes the same values the way Feast does: one Redis hash per entity, keyed
by the serialised entity key plus the project name (``fraud``), with a field per feature
(the 4-byte murmur3 hash of ``<view>:<feature>``, a serialised ValueProto) and
``_ts:<view>`` (the event timestamp).

It runs with the Feast virtualenv's python (``make feast-setup`` makes ``.venv-feast``;
Feast's pins clash with the worker's, so it is not in ``.venv``), from the project root::

    .venv-feast/bin/python deploy/feast/materialize.py --redis-url redis://127.0.0.1:6379/0 \\
        [--timestamp 2024-05-01T00:00:00Z] [--work-dir DIR] [--repo deploy/feast/feature_repo] \\
        [--data-generator models/fraud/data.py:features]

Steps: the generator's hashes become one Parquet file per feature view (entity id,
features, ``event_timestamp``); the feature repository is copied to a work directory (a
temporary one unless ``--work-dir`` is given, so the registry is never written into the git
tree); ``FeatureStore.apply`` registers the entities and views (what ``feast apply`` does);
``FeatureStore.materialize`` reads the Parquet files through the file offline store and
writes Redis (what ``feast materialize`` does). Keep the work directory (``--work-dir``) to
query the store afterwards with ``FeatureStore(repo_path=DIR).get_online_features``.

Feast only overwrites an entity's values with a newer event timestamp: a second run with
the same ``--timestamp`` leaves what Redis holds. The default timestamp is now.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import pandas as pd
import redis
from feast import Entity, FeatureStore, FeatureView, FileSource
from feast.feast_object import FeastObject
from feast.field import Field
from feast.types import FeastType, Float64, Int64

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parents[1]
DEFAULT_REPO = HERE / "feature_repo"
DEFAULT_GENERATOR = "models/fraud/data.py:features"
PANDAS_DTYPES: dict[FeastType, str] = {Int64: "int64", Float64: "float64"}
"""The Feast types the views use, as the Parquet columns that Feast reads them from."""

Rows = dict[str, list[dict[str, Any]]]
"""Entity kind (card, merchant, device) → its rows: the id under ``"id"``, then the fields."""


class Failure(Exception):
    """An error to report in one line, without a traceback."""


def redis_connection_string(url: str) -> str:
    """``redis://[user:pass@]host[:port][/db]`` as Feast's ``host:port,db=N[,username=..][,password=..]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise Failure(f"bad Redis URL {_masked(url)!r}: the scheme must be redis:// or rediss://")
    if parts.query or parts.fragment:
        raise Failure(f"bad Redis URL {_masked(url)!r}: query parameters are not supported")
    try:
        port = parts.port or 6379
    except ValueError as exc:
        raise Failure(f"bad Redis URL {_masked(url)!r}: {exc}") from None
    host = parts.hostname or "localhost"
    if ":" in host:  # Feast splits host:port on ':', so an IPv6 address cannot get through
        raise Failure(f"bad Redis URL {_masked(url)!r}: IPv6 addresses are not supported by Feast, use a name")
    items = [f"{host}:{port}", f"db={_database(url, parts.path)}"]
    for name, value in (("username", parts.username), ("password", parts.password)):
        if value:
            items.append(f"{name}={_feast_value(url, name, unquote(value))}")
    if parts.scheme == "rediss":
        items.append("ssl=true")
    return ",".join(items)


def _database(url: str, path: str) -> int:
    text = path.lstrip("/") or "0"
    if not text.isdigit():
        raise Failure(f"bad Redis URL {_masked(url)!r}: the path must be a database number, not {path!r}")
    return int(text)


def _feast_value(url: str, name: str, value: str) -> str:
    """``value`` if Feast's parser would hand it to redis-py as it is.

    Feast splits the connection string on ',' and json-decodes every value, so a ',' would
    cut it and ``true``, ``null`` or ``1e3`` would arrive as something else.
    """
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        decoded = value
    if "," in value or str(decoded) != value:
        raise Failure(f"bad Redis URL {_masked(url)!r}: Feast's connection string cannot carry this {name}")
    return value


def _masked(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def check_redis(url: str) -> None:
    """Fail with one clear line now rather than with Feast's traceback halfway through."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5) as client:
            client.ping()
    except redis.RedisError as exc:
        raise Failure(f"cannot use Redis at {_masked(url)}: {exc}") from None


def load_module(path: Path, name: str) -> ModuleType:
    """Import a Python file by its path (neither the generator nor the repository is a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise Failure(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def read_hashes(generator: str) -> Iterable[dict[str, Any]]:
    """The hashes of ``FILE:FUNCTION`` (relative paths from the current directory, else the project root)."""
    file, _, function = generator.rpartition(":")
    if not file or not function:
        raise Failure(f"--data-generator must be FILE:FUNCTION, not {generator!r}")
    path = Path(file)
    if not path.is_file():
        path = PROJECT_ROOT / file
    if not path.is_file():
        raise Failure(f"no generator file {file!r}")
    produce = getattr(load_module(path, "feast_example_generator"), function, None)
    if not callable(produce):
        raise Failure(f"{file} has no function {function!r}")
    hashes: Iterable[dict[str, Any]] = produce()
    return hashes


def group_rows(hashes: Iterable[dict[str, Any]]) -> Rows:
    """Rows per entity kind, from keys ``<prefix>:<kind>:<id>``."""
    rows: Rows = defaultdict(list)
    for item in hashes:
        parts = item["key"].split(":", 2)
        if len(parts) != 3:
            raise Failure(f"generator key {item['key']!r} is not <prefix>:<kind>:<id>")
        rows[parts[1]].append({"id": parts[2], **item["fields"]})
    return rows


def views_by_kind(repo: ModuleType) -> dict[str, tuple[Entity, FeatureView]]:
    """Each entity of the repository (its name is the kind in the generator's keys) and its one view."""
    entities = {obj.name: obj for obj in vars(repo).values() if isinstance(obj, Entity)}
    views = [obj for obj in vars(repo).values() if isinstance(obj, FeatureView)]
    return {view.entities[0]: (entities[view.entities[0]], view) for view in views}


def view_frame(rows: list[dict[str, Any]], entity: Entity, view: FeatureView, timestamp: datetime) -> pd.DataFrame:
    """The view's Parquet table: join key, features in the schema's types, ``event_timestamp``."""
    names = [field.name for field in view.features]
    for row in rows:
        if set(row) - {"id"} != set(names):
            raise Failure(f"{entity.name} {row['id']}: fields {sorted(set(row) - {'id'})} are not those of "
                          f"view {view.name} {sorted(names)} (the repository's features.py)")
    frame = pd.DataFrame({entity.join_key: pd.Series([row["id"] for row in rows], dtype="string")})
    for field in view.features:
        frame[field.name] = pd.Series([row[field.name] for row in rows], dtype=_pandas_dtype(view, field))
    frame["event_timestamp"] = pd.Timestamp(timestamp)
    return frame


def _pandas_dtype(view: FeatureView, field: Field) -> str:
    if field.dtype not in PANDAS_DTYPES:
        raise Failure(f"{view.name}.{field.name}: type {field.dtype} is not one this script writes "
                      f"({', '.join(str(t) for t in PANDAS_DTYPES)})")
    return PANDAS_DTYPES[field.dtype]


def _parquet_path(view: FeatureView) -> Path:
    """Where the view's FileSource reads, relative to the repository."""
    source = view.batch_source
    if not isinstance(source, FileSource) or Path(source.path).is_absolute():
        raise Failure(f"view {view.name}: its source must be a FileSource with a path relative to the repository")
    return Path(source.path)


def write_parquet(rows: Rows, kinds: dict[str, tuple[Entity, FeatureView]], work: Path,
                  timestamp: datetime) -> dict[str, int]:
    """One Parquet file per view under ``work``, where the views' FileSources point; rows per view."""
    unknown = sorted(set(rows) - set(kinds))
    if unknown:
        raise Failure(f"the generator has entity kinds {unknown} that no feature view serves")
    counts = {}
    for kind, (entity, view) in kinds.items():
        frame = view_frame(rows.get(kind, []), entity, view, timestamp)
        path = _parquet_path(view)
        frame.to_parquet(work / path, index=False)
        counts[view.name] = len(frame)
        print(f"{view.name}: {len(frame)} rows -> {path}", flush=True)
    return counts


def prepare_work_dir(repo: Path, work: Path) -> None:
    """A copy of the repository in ``work`` (the registry and the Parquet files are written there)."""
    if not (repo / "feature_store.yaml").is_file():
        raise Failure(f"{repo} is not a Feast feature repository (no feature_store.yaml)")
    shutil.copytree(repo, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "data"))
    (work / "data").mkdir(exist_ok=True)


def apply_and_materialize(work: Path, repo: ModuleType, timestamp: datetime) -> None:
    """``feast apply`` and ``feast materialize`` over a window around the one timestamp the files hold."""
    store = FeatureStore(repo_path=str(work))
    objects: list[FeastObject] = [obj for obj in vars(repo).values() if isinstance(obj, Entity | FeatureView)]
    store.apply(objects)
    # The file offline store reads the window inclusively at both ends; a second either side
    # keeps that true for offline stores that do not.
    store.materialize(start_date=timestamp - timedelta(seconds=1), end_date=timestamp + timedelta(seconds=1))


def parse_timestamp(text: str | None) -> datetime:
    """ISO 8601 in UTC (a time without an offset is taken as UTC); now when not given."""
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise Failure(f"--timestamp {text!r} is not ISO 8601") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", required=True, help="redis://[user:password@]host:port/db")
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="the Feast feature repository to copy")
    parser.add_argument("--work-dir", type=Path, help="where the registry and Parquet files go (kept); "
                                                      "default: a temporary directory, removed afterwards")
    parser.add_argument("--timestamp", help="the features' event time, ISO 8601 (default: now, UTC)")
    parser.add_argument("--data-generator", default=DEFAULT_GENERATOR, help="FILE:FUNCTION yielding the hashes")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, work: Path) -> None:
    timestamp = parse_timestamp(args.timestamp)
    os.environ["FEAST_REDIS"] = redis_connection_string(args.redis_url)  # feature_store.yaml reads it
    check_redis(args.redis_url)
    prepare_work_dir(args.repo.resolve(), work)
    repo = load_module(work / "features.py", "feast_fraud_repo")
    started = time.monotonic()
    counts = write_parquet(group_rows(read_hashes(args.data_generator)), views_by_kind(repo), work, timestamp)
    apply_and_materialize(work, repo, timestamp)
    print(f"materialised {sum(counts.values())} rows of {len(counts)} views into {_masked(args.redis_url)} "
          f"(project fraud, event time {timestamp.isoformat()}) in {time.monotonic() - started:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work_dir.resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="feast-fraud-"))
    try:
        run(args, work)
    except Failure as exc:
        print(f"materialize.py: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
