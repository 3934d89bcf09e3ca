"""Features from Feast's Redis layout against plain hashes, on the same events and the same Redis.

    python -m bench.feast                       # 200,000 events, 3 rounds of each
    python -m bench.feast --n 500000 --rounds 5

Starts a redis-server and loads the fraud example's world into it twice: as plain hashes (what
``worker features load`` writes) and with Feast (``deploy/feast/materialize.py`` in ``.venv-feast``,
``make feast-setup``). Writes ``--n`` example events to an Avro file, then measures, alternating
the two configs so that drift on the machine hits both alike:

- ``worker batch`` file → file, the whole pipeline as a process (fraud-example.yaml against
  fraud-feast.yaml, which differ only in ``features``): rows/s;
- the feature stage alone, in this process: fetch (one Redis round trip) and assembly per batch
  of 1,000 events: µs per event.

Prints one JSON line and writes ``feast.json`` and ``feast.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fastavro

from worker.app.components import make_store
from worker.app.tools import entity_matcher, redis_client
from worker.codecs.schemas import load_schema
from worker.config.compile import compile_settings
from worker.config.settings import load_settings
from worker.devtools.loader import load_hashes
from worker.devtools.local import LocalRedis
from worker.features.fetcher import FeatureFetcher
from worker.pipeline.assembly import Assembler

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"plain": ROOT / "deploy" / "config" / "fraud-example.yaml",
           "feast": ROOT / "deploy" / "config" / "fraud-feast.yaml"}
FEAST_PYTHON = ROOT / ".venv-feast" / "bin" / "python"
sys.path.insert(0, str(ROOT / "models" / "fraud"))
import data  # noqa: E402  # the example's world and events (models/fraud/data.py)


def load_both(redis_url: str, work: Path) -> None:
    """The example's world as plain hashes (as ``worker features load`` writes them) and, with
    Feast, in Feast's layout."""
    settings = load_settings(CONFIGS["plain"], {"redis": {"url": redis_url}})
    load_hashes(redis_client(settings), ((h["key"], h) for h in data.features()), entity_matcher(settings))
    if not FEAST_PYTHON.exists():
        sys.exit("no .venv-feast: run `make feast-setup` first")
    subprocess.run([str(FEAST_PYTHON), str(ROOT / "deploy" / "feast" / "materialize.py"), "--redis-url", redis_url,
                    "--work-dir", str(work / "feast")], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def events_file(n: int, path: Path) -> tuple[Path, list[dict[str, Any]]]:
    records = list(data.events(n, seed=5))
    schema = load_schema(load_settings(CONFIGS["plain"]).avro.input_schema)
    with path.open("wb") as f:
        fastavro.writer(f, schema, records)
    return path, records


def batch_run(layout: str, redis_url: str, events: Path, out: Path) -> float:
    """``worker batch`` as a process: seconds from start to exit."""
    command = [sys.executable, "-m", "worker", "batch", "--config", str(CONFIGS[layout]), "--redis-url", redis_url,
               "--input", str(events), "--output", str(out)]
    started = time.monotonic()
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.monotonic() - started


def feature_stage(layout: str, redis_url: str, records: list[dict[str, Any]], size: int = 1000) -> float:
    """Fetch and assemble every batch of ``size`` events in this process: µs per event."""
    settings = load_settings(CONFIGS[layout], {"redis": {"url": redis_url}})
    compiled = compile_settings(settings)
    store = make_store(settings)
    fetcher, assembler = FeatureFetcher(store, compiled.entities), Assembler(compiled.tensors)
    batches = [records[i:i + size] for i in range(0, len(records), size)]
    started = time.perf_counter()
    for batch in batches:
        assembler.assemble(batch, fetcher.fetch(batch))
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed / len(records) * 1e6


def measure(args: argparse.Namespace, redis_url: str, events: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    rows_per_s: dict[str, list[float]] = {"plain": [], "feast": []}
    stage_us: dict[str, list[float]] = {"plain": [], "feast": []}
    for r in range(args.rounds):
        for layout in ("plain", "feast") if r % 2 == 0 else ("feast", "plain"):
            seconds = batch_run(layout, redis_url, events, args.out / f"predictions-{layout}.avro")
            rows_per_s[layout].append(args.n / seconds)
            stage_us[layout].append(feature_stage(layout, redis_url, records))
            print(f"[bench.feast] round {r + 1} {layout}: {args.n / seconds:,.0f} rows/s, feature stage "
                  f"{stage_us[layout][-1]:.2f} µs/event", file=sys.stderr, flush=True)
    median = {k: statistics.median(v) for k, v in rows_per_s.items()}
    return {"events": args.n, "rounds": args.rounds, "batch_rows_per_s": rows_per_s, "median_rows_per_s": median,
            "feast_share_of_plain": round(median["feast"] / median["plain"], 3), "feature_stage_us_per_event":
            stage_us, "median_stage_us": {k: statistics.median(v) for k, v in stage_us.items()}}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    layouts = ["plain", "feast"]
    for axis, key, title in ((left, "batch_rows_per_s", "worker batch, rows/s (higher is better)"),
                             (right, "feature_stage_us_per_event", "fetch + assemble, µs/event (lower is better)")):
        for i, layout in enumerate(layouts):
            values = result[key][layout]
            axis.bar(i, statistics.median(values), color=("#4c72b0", "#dd8452")[i])
            axis.plot([i] * len(values), values, "k.", alpha=0.6)
        axis.set_xticks(range(len(layouts)), ["plain hashes", "Feast layout"])
        axis.set_title(title, fontsize=9)
    fig.suptitle(f"Features from Feast vs plain hashes: {result['events']:,} fraud-example events, "
                 f"Feast at {result['feast_share_of_plain']:.0%} of plain", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/worker-bench-feast"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with LocalRedis(workdir=args.out) as redis_server:
        load_both(redis_server.url, args.out)
        events, records = events_file(args.n, args.out / f"events-{args.n}.avro")
        result = measure(args, redis_server.url, events, records)
    (args.out / "feast.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "feast.png")
    print(json.dumps({k: result[k] for k in ("events", "median_rows_per_s", "feast_share_of_plain",
                                             "median_stage_us")}))


if __name__ == "__main__":
    main()
