"""Benchmark the worker against baselines, side by side, on one broker and Redis.

    python -m bench                       # full run: results in bench/results/latest/
    python -m bench --quick               # smaller figures, a few minutes
    python -m bench --bootstrap HOST:PORT --redis redis://HOST:PORT/0

Starts a local tansu broker and redis-server unless given, and measures on the shared fraud
workload: throughput (backlog) of the worker, a hand-written batched loop and a per-message
tutorial loop; the worker's own latency at a fixed offered rate; time per stage; batch
sizes; peak RSS with a large backlog; time to ready; and throughput on the project's own
example. Writes results.json and report.png.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.infra import Infra
from bench.report import render
from worker.devtools.local import LocalBroker, LocalRedis


def step(name: str, fn: Callable[[], Any]) -> Any:
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    result = fn()
    print(f"[bench] {name} done in {time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)
    return result


def run(args: argparse.Namespace, infra: Infra, workdir: Path) -> dict[str, Any]:
    n = 50_000 if args.quick else args.n
    results: dict[str, Any] = {"command": "python -m bench " + shlex.join(sys.argv[1:]), "machine": scenarios.machine(),
                               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "throughput": {}}
    step("load features", lambda: scenarios.load_fraud_features(infra))
    seconds = 10 if args.quick else args.seconds
    # Each on a broker of its own, from the same start: tansu's acknowledgements slow down as it
    # fills up (a producer and a consumer alone take it from p99 ~25 ms to ~75 ms in 30 s).
    with fresh_broker(args, infra, workdir) as alone:
        results["broker_floor"] = step("broker alone", lambda: scenarios.broker_floor(alone, args.rate, seconds))
    with fresh_broker(args, infra, workdir) as beside:
        results["latency"] = step("latency", lambda: scenarios.latency_fraud(beside, args.rate, seconds, workdir))
    worker = step("worker throughput", lambda: scenarios.throughput_fraud(infra, n, workdir))
    results["throughput"]["worker (fraud contract)"] = worker
    topic = worker.pop("input_topic")
    results["throughput"]["hand-written batched loop"] = step(
        "batched baseline", lambda: scenarios.baseline(infra, "batched", topic, n, workdir))
    results["throughput"]["per-message loop"] = step(
        "per-message baseline", lambda: scenarios.baseline(infra, "naive", topic, min(n, 20_000), workdir))
    results["throughput"]["worker (project example)"] = step(
        "example throughput", lambda: scenarios.throughput_example(infra, n, workdir))
    if not args.skip_memory:
        results["memory"] = step("memory", lambda: scenarios.memory(
            infra, 200_000 if args.quick else args.backlog, workdir))
    results["ready_s"] = worker.get("ready_s")
    return results


@contextmanager
def fresh_broker(args: argparse.Namespace, infra: Infra, workdir: Path) -> Iterator[Infra]:
    """A new local broker (same Redis), unless the user named one: then that one."""
    if args.bootstrap:
        yield infra
        return
    with LocalBroker(log_path=workdir / f"broker-{time.monotonic_ns()}.log") as broker:
        yield Infra(broker.bootstrap_servers, infra.redis_url)


def headline(results: dict[str, Any]) -> dict[str, Any]:
    t = results["throughput"]
    w = t["worker (fraud contract)"]
    return {"worker_eps": w["throughput_eps"], "batched_loop_eps": t["hand-written batched loop"]["throughput_eps"],
            "per_message_eps": t["per-message loop"]["throughput_eps"],
            "example_eps": t["worker (project example)"]["throughput_eps"], "correctness": w["correctness"],
            "latency_p50_ms": results["latency"]["p50_ms"], "latency_p99_ms": results["latency"]["p99_ms"],
            "worker_part_p99_ms": results["latency"]["before_produce_p99_ms"],
            "broker_ack_p99_ms": results["latency"]["broker_ack_p99_ms"],
            "broker_alone_ack_p99_ms": results["broker_floor"]["ack_p99_ms"],
            "latency_rate": results["latency"]["rate"], "peak_rss_mb": results.get("memory", {}).get("peak_rss_mb"),
            "backlog": results.get("memory", {}).get("backlog"), "ready_s": results["ready_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="use this broker instead of starting tansu")
    ap.add_argument("--redis", help="use this Redis URL instead of starting redis-server (features are loaded)")
    ap.add_argument("--n", type=int, default=200_000, help="backlog size for throughput runs")
    ap.add_argument("--rate", type=float, default=5000, help="offered events/s for the latency run")
    ap.add_argument("--seconds", type=float, default=20, help="length of the latency run")
    ap.add_argument("--backlog", type=int, default=1_000_000, help="backlog size for the memory run")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small figures, for a smoke run")
    ap.add_argument("--out", type=Path, default=scenarios.ROOT / "bench" / "results" / "latest")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    with LocalBroker(log_path=workdir / "broker.log") if not args.bootstrap else nullcontext() as broker, \
            LocalRedis(log_path=workdir / "redis.log", workdir=workdir) if not args.redis else nullcontext() as r:
        infra = Infra(getattr(broker, "bootstrap_servers", args.bootstrap), getattr(r, "url", args.redis))
        results = run(args, infra, workdir)
    args.out.mkdir(parents=True, exist_ok=True)
    results["headline"] = headline(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    render(results, args.out / "report.png")
    print(json.dumps(results["headline"]))
    print(f"[bench] wrote {args.out}/results.json and report.png (logs in {workdir})", file=sys.stderr)


if __name__ == "__main__":
    main()
