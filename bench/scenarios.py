"""The benchmark's scenarios, each measured on the same broker and Redis in one run."""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from confluent_kafka import Consumer

from bench.acks import timed_acknowledgements
from bench.infra import Infra
from bench.threads import lower_busiest_network_thread
from worker.codecs.avro import PlainAvroEncoder
from worker.codecs.schemas import load_schema
from worker.devtools.local import LocalProcess
from worker.devtools.sources import load_generator
from worker.kafka.config import consumer_config
from worker.telemetry.progress import weighted_percentiles

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ROOT.parent / "shared" / "workload" / "fraud"
CONTRACT_CONFIG = ROOT / "bench" / "fraud-contract.yaml"
EXAMPLE_CONFIG = ROOT / "deploy" / "config" / "fraud-example.yaml"
EXAMPLE_DATA = ROOT / "models" / "fraud" / "data.py"
WARM_UP_EVENTS = 5000  # before the latency run is measured


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import confluent_kafka
    import onnxruntime

    cpus = len(os.sched_getaffinity(0))
    model = cpu_model()
    return {"summary": f"{cpus} CPUs ({model}), Python {platform.python_version()}, broker and Redis on the same "
                       "machine", "cpus": cpus, "cpu_model": model, "python_loop_10m_s": python_loop_seconds(),
            "load_average_at_start": os.getloadavg()[0], "python": platform.python_version(),
            "librdkafka": confluent_kafka.libversion()[0], "onnxruntime": onnxruntime.__version__,
            "platform": platform.platform()}


def cpu_model() -> str:
    """The processor's name as /proc/cpuinfo gives it ("unknown" where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def python_loop_seconds() -> float:
    """Seconds for an empty 10M-iteration Python loop: a yardstick between machines (on the 2-core VMs
    this project has been measured on it took from 0.13 to 0.45 s, and the worker's figures differed
    about as much)."""
    start = time.perf_counter()
    for _ in range(10_000_000):
        pass
    return round(time.perf_counter() - start, 3)


class MachineLoad:
    """How many of the machine's cores were busy (all processes, from /proc/stat) between
    ``__init__`` and ``cores()``: on a small machine the broker, Redis and the load generator
    share the worker's cores, and a latency's tail says more about them when the machine is full."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float]:
        """Busy and idle jiffies summed over all CPUs."""
        with open("/proc/stat") as stat:
            fields = [int(f) for f in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle, iowait
        return float(sum(fields[:8]) - idle), float(idle)

    def cores(self) -> float:
        busy0, idle0 = self._start
        busy1, idle1 = self._read()
        total = (busy1 - busy0) + (idle1 - idle0)
        cpus = os.cpu_count() or 1  # /proc/stat sums every CPU, whatever this process's affinity
        return round((busy1 - busy0) / total * cpus, 2) if total > 0 else 0.0


def gen_module() -> Any:
    """The shared workload's gen.py."""
    if str(WORKLOAD) not in sys.path:
        sys.path.insert(0, str(WORKLOAD))
    import gen

    return gen


def workload_args(n: int, seed: int = 1) -> argparse.Namespace:
    return argparse.Namespace(n=n, seed=seed, cards=100_000, merchants=5_000, missing_cards=0.02)


def load_fraud_features(infra: Infra) -> None:
    gen_module().cmd_features(argparse.Namespace(**{**vars(workload_args(0)), "redis": infra.redis_url}))


def fraud_events(n: int, seed: int, poison: float, good: list[dict[str, Any]]) -> Iterator[tuple[bytes, bytes]]:
    """The shared workload's events; a ``poison`` share replaced by undecodable bytes. Well-formed
    records are appended to ``good`` (to compute the expected scores)."""
    rng = np.random.default_rng(seed + 3000)
    for key, value, record in gen_module().event_stream(workload_args(n, seed)):
        if poison and rng.random() < poison:
            yield key, value[: len(value) // 2]
        else:
            good.append(record)
            yield key, value


class WorkerRun:
    """The worker as a process with ``--stats-file``; stopped with SIGTERM once caught up."""

    def __init__(self, infra: Infra, config: Path, input_topic: str, workdir: Path, name: str) -> None:
        self.infra, self.input = infra, input_topic
        self.output, self.dlq = infra.topic(f"{name}-out"), infra.topic(f"{name}-dlq")
        self.group = f"{name}-{uuid.uuid4().hex[:6]}"
        self.stats_path = workdir / f"{name}.stats.json"
        self.process = LocalProcess(name, [sys.executable, "-m", "worker", "run", "--config", str(config),
                                           "--bootstrap-servers", infra.bootstrap, "--redis-url", infra.redis_url,
                                           "--input-topic", input_topic, "--output-topic", self.output,
                                           "--dlq-topic", self.dlq, "--group-id", self.group,
                                           "--stats-file", str(self.stats_path)], workdir / f"{name}.log")

    @property
    def pid(self) -> int:
        if self.process.pid is None:
            raise RuntimeError(f"{self.process.name} is not started")
        return self.process.pid

    def start(self) -> WorkerRun:
        self.process.start()
        self.process.wait_for_log(r"assigned", timeout_s=90)
        return self

    def finish(self, timeout_s: float = 600) -> dict[str, Any]:
        caught_up = self.infra.wait_caught_up(self.group, self.input, timeout_s)
        code = self.process.stop(30)
        if not caught_up or code != 0:
            raise RuntimeError(f"{self.process.name}: caught up {caught_up}, exit code {code}; "
                               f"see {self.process.log_path}")
        stats: dict[str, Any] = json.loads(self.stats_path.read_text())
        return stats


def check_scores(infra: Infra, topic: str, good: list[dict[str, Any]]) -> dict[str, int]:
    """Missing, wrong (|Δ| > 1e-5) and duplicate predictions against onnxruntime run directly."""
    gen = gen_module()
    want = dict(zip((r["event_id"] for r in good), gen.expected_scores(good, workload_args(0)).tolist(),
                    strict=True))
    got: dict[str, float] = {}
    duplicates = 0
    for _, value in infra.read_all(topic, len(good)):
        record = fastavro.schemaless_reader(io.BytesIO(value), gen.PRED)
        duplicates += record["event_id"] in got
        got[record["event_id"]] = record["score"]
    wrong = sum(1 for e, s in got.items() if e in want and abs(s - want[e]) > 1e-5)
    return {"expected": len(want), "missing": sum(1 for e in want if e not in got), "wrong": wrong,
            "duplicates": duplicates}


def throughput_fraud(infra: Infra, n: int, workdir: Path) -> dict[str, Any]:
    """Backlog mode on the shared workload; every prediction checked."""
    topic, good = infra.topic("fraud-in"), []
    infra.produce(topic, fraud_events(n, 1, 0.001, good))
    run = WorkerRun(infra, CONTRACT_CONFIG, topic, workdir, "worker-fraud").start()
    stats = run.finish()
    stats["correctness"] = check_scores(infra, run.output, good)
    stats["input_topic"] = topic
    return stats


def baseline(infra: Infra, module: str, topic: str, n: int, workdir: Path) -> dict[str, Any]:
    """A baseline loop (bench/baselines) on an existing backlog topic."""
    out = infra.topic(f"{module}-out")
    cmd = [sys.executable, "-m", f"bench.baselines.{module}", "--bootstrap", infra.bootstrap, "--redis",
           infra.redis_url, "--input", topic, "--output", out, "--group", f"{module}-{uuid.uuid4().hex[:6]}",
           "--n", str(n)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
    (workdir / f"baseline-{module}.log").write_text(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"baseline {module} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def latency_fraud(infra: Infra, rate: float, seconds: float, workdir: Path,
                  lower_fetch: bool = False) -> dict[str, Any]:
    """Worker-added latency at a fixed offered rate (after a warm-up that is not measured): from
    receiving an event to the broker acknowledging its prediction, split into the worker's part
    (wait, process, hand to the producer) and the wait for the broker's acknowledgement.
    ``lower_fetch``: the worker's busiest librdkafka thread runs at nice 19 (``bench.threads``)."""
    topic = infra.topic("fraud-rate")
    run = WorkerRun(infra, CONTRACT_CONFIG, topic, workdir, "worker-latency").start()
    infra.produce(topic, fraud_events(WARM_UP_EVENTS, 99, 0.0, []))
    infra.wait_caught_up(run.group, topic, 120)
    lowered = lower_busiest_network_thread(run.pid) if lower_fetch else None
    # Built before the clock starts: generating them on the fly (the workload's card table first)
    # held the first event back ~160 ms, then the pacing sent the ~800 it was behind in one burst
    # (p99 112-131 ms in the first 5 s on noida-db, 5-15 ms after), and the encoding competed
    # with the worker for the machine's two cores.
    events = list(fraud_events(int(rate * seconds), 7, 0.0, []))
    measured_from, load = time.time(), MachineLoad()
    sent = infra.produce(topic, events, rate=rate)
    busy = load.cores()
    stats = run.finish()
    batches = [b for b in stats["batches"] if b[0] >= measured_from]
    window, own, acks = _split(batches)
    p50, p90, p99, worst = weighted_percentiles(window, (50, 90, 99, 100))
    ack50, ack99 = weighted_percentiles(acks, (50, 99))
    own50, own99 = weighted_percentiles(own, (50, 99))
    return {"rate": rate, "events": sent, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": worst,
            "broker_ack_p50_ms": ack50, "broker_ack_p99_ms": ack99, "before_produce_p50_ms": own50,
            "before_produce_p99_ms": own99, "mean_batch": round(sum(s for _, s in window) / max(len(window), 1), 1),
            "worker_cpu_us_per_event": stats["cpu_us_per_event"], "machine_busy_cores": busy,
            "windows": _windows(batches, measured_from), "lowered_thread": lowered,
            "samples": window, "ack_samples": acks,
            "stage_us_per_event": stats["stage_us_per_event"]}


def example_events(n: int) -> Iterator[tuple[bytes, bytes]]:
    """The project example's synthetic transactions, encoded with its schema, keyed by card."""
    events = load_generator(f"{EXAMPLE_DATA}:events")
    encode = PlainAvroEncoder(load_schema(ROOT / "schemas" / "fraud" / "transaction.avsc"))
    for record in events(n):
        yield record["card"]["id"].encode(), encode(record, None)  # type: ignore[arg-type]


def _split(batches: list[list[Any]]) -> tuple[list[tuple[float, int]], ...]:
    """(ms, events) per batch of the worker's latency, of its own part, and of the broker's acknowledgement."""
    return ([(ms, n) for _, ms, n, _ in batches], [(ms - ack, n) for _, ms, n, ack in batches],
            [(ack, n) for _, _, n, ack in batches])


def _windows(batches: list[list[Any]], start: float, seconds: float = 5.0) -> list[dict[str, Any]]:
    """p50/p99 per window of the run: the worker's latency, its own part, the broker's acknowledgement."""
    by_window: dict[int, list[list[Any]]] = {}
    for batch in batches:
        by_window.setdefault(int((batch[0] - start) // seconds), []).append(batch)
    out = []
    for index, rows in sorted(by_window.items()):
        total, own, ack = (weighted_percentiles(samples, (50, 99)) for samples in _split(rows))
        out.append({"from_s": index * seconds, "events": sum(r[2] for r in rows), "p50_ms": total[0],
                    "p99_ms": total[1], "worker_part_p50_ms": own[0], "worker_part_p99_ms": own[1],
                    "broker_ack_p50_ms": ack[0], "broker_ack_p99_ms": ack[1]})
    return out


def throughput_example(infra: Infra, n: int, workdir: Path) -> dict[str, Any]:
    """Backlog mode on the project's own example (its generator, schemas and model)."""
    topic = infra.topic("example-in")
    subprocess.run([sys.executable, "-m", "worker", "features", "load", "--generator", f"{EXAMPLE_DATA}:features",
                    "--config", str(EXAMPLE_CONFIG), "--redis-url", infra.redis_url], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    infra.produce(topic, example_events(n))
    return WorkerRun(infra, EXAMPLE_CONFIG, topic, workdir, "worker-example").start().finish()


def memory(infra: Infra, n: int, workdir: Path) -> dict[str, Any]:
    """Peak RSS while working through a large backlog."""
    topic = infra.topic("fraud-big")
    infra.produce(topic, fraud_events(n, 5, 0.0, []))
    stats = WorkerRun(infra, CONTRACT_CONFIG, topic, workdir, "worker-memory").start().finish(timeout_s=1200)
    return {"backlog": n, "peak_rss_mb": stats["peak_rss_mb"], "throughput_eps": stats["throughput_eps"]}


def broker_floor(infra: Infra, rate: float, seconds: float, lower_fetch: bool = False) -> dict[str, Any]:
    """The broker's own produce → acknowledgement latency at the offered rate, with a consumer
    reading the topic as the worker does: part of the worker's latency it cannot go below.
    ``lower_fetch``: that reader's busiest librdkafka thread runs at nice 19, as the worker's does."""
    # noida-db pauses the longer the more it holds (bench.broker_quirks autosave), so the floor's
    # broker holds, on average over the run, as many records as the worker's: that one starts with the
    # warm-up's events and predictions and gains an event and a prediction per event measured, this
    # one gains only the event.
    ballast = WARM_UP_EVENTS * 2 + int(rate * seconds) // 2
    infra.produce(infra.topic("ballast"), ((b"%d" % (i % 1000), b"x" * 60) for i in range(ballast)))
    topic = infra.topic("floor")
    stop = threading.Event()
    reader = threading.Thread(target=_read_until, args=(infra.bootstrap, topic, stop), daemon=True)
    reader.start()
    time.sleep(5)  # the reader joins its group and fetches
    lowered = lower_busiest_network_thread(os.getpid()) if lower_fetch else None
    load = MachineLoad()
    acknowledged = timed_acknowledgements(infra.bootstrap, topic, rate, seconds, 80)
    busy = load.cores()
    stop.set()
    measured = [(ms, 1) for _, ms in acknowledged[len(acknowledged) // 10:]]  # past the producer's first requests
    p50, p99 = weighted_percentiles(measured, (50, 99))
    return {"rate": rate, "ack_p50_ms": p50, "ack_p99_ms": p99, "machine_busy_cores": busy, "lowered_thread": lowered,
            "records_held_before": ballast}


def _read_until(bootstrap: str, topic: str, stop: threading.Event) -> None:
    consumer = Consumer(consumer_config(bootstrap, f"floor-{uuid.uuid4().hex[:6]}", {}, {"session.timeout.ms": 6000}))
    consumer.subscribe([topic])
    while not stop.is_set():
        consumer.consume(2000, 0.1)
    consumer.close()

