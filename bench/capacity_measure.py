"""``python -m bench.capacity measure``: the per-unit figures of the capacity model, on this machine.

- **Worker**: ``../shared/tools/contract_check.py`` (tansu and the worker on this machine, Redis
  started here) ``--runs`` times; the median of its throughput, and of the worker's own CPU per
  event from ``--stats-file`` (every thread of the process, while busy).
- **Redis per event**: during each run, Redis' INFO counters are read every 0.25 s. The features
  load (HSET) ends before the worker's first HMGET, so the counters between the last sample before
  that HMGET and the end belong to the worker alone (less this poller's own INFO traffic, which it
  counts): HMGETs, request and reply bytes, server CPU.
- **Redis per shard**: ``redis-benchmark`` against a redis-server of its own (one core: Redis
  executes commands on one thread), HMGET with the workload's real fields and values on 100,000
  card and 5,000 merchant hashes, at several pipeline depths (the worker sends each batch's HMGETs
  as one pipeline, split per node on a cluster).
- **Broker per event**: the workload's Avro events and the worker's predictions, sized, plus the
  Kafka v2 per-record framing (the RecordBatch header is left to the plan, which knows batch sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import hiredis

from bench.capacity import ROOT, Figures
from worker.config.settings import load_settings
from worker.devtools.local import LocalRedis
from worker.features.redis_store import pack

CONTRACT_CHECK = ROOT.parent / "shared" / "tools" / "contract_check.py"
CONTRACT_CONFIG = ROOT / "bench" / "fraud-contract.yaml"
DEPTHS = (1, 8, 32, 128, 512, 2048)  # HMGETs per pipeline
# Connections at once: at scale every worker process holds one to each shard, so a shard sees dozens of
# small pipelines; with few clients a shallow depth would measure round trips, not the server.
BENCH_CLIENTS = 32
BENCH_REPEATS = 3  # the median is kept: neighbours on a shared machine only ever slow a run down
INFO = pack(b"INFO", b"stats", b"commandstats", b"cpu")


class InfoPoller(threading.Thread):
    """Samples Redis' counters every ``every_s`` over a raw connection, counting its own bytes so
    that they can be taken out of the server's totals."""

    def __init__(self, port: int, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), 5)
        self.every_s, self.halt = every_s, threading.Event()
        self.sent = self.received = 0
        self.samples: list[dict[str, float]] = []

    def sample(self) -> dict[str, float]:
        self.sock.sendall(INFO)
        self.sent += len(INFO)
        reader, got = hiredis.Reader(), 0
        reply: Any = False  # hiredis answers False until a whole reply is in
        while reply is False:
            data = self.sock.recv(1 << 16)
            got += len(data)
            reader.feed(data)
            reply = reader.gets()
        self.received += got
        counters = parse_info(reply.decode())
        # this exchange's own bytes are not yet in the server's counters; the ones before it are
        return {**counters, "own_sent": self.sent - len(INFO), "own_received": self.received - got}

    def run(self) -> None:
        while not self.halt.wait(self.every_s):
            self.samples.append(self.sample())

    def finish(self) -> list[dict[str, float]]:
        self.halt.set()
        self.join()
        self.samples.append(self.sample())
        self.sock.close()
        return self.samples


def parse_info(text: str) -> dict[str, float]:
    """The INFO counters the model needs: net bytes, server CPU, HMGET and HSET calls."""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    calls = {name: float(m.group(1)) for name in ("hmget", "hset")
             if (m := re.search(r"calls=(\d+)", fields.get(f"cmdstat_{name}", "")))}
    return {"net_in": float(fields["total_net_input_bytes"]), "net_out": float(fields["total_net_output_bytes"]),
            "cpu_s": float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"]),
            "hmget": calls.get("hmget", 0.0), "hset": calls.get("hset", 0.0)}


def worker_share(samples: list[dict[str, float]]) -> dict[str, float]:
    """Counters from the last sample before the worker's first HMGET to the end."""
    start = samples[0]["hmget"]
    before = [s for s in samples if s["hmget"] == start]
    base, end = before[-1], samples[-1]
    if base["hset"] != end["hset"] or end["hmget"] == start:
        raise RuntimeError("could not tell the features load from the worker's reads in Redis' counters")
    return {"hmget": end["hmget"] - base["hmget"], "cpu_s": end["cpu_s"] - base["cpu_s"],
            "request_bytes": end["net_in"] - base["net_in"] - (end["own_sent"] - base["own_sent"]),
            "reply_bytes": end["net_out"] - base["net_out"] - (end["own_received"] - base["own_received"])}


def contract_run(redis: LocalRedis, n: int, workdir: Path, index: int) -> dict[str, Any]:
    """One contract check with the worker's ``--stats-file``; its result, the worker's statistics
    and the worker's share of Redis' counters."""
    stats = workdir / f"stats-{index}.json"
    worker = (f"{shlex.quote(sys.executable)} -m worker run --config bench/fraud-contract.yaml "
              "--bootstrap-servers {bootstrap} --redis-url {redis} --input-topic {input} --output-topic {output} "
              f"--dlq-topic {{dlq}} --group-id {{group}} --stats-file {shlex.quote(str(stats))}")
    command = [sys.executable, str(CONTRACT_CHECK), "--n", str(n), "--redis", redis.url, "--worker", worker]
    poller = InfoPoller(redis.port)
    poller.start()
    load_before = os.getloadavg()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    samples = poller.finish()
    if done.returncode != 0 or not stats.exists():
        raise RuntimeError(f"contract check failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-1500:]}")
    result, own = json.loads(done.stdout.strip().splitlines()[-1]), json.loads(stats.read_text())
    own.pop("batches", None)
    return {"contract": result, "worker_stats": own, "redis": worker_share(samples),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()]}


def contract_runs(runs: int, n: int, workdir: Path) -> list[dict[str, Any]]:
    out = []
    with LocalRedis(log_path=workdir / "redis-contract.log", workdir=workdir) as redis:
        for i in range(runs):
            out.append(contract_run(redis, n, workdir, i))
            print(f"[capacity] contract run {i + 1}: {out[-1]['contract'].get('throughput_eps')} events/s, "
                  f"load {out[-1]['load_after'][0]}", file=sys.stderr, flush=True)
    return out


def workload() -> Any:
    """The shared workload's gen.py and population.py (gen imports population)."""
    from bench.scenarios import gen_module

    return gen_module()


def load_bench_hashes(url: str) -> dict[str, tuple[str, list[str]]]:
    """The workload's card and merchant values under 12-digit keys (what redis-benchmark's
    ``__rand_int__`` makes); per entity its key pattern and fields."""
    import redis as redis_py

    pop = workload().pop
    client = redis_py.Redis.from_url(url)
    entities = {"card": (pop.cards(100_000, 1), pop.CARD_FIELDS), "merchant": (pop.merchants(5_000, 1),
                                                                             pop.MERCHANT_FIELDS)}
    out = {}
    for name, (values, fields) in entities.items():
        pipe = client.pipeline(transaction=False)
        for i in range(len(values[fields[0]])):
            pipe.hset(f"capacity:{name}:{i:012d}", mapping={f: repr(float(values[f][i])) for f in fields})
        pipe.execute()
        out[name] = (f"capacity:{name}:__rand_int__", list(fields))
    client.close()
    return out


def redis_benchmark(port: int, depth: int, key: str, fields: list[str], keys: int) -> float:
    """HMGET/s of one redis-server at a pipeline depth, from redis-benchmark's CSV line (median of
    ``BENCH_REPEATS`` runs)."""
    return statistics.median(redis_benchmark_once(port, depth, key, fields, keys) for _ in range(BENCH_REPEATS))


def redis_benchmark_once(port: int, depth: int, key: str, fields: list[str], keys: int) -> float:
    n = 100_000 if depth == 1 else 500_000
    command = ["redis-benchmark", "-p", str(port), "-c", str(BENCH_CLIENTS), "-n", str(n), "-P", str(depth),
               "-r", str(keys), "--csv", "HMGET", key, *fields]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    row = done.stdout.strip().splitlines()[-1]
    return float(csv_cells(row)[1])


def csv_cells(row: str) -> list[str]:
    return [cell.strip('"') for cell in row.split('","')]


def shard_figures(workdir: Path) -> dict[str, Any]:
    """Per entity and depth the measured HMGET/s, and per depth the mix of one card and one merchant
    read per event (the time per command averaged: a harmonic mean)."""
    with LocalRedis(log_path=workdir / "redis-benchmark.log", workdir=workdir) as server:
        entities = load_bench_hashes(server.url)
        sizes = {"card": 100_000, "merchant": 5_000}
        by_entity = {name: {d: redis_benchmark(server.port, d, key, fields, sizes[name]) for d in DEPTHS}
                     for name, (key, fields) in entities.items()}
    mixed = {d: round(len(by_entity) / sum(1 / rates[d] for rates in by_entity.values())) for d in DEPTHS}
    return {"clients": BENCH_CLIENTS, "repeats": BENCH_REPEATS, "by_entity": by_entity, "mixed": mixed,
            "load_after": [round(x, 2) for x in os.getloadavg()]}


def varint_bytes(value: int) -> int:
    """Bytes of a zigzag varint, as Kafka's v2 records encode lengths and deltas."""
    zigzag, size = (value << 1) ^ (value >> 63), 1
    while zigzag >= 0x80:
        zigzag, size = zigzag >> 7, size + 1
    return size


def record_bytes(key: bytes, value: bytes) -> int:
    """One Kafka v2 record on the wire: length, attributes, timestamp and offset deltas (one byte
    each: within 63 ms and 63 records of the batch's first), key, value, no headers."""
    body = 1 + 1 + 1 + varint_bytes(len(key)) + len(key) + varint_bytes(len(value)) + len(value) + 1
    return varint_bytes(body) + body


def broker_figures(n: int = 20_000) -> dict[str, float]:
    """Mean Avro sizes of the workload's events and of the predictions the worker writes for them
    (fields as bench/fraud-contract.yaml's output), and their records' bytes."""
    import io

    import fastavro

    gen = workload()
    settings = load_settings(CONTRACT_CONFIG)
    sizes: dict[str, list[int]] = {"in_value": [], "in_record": [], "out_value": [], "out_record": []}
    for key, value, record in gen.event_stream(argparse.Namespace(n=n, seed=1, cards=100_000, merchants=5_000,
                                                                  missing_cards=0.02)):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, gen.PRED, prediction(record, settings.model.version or ""))
        sizes["in_value"].append(len(value))
        sizes["in_record"].append(record_bytes(key, value))
        sizes["out_value"].append(len(buffer.getvalue()))
        sizes["out_record"].append(record_bytes(key, buffer.getvalue()))
    return {name: round(statistics.fmean(values), 1) for name, values in sizes.items()}


def prediction(event: dict[str, Any], version: str) -> dict[str, Any]:
    # the score's value does not change its size (an Avro double is 8 bytes)
    return {"event_id": event["event_id"], "card_id": event["card_id"], "score": 0.1, "is_fraud": False,
            "model_version": version, "scored_at": int(time.time() * 1000)}


def entities_per_event() -> int:
    """HMGETs per event when no key repeats within a batch: one per configured entity."""
    return len(load_settings(CONTRACT_CONFIG).features)


def median_of(runs: list[dict[str, Any]], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for step in path:
            value = value[step]
        values.append(float(value))
    return statistics.median(values)


def per_hmget(runs: list[dict[str, Any]], name: str) -> float:
    total = sum(float(r["redis"][name]) for r in runs)
    return round(total / sum(float(r["redis"]["hmget"]) for r in runs), 2)


def summarise(runs: list[dict[str, Any]], shards: dict[str, Any], broker: dict[str, float]) -> dict[str, Any]:
    """The plan's figures from the measurements (and the measurements, for the record)."""
    events = sum(r["worker_stats"]["events"] for r in runs)
    figures = Figures(
        worker_eps_per_process=median_of(runs, "contract", "throughput_eps"),
        worker_cpu_us_per_event=median_of(runs, "worker_stats", "cpu_us_per_event"),
        redis_commands_per_event=entities_per_event(),
        redis_request_bytes_per_command=per_hmget(runs, "request_bytes"),
        redis_reply_bytes_per_command=per_hmget(runs, "reply_bytes"),
        redis_max_commands_by_depth=shards["mixed"], input_record_bytes=broker["in_record"],
        output_record_bytes=broker["out_record"])
    figures.check()
    hmgets = sum(r["redis"]["hmget"] for r in runs)
    observed = {"hmget_per_event_in_runs": round(hmgets / events, 3),
                "mean_batch_in_runs": median_of(runs, "worker_stats", "mean_batch"),
                "redis_server_cpu_us_per_hmget": round(sum(r["redis"]["cpu_s"] for r in runs) / hmgets * 1e6, 3),
                "cores_per_process_at_measured_rate": round(
                    figures.worker_eps_per_process * figures.worker_cpu_us_per_event / 1e6, 2)}
    return {"figures": {k: v for k, v in vars(figures).items()}, "observed": observed, "broker": broker,
            "redis_benchmark": shards, "contract_runs": runs}


def machine() -> dict[str, Any]:
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    return {"cpus": len(os.sched_getaffinity(0)), "uptime": uptime, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "redis_server": subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                           check=False).stdout.strip(),
            "note": "broker (tansu), Redis, the contract checker and the worker share this machine"}


def measure_command(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="capacity-"))
    started = machine()
    runs = contract_runs(args.runs, args.n, workdir)
    print(f"[capacity] redis-benchmark, load {os.getloadavg()[0]:.2f} ...", file=sys.stderr, flush=True)
    shards = shard_figures(workdir)
    result = {"command": "python -m bench.capacity measure " + shlex.join(sys.argv[2:]),
              "machine": {**started, "uptime_after": machine()["uptime"]},
              **summarise(runs, shards, broker_figures())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"figures": result["figures"], "observed": result["observed"]}, indent=1))
    print(f"[capacity] wrote {args.out} (logs in {workdir})", file=sys.stderr)
