"""Benchmark the worker against baselines, side by side, on one broker and Redis.

    python -m bench                       # full run: results in bench/results/latest/
    python -m bench --quick               # smaller figures, a few minutes
    python -m bench --bootstrap HOST:PORT --redis redis://HOST:PORT/0
    python -m bench --broker noida        # on a local noida-db broker instead of tansu
    python -m bench --broker noida --broker tansu --latency-only   # latency and floor on each, one run

Starts a local broker (tansu unless ``--broker`` says otherwise) and redis-server unless given, and
measures on the shared fraud
workload: throughput (backlog) of the worker, a hand-written batched loop and a per-message
tutorial loop; the worker's own latency at a fixed offered rate; time per stage; batch
sizes; peak RSS with a large backlog; time to ready; and throughput on the project's own
example. With ``--broker`` given more than once, the latency and the broker's own floor are
measured on each (each broker's floor in the same run as its latency); the rest on the first.
Writes results.json and report.png (``--latency-only``: results.json alone).
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
from worker.devtools.local import BROKER_KINDS, LocalRedis, local_broker


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
    by_broker = {kind: latency_on(args, kind, infra, workdir) for kind in brokers(args)}
    results["latency_by_broker"] = {kind: {"broker_floor": floor, "latency": latency}
                                    for kind, (floor, latency) in by_broker.items()}
    results["broker_floor"], results["latency"] = next(iter(by_broker.values()))
    if args.latency_only:
        return results
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


def brokers(args: argparse.Namespace) -> list[str]:
    """The brokers measured, in order: the one ``--bootstrap`` names (by its address: which kind it is
    is not known), else the local ones asked for (tansu when none is)."""
    if args.bootstrap:
        return [args.bootstrap]
    return list(dict.fromkeys(args.broker or ["tansu"]))


def latency_on(args: argparse.Namespace, kind: str, infra: Infra, workdir: Path) -> tuple[dict[str, Any], ...]:
    """The broker's own floor, then the worker's latency, on fresh brokers of ``kind``."""
    seconds = 10 if args.quick else args.seconds
    # Each on a broker of its own, from the same start: tansu's acknowledgements slow down as it
    # fills up (a producer and a consumer alone take it from p99 ~25 ms to ~75 ms in 30 s).
    with fresh_broker(args, kind, infra, workdir) as alone:
        floor = step(f"{kind} alone", lambda: scenarios.broker_floor(
            alone, args.rate, seconds, args.lower_fetch_priority))
    with fresh_broker(args, kind, infra, workdir) as beside:
        latency = step(f"latency on {kind}", lambda: scenarios.latency_fraud(
            beside, args.rate, seconds, workdir, args.lower_fetch_priority))
    return {**floor, "broker": kind}, {**latency, "broker": kind}


@contextmanager
def fresh_broker(args: argparse.Namespace, kind: str, infra: Infra, workdir: Path) -> Iterator[Infra]:
    """A new local broker of ``kind`` (same Redis), unless the user named one: then that one."""
    if args.bootstrap:
        yield infra
        return
    with local_broker(kind, log_path=workdir / f"broker-{kind}-{time.monotonic_ns()}.log") as broker:
        yield Infra(broker.bootstrap_servers, infra.redis_url)


def latency_headline(results: dict[str, Any]) -> dict[str, Any]:
    """Per broker: the worker's latency, its own part, and the broker-only floor of the same run."""
    return {kind: {"p50_ms": r["latency"]["p50_ms"], "p99_ms": r["latency"]["p99_ms"],
                   "worker_part_p99_ms": r["latency"]["before_produce_p99_ms"],
                   "broker_ack_p99_ms": r["latency"]["broker_ack_p99_ms"],
                   "broker_alone_ack_p50_ms": r["broker_floor"]["ack_p50_ms"],
                   "broker_alone_ack_p99_ms": r["broker_floor"]["ack_p99_ms"], "rate": r["latency"]["rate"],
                   "worker_cpu_us_per_event": r["latency"]["worker_cpu_us_per_event"],
                   "machine_busy_cores": r["latency"]["machine_busy_cores"],
                   "broker_alone_machine_busy_cores": r["broker_floor"]["machine_busy_cores"],
                   "fetch_thread_lowered": r["latency"].get("lowered_thread") is not None}
            for kind, r in results["latency_by_broker"].items()}


def headline(results: dict[str, Any]) -> dict[str, Any]:
    if not results["throughput"]:
        return {"latency_by_broker": latency_headline(results)}
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
            "backlog": results.get("memory", {}).get("backlog"), "ready_s": results["ready_s"],
            "latency_by_broker": latency_headline(results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--broker", action="append", choices=BROKER_KINDS,
                    help="the local broker to start (default tansu); given twice, latency is measured on both")
    ap.add_argument("--latency-only", action="store_true", help="only the latency and the broker floor")
    ap.add_argument("--lower-fetch-priority", action="store_true",
                    help="diagnostic (Linux): run the busiest librdkafka thread of the worker, and of the floor's "
                         "reader, at nice 19; on noida-db, whose idle fetches keep it busy, shows what that costs")
    ap.add_argument("--redis", help="use this Redis URL instead of starting redis-server (features are loaded)")
    ap.add_argument("--n", type=int, default=200_000, help="backlog size for throughput runs")
    ap.add_argument("--rate", type=float, default=5000, help="offered events/s for the latency run")
    ap.add_argument("--seconds", type=float, default=20, help="length of the latency run")
    ap.add_argument("--backlog", type=int, default=1_000_000, help="backlog size for the memory run")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small figures, for a smoke run")
    ap.add_argument("--out", type=Path, default=scenarios.ROOT / "bench" / "results" / "latest")
    args = ap.parse_args()
    if args.bootstrap and args.broker:
        ap.error("--broker starts a local broker and --bootstrap uses yours: give one of them")
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    with local_broker(brokers(args)[0], workdir / "broker.log") if not args.bootstrap else nullcontext() as broker, \
            LocalRedis(log_path=workdir / "redis.log", workdir=workdir) if not args.redis else nullcontext() as r:
        infra = Infra(getattr(broker, "bootstrap_servers", args.bootstrap), getattr(r, "url", args.redis))
        results = run(args, infra, workdir)
    args.out.mkdir(parents=True, exist_ok=True)
    results["headline"] = headline(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    if results["throughput"]:
        render(results, args.out / "report.png")
    print(json.dumps(results["headline"]))
    print(f"[bench] wrote {args.out}/results.json and report.png (logs in {workdir})", file=sys.stderr)


if __name__ == "__main__":
    main()
