"""Telemetry's cost on the hot path, without a broker: the fraud pipeline run batch by batch with
the observer calls the runner makes, telemetry off (the runner's default observers only) and on
(log context, metrics, health, and tracing at the given sampling ratio, spans encoded as OTLP
protobuf as the Kafka exporter does). Modes run in a shuffled order each round; the best of
``--repeat`` rounds counts, in wall time and in process CPU time (every thread; steadier on a
busy machine).

    python -m bench.telemetry --redis redis://127.0.0.1:6379/0 --n 100000 --batch 2000

The Redis must hold the workload's features (``gen.py features --redis URL``). ``--headers``
gives every event a not-sampled producer ``traceparent`` (what following upstream decisions
costs when producers are instrumented).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from bench.stages import fraud_pipeline, workload_messages
from worker.pipeline.pipeline import Pipeline
from worker.records import Delivery, Headers, InputMessage, StageTiming
from worker.runner.observer import Observer
from worker.telemetry.health import Health
from worker.telemetry.kafka_exporter import KafkaSpanExporter
from worker.telemetry.logcontext import BatchLogContext
from worker.telemetry.metrics import Metrics
from worker.telemetry.progress import ProgressLog
from worker.telemetry.tracing import BatchSampler, BatchTracer, QueueSpanProcessor, tracer_provider

PARTITIONS = 4
RUN = 250  # consecutive events per partition, as librdkafka hands out fetched chunks


class _DiscardingProducer:
    """Stands in for the traces producer: takes the encoded requests and drops them."""

    def __init__(self) -> None:
        self.messages = self.bytes = 0

    def produce(self, topic: str, value: bytes, key: bytes, **kwargs: Any) -> None:
        self.messages += 1
        self.bytes += len(value)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0


def messages(n: int, headers: bool) -> list[InputMessage]:
    now_ms = int(time.time() * 1000)
    out = []
    for i, m in enumerate(workload_messages(n)):
        partition, offset = (i // RUN) % PARTITIONS, i
        trace: Headers | None = [("traceparent", b"00-%032x-%016x-00" % (i + 1, i + 1))] if headers else None
        out.append(InputMessage(m.value(), m.key(), "tx", partition, offset, trace, (1, now_ms)))
    return out


def telemetry_observers(ratio: float) -> tuple[list[Observer], _DiscardingProducer, QueueSpanProcessor]:
    registry = CollectorRegistry()
    producer = _DiscardingProducer()
    processor = QueueSpanProcessor(KafkaSpanExporter(producer, "otlp_spans"), 2048, 0.5)  # type: ignore[arg-type]
    provider = tracer_provider(processor, "bench", "0")
    tracer = BatchTracer(provider.get_tracer("bench"), BatchSampler(ratio, True), "bench", "predictions")
    metrics = Metrics(registry, "bench")
    metrics.partitions_changed([("tx", p) for p in range(PARTITIONS)], [])
    return [BatchLogContext(), metrics, Health(), tracer], producer, processor


def drive(pipeline: Pipeline, events: Sequence[InputMessage], batch: int, observers: Sequence[Observer],
          checkpoint_every: int = 25) -> tuple[float, float]:
    """Wall and process CPU seconds (every thread, the span exporter's included) to process
    ``events`` in batches, calling the observers as the runner does."""
    started, cpu_started = time.perf_counter(), time.process_time()
    for i, start in enumerate(range(0, len(events), batch)):
        chunk = events[start:start + batch]
        received = time.perf_counter_ns()
        for observer in observers:
            observer.batch_started(chunk, received)
        result = pipeline.process(chunk)
        delivery = Delivery(len(chunk), consumed_ns=received, published_ns=time.perf_counter_ns())
        result.timings.append(StageTiming("produce", delivery.published_ns, delivery.published_ns))
        for observer in observers:
            observer.batch_done(chunk, result, delivery)
        delivery.acked_ns = time.perf_counter_ns()
        for observer in observers:
            observer.batch_acked(delivery)
        if i % checkpoint_every == checkpoint_every - 1:
            now = time.perf_counter_ns()
            for observer in observers:
                observer.checkpoint_done(StageTiming("commit", now, now), True)
    return time.perf_counter() - started, time.process_time() - cpu_started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", required=True, help="Redis URL with the workload's features loaded")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ratio", type=float, default=0.01, help="tracing sample ratio (default: the worker's)")
    ap.add_argument("--headers", action="store_true", help="give every event a not-sampled traceparent")
    args = ap.parse_args()
    pipeline = fraud_pipeline(args.redis)
    events = messages(args.n, args.headers)
    on, producer, processor = telemetry_observers(args.ratio)
    modes: dict[str, list[Observer]] = {"off": [ProgressLog()], "on": [ProgressLog(), *on]}
    drive(pipeline, events[: args.batch * 5], args.batch, modes["on"])  # warm up
    wall, cpu = dict.fromkeys(modes, float("inf")), dict.fromkeys(modes, float("inf"))
    order = random.Random(7)
    for _ in range(args.repeat):
        # Whichever mode runs second in a pair measures a few percent slower on its own: shuffle.
        for mode in order.sample(list(modes), len(modes)):
            w, c = drive(pipeline, events, args.batch, modes[mode])
            wall[mode], cpu[mode] = min(wall[mode], w), min(cpu[mode], c)
    processor.force_flush()
    us = {mode: seconds / len(events) * 1e6 for mode, seconds in wall.items()}
    cpu_us = {mode: seconds / len(events) * 1e6 for mode, seconds in cpu.items()}
    print(json.dumps({"us_per_event": {k: round(v, 3) for k, v in us.items()},
                      "cpu_us_per_event": {k: round(v, 3) for k, v in cpu_us.items()},
                      "events_per_s": {k: round(1e6 / v) for k, v in us.items()},
                      "on_vs_off": round(us["off"] / us["on"], 4),
                      "on_vs_off_cpu": round(cpu_us["off"] / cpu_us["on"], 4),
                      "ratio": args.ratio, "headers": args.headers,
                      "trace_messages": producer.messages, "trace_bytes": producer.bytes}))


if __name__ == "__main__":
    main()
