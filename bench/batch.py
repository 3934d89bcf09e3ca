"""``worker batch`` file → file on the shared fraud workload: throughput and peak memory.

    python -m bench.batch --n 10000000            # writes the events file once (cached), then scores it

Starts a redis-server (unless ``--redis``), loads the workload's features, writes ``--n`` events
as an Avro container file (kept under ``--work`` for the next run), runs ``worker batch`` on it
as a process and prints one JSON line: rows, seconds, rows/s and the batch process's peak RSS
(its resource usage, from ``wait4``), beside the streaming worker's headline figure from the last
full benchmark (``bench/results/latest/results.json``) and their ratio. The same object, with the
machine, its load and the command, is written to ``--out`` (default
``bench/results/latest/batch.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import fastavro

from bench.scenarios import gen_module, machine
from worker.devtools.local import LocalRedis

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "bench" / "fraud-contract.yaml"
LATEST = ROOT / "bench" / "results" / "latest"


def events_file(gen: Any, args: argparse.Namespace, path: Path) -> Path:
    """The events as an Avro container file, written once per size and seed."""
    if path.is_file():
        return path
    population = argparse.Namespace(cards=100_000, merchants=5_000, missing_cards=0.02, seed=args.seed, n=args.n)
    tmp = path.with_suffix(".tmp")
    started = time.monotonic()
    with tmp.open("wb") as f:
        fastavro.writer(f, gen.TXN, (r for _, _, r in gen.event_stream(population)))
    tmp.rename(path)
    print(f"wrote {args.n:,} events in {time.monotonic() - started:,.0f} s to {path}", file=sys.stderr)
    return path


def score(redis_url: str, events: Path, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "worker", "batch", "--config", str(CONFIG), "--redis-url", redis_url,
               "--input", str(events), "--output", str(out)]
    started = time.monotonic()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    stderr = proc.stderr.read() if proc.stderr else ""
    return {"exit": os.waitstatus_to_exitcode(status), "seconds": round(seconds, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "summary": stderr.strip().splitlines()[-1:]}


def streaming(result: dict[str, Any], latest: Path) -> dict[str, Any]:
    """The streaming worker's throughput from the last full benchmark, and batch's ratio to it."""
    try:
        eps = json.loads(latest.read_text())["headline"]["worker_eps"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"no streaming figure to compare with ({latest}: {exc})", file=sys.stderr)
        return {}
    return {"streaming_worker_eps": eps, "streaming_from": str(latest.relative_to(ROOT)),
            "batch_to_streaming": round(result["rows_per_s"] / eps, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--redis", help="use this Redis URL instead of starting one")
    ap.add_argument("--work", type=Path, default=Path("/tmp/worker-bench-batch"))
    ap.add_argument("--out", type=Path, default=LATEST / "batch.json", help="where the results go ('-': nowhere)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    gen = gen_module()
    events = events_file(gen, args, args.work / f"events-{args.n}-{args.seed}.avro")
    load_before = os.getloadavg()
    with (LocalRedis(workdir=args.work) if args.redis is None else nullcontext()) as redis:
        url = args.redis or redis.url  # type: ignore[union-attr]
        gen.cmd_features(argparse.Namespace(cards=100_000, merchants=5_000, missing_cards=0.02, seed=args.seed,
                                            redis=url))
        result = score(url, events, args.work / "predictions.avro")
    result |= {"rows": args.n, "rows_per_s": round(args.n / result["seconds"]), "input_mb":
               round(events.stat().st_size / 2**20, 1)}
    result |= streaming(result, LATEST / "results.json")
    print(json.dumps(result))
    if str(args.out) != "-":
        # the load: another process on a 2-core machine moves the figure, so it is kept beside it
        record = {"command": "python -m bench.batch " + shlex.join(sys.argv[1:]), "machine": machine(),
                  "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": load_before,
                  "load_after": os.getloadavg(), **result}
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
