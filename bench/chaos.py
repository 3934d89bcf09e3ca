"""Chaos soak: replicas killed with SIGKILL on a timer while the shared fraud workload streams.

  python -m bench.chaos                                   # both guarantees, the acceptance run
  python -m bench.chaos --guarantee exactly-once --events 50000 --kill-every 3
  python -m bench.chaos --broker noida --guarantee exactly-once --events 100000 --kill-every 3.5

Starts a broker (tansu, or noida-db with ``--broker noida``) and a redis-server of its own, loads the
workload's features, produces ``--events`` events (a ``--poison`` share undecodable) at ``--rate``
per second, runs ``--replicas`` worker processes, and every ``--kill-every`` seconds kills one of
them with SIGKILL (in turn) and starts it again, until every event has its prediction (or dead
letter) or ``--timeout``. Then it reads the prediction topic as a read_committed consumer would: on
tansu from the log's transaction markers (so aborted records never count, though tansu does not
filter them), on noida-db with a plain librdkafka read_committed consumer (it filters them, as Kafka
does); and prints one JSON line per guarantee: missing, wrong and duplicate predictions, dead
letters, kills, and how long the run took, with the batch sizes and broker acknowledgement times
of every replica process (their ``--stats-file`` snapshots, merged: a killed one's up to its last
second), input partitions two live replica processes held at once, read from their logs
(``owned_twice``), and, on noida-db, what a read_committed reader cannot see yet and why (``unfinished``).
Exit 0 only if nothing is missing or wrong, every poison event was dead-lettered, and, in
exactly-once mode, nothing is duplicated.

As in the fault tests, each replica slot keeps its transactional id across restarts and events are
partitioned like the worker's outputs; tansu needs both (see tests/integration/test_faults.py). On
noida-db each slot also keeps its ``group_instance_id`` (static membership): noida-db never expires
a dead dynamic member, so without it a killed replica's partitions are never reassigned (README,
broker notes). ``--static-membership`` asks for it on tansu too. ``--assignor range`` replaces the
worker's cooperative-sticky assignor (noida-db never completes a cooperative join of a new member).
Worker logs stay in the directory the JSON line names (``logs``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from itertools import combinations, product
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.infra import Infra
from bench.scenarios import fraud_events, gen_module, workload_args
from tests.support.committed_reader import LogRecord, read_committed
from tests.support.infra import LocalRedisServer, stop_process, wait_redis
from worker.devtools.local import BROKER_KINDS, local_broker
from worker.telemetry.stats import histogram_percentiles

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "bench" / "fraud-contract.yaml"
# A killed replica's partitions wait this long for the group to notice; the soak kills often. noida-db, as
# Kafka (group.min.session.timeout.ms), refuses joins below 6 s: INVALID_SESSION_TIMEOUT, for ever.
SESSION_TIMEOUT_MS = {"tansu": 3000, "noida": 6000}


class Fleet:
    """Worker processes in slots; each slot keeps its transactional id across restarts."""

    def __init__(self, bootstrap: str, redis_url: str, topics: dict[str, str], guarantee: str, workdir: Path,
                 broker: str = "tansu", static: bool = False, assignor: str = "") -> None:
        self.bootstrap, self.redis_url, self.topics, self.guarantee, self.workdir = (
            bootstrap, redis_url, topics, guarantee, workdir)
        self.broker, self.static, self.assignor = broker, static, assignor
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.starts = 0
        self.logs: dict[int, str] = {}  # each slot's current process, by its log's name
        self.ended: dict[str, float] = {}  # when each process was killed or stopped (time.time())

    def start(self, slot: int) -> None:
        t = self.topics
        command = [sys.executable, "-m", "worker", "run", "--config", str(CONFIG),
                   "--bootstrap-servers", self.bootstrap, "--redis-url", self.redis_url,
                   "--input-topic", t["input"], "--output-topic", t["output"], "--dlq-topic", t["dlq"],
                   "--group-id", t["group"], "--guarantee", self.guarantee,
                   "--stats-file", str(self.workdir / f"slot{slot}-{self.starts + 1}.json"), "--stats-every", "1"]
        session_ms = os.environ.get("CHAOS_SESSION_TIMEOUT_MS", str(SESSION_TIMEOUT_MS[self.broker]))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "WORKER_KAFKA__TRANSACTIONAL_ID": f"{t['group']}-{slot}", "WORKER_KAFKA__SESSION_TIMEOUT_MS": session_ms,
               "WORKER_KAFKA__STALL_REPORT_S": "10"}
        if self.assignor:
            env["WORKER_KAFKA__CONSUMER"] = json.dumps({"partition.assignment.strategy": self.assignor})
        if self.static:
            env["WORKER_KAFKA__GROUP_INSTANCE_ID"] = f"slot-{slot}"
        self.starts += 1
        self.logs[slot] = f"slot{slot}-{self.starts}.log"
        log = open(self.workdir / self.logs[slot], "wb")  # noqa: SIM115  # the child owns it
        self.procs[slot] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        log.close()

    def kill(self, slot: int) -> None:
        proc = self.procs.pop(slot)
        proc.send_signal(signal.SIGKILL)
        self.ended[self.logs[slot]] = time.time()
        proc.wait(10)

    def stop(self) -> list[int]:
        codes = [stop_process(p, 30) for p in self.procs.values()]
        self.ended.update({self.logs[slot]: time.time() for slot in self.procs})
        self.procs.clear()
        return codes


def workload(args: argparse.Namespace, redis_url: str) -> tuple[list[tuple[bytes, bytes]], dict[str, float], int]:
    """The events (key, value), the expected score per well-formed event, and the poison count."""
    gen, population = gen_module(), workload_args(args.events, args.seed)
    gen.cmd_features(argparse.Namespace(**{**vars(population), "redis": redis_url}))
    good: list[dict[str, Any]] = []
    messages = list(fraud_events(args.events, args.seed, args.poison, good))
    scores = gen.expected_scores(good, population).tolist()
    return messages, dict(zip((r["event_id"] for r in good), scores, strict=True)), len(messages) - len(good)


def verdict(records: list[LogRecord], expected: dict[str, float]) -> dict[str, int]:
    gen = gen_module()
    import io

    import fastavro

    seen: dict[str, int] = {}
    wrong = 0
    for record in records:
        prediction = fastavro.schemaless_reader(io.BytesIO(record.value or b""), gen.PRED)
        event = prediction["event_id"]  # type: ignore[index,call-overload]
        seen[event] = seen.get(event, 0) + 1
        if seen[event] == 1 and abs(prediction["score"] - expected.get(event, -1.0)) > 1e-5:  # type: ignore[index,call-overload]
            wrong += 1
    return {"predictions": len(records), "missing": sum(1 for e in expected if e not in seen), "wrong_score": wrong,
            "duplicates": sum(n - 1 for n in seen.values())}


def plain_read_committed(bootstrap: str, topics: list[str], idle_s: float = 5.0,
                         timeout_s: float = 120.0) -> dict[str, list[LogRecord]]:
    """The topics as librdkafka's own read_committed consumer hands them out (by assignment, from the
    start): until ``idle_s`` without more (30 s before the first), or ``timeout_s``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-check-{uuid.uuid4().hex[:6]}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    listed = consumer.list_topics(timeout=10).topics
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in listed[t].partitions])
    out: dict[str, list[LogRecord]] = {t: [] for t in topics}
    count, quiet_since, deadline = 0, time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline and time.monotonic() - quiet_since < (idle_s if count else 30.0):
        batch = [m for m in consumer.consume(10_000, 0.5) if not m.error()]
        if batch:
            quiet_since = time.monotonic()
        for m in batch:
            out[m.topic()].append(LogRecord(m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                                            tuple(m.headers() or ()), -1, False))
        count += len(batch)
    consumer.close()
    return out


def read_outputs(args: argparse.Namespace, bootstrap: str, topics: dict[str, str]) -> dict[str, list[LogRecord]]:
    """Predictions and dead letters as read_committed sees them (see the module docstring)."""
    wanted = [topics["output"], topics["dlq"]]
    if args.broker == "tansu":
        return read_committed(bootstrap, wanted, 120)
    return plain_read_committed(bootstrap, wanted)


def unfinished(bootstrap: str, topics: dict[str, str]) -> dict[str, dict[str, int]]:
    """After the fleet stopped, what a read_committed reader cannot see yet and why: per output or dead
    letter partition, the records past its last stable offset (an open transaction nobody ends); per input
    partition, the events past the group's committed offset. On noida-db only: tansu answers ListOffsets
    wrongly (README, broker notes)."""
    def client(level: str) -> Consumer:
        return Consumer({"bootstrap.servers": bootstrap, "group.id": topics["group"], "isolation.level": level,
                         "enable.auto.commit": False})

    stable, everything = client("read_committed"), client("read_uncommitted")
    try:
        listed = stable.list_topics(timeout=10).topics
        parts = {k: [TopicPartition(topics[k], p) for p in listed[topics[k]].partitions]
                 for k in ("input", "output", "dlq")}
        def end(c: Consumer, tp: TopicPartition) -> int:
            return int(c.get_watermark_offsets(tp, timeout=10, cached=False)[1])
        hidden = {f"{tp.topic}[{tp.partition}]": end(everything, tp) - end(stable, tp)
                  for tp in parts["output"] + parts["dlq"]}
        committed = {tp.partition: tp.offset for tp in stable.committed(parts["input"], timeout=10)}
        lag = {f"{tp.topic}[{tp.partition}]": end(stable, tp) - max(committed.get(tp.partition, 0), 0)
               for tp in parts["input"]}
    finally:
        stable.close()
        everything.close()
    return {"behind_open_transactions": {k: n for k, n in hidden.items() if n},
            "input_not_committed": {k: n for k, n in lag.items() if n}}


WATCH_WARNINGS = {"inputs_stalled": "no events for", "outputs_held": "outputs held from read_committed readers"}


def watch_warnings(workdir: Path) -> dict[str, Any]:
    """What the replicas' watches said: how many warnings of each kind, and the last of each."""
    lines = [line for path in sorted(workdir.glob("slot*.log"))
             for line in path.read_text(errors="replace").splitlines()]
    found: dict[str, Any] = {}
    for name, text in WATCH_WARNINGS.items():
        said = [line for line in lines if text in line]
        found[name] = {"warnings": len(said), **({"last": said[-1][:600]} if said else {})}
    return {"watch": found}


_OWNERSHIP = re.compile(r"^(\S+) +\w+ +worker\.runner\.loop: (assigned|revoked|lost) .*?(\[[\d, ]*\])")


def _stamp(text: str) -> float:
    """A worker log line's local time, as ``time.time()`` counts."""
    whole, _, millis = text.partition(".")
    return time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(millis or 0) / 1000


def ownership(log: str, ended: float) -> dict[int, list[tuple[float, float]]]:
    """When one replica process held each input partition, from its log's assigned / revoked / lost
    lines; what it still held when it was killed or stopped (``ended``) ends there."""
    since: dict[int, float] = {}
    spans: dict[int, list[tuple[float, float]]] = {}
    for line in log.splitlines():
        found = _OWNERSHIP.match(line)
        if found is None:
            continue
        at, partitions = _stamp(found[1]), json.loads(found[3])
        for partition in partitions:
            if found[2] == "assigned":
                since.setdefault(partition, at)
            elif partition in since:
                spans.setdefault(partition, []).append((since.pop(partition), at))
    for partition, start in since.items():
        spans.setdefault(partition, []).append((start, max(start, ended)))
    return spans


def owned_twice(logs: dict[str, str], ended: dict[str, float], slack_s: float = 0.5) -> list[dict[str, Any]]:
    """Input partitions two live replica processes held at once for longer than ``slack_s`` (the logs'
    and the kills' clocks apart): what a broker that hands a restarted static member another
    member's partitions does (noida-db, static-restart quirk), and the usual cause of duplicates in
    exactly-once mode there. Each replica sees only its own assignment, so only the logs side by side tell."""
    held = {name: ownership(text, ended.get(name, time.time())) for name, text in logs.items()}
    found = []
    for a, b in combinations(sorted(held), 2):
        for partition in sorted(set(held[a]) & set(held[b])):
            for (a0, a1), (b0, b1) in product(held[a][partition], held[b][partition]):
                start = max(a0, b0)
                overlap = min(a1, b1) - start
                if overlap > slack_s:
                    found.append({"partition": partition, "processes": [a, b], "seconds": round(overlap, 1),
                                  "from": time.strftime("%H:%M:%S", time.localtime(start))})
    return found


def fleet_stats(workdir: Path) -> dict[str, Any]:
    """Events per batch and broker acknowledgement times (per batch) over every replica process."""
    merged: dict[str, Counter[float]] = {"events_per_batch": Counter(), "broker_ack_ms": Counter()}
    for path in workdir.glob("slot*.json"):
        histograms = json.loads(path.read_text()).get("histograms", {})
        for name, counts in merged.items():
            counts.update({float(k): n for k, n in histograms.get(name, {}).items()})
    return {"batches": sum(merged["events_per_batch"].values()),
            **{name: histogram_percentiles(counts) for name, counts in merged.items()}}


def run(args: argparse.Namespace, guarantee: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{args.broker}-{guarantee}-"))
    broker, redis_server = local_broker(args.broker, workdir / "broker.log").start(), LocalRedisServer()
    bootstrap = broker.bootstrap_servers
    fleet: Fleet | None = None
    try:
        redis_server.start()
        wait_redis(redis_server.url)
        messages, expected, poison = workload(args, redis_server.url)
        uid = uuid.uuid4().hex[:8]
        topics = {"input": f"chaos-in-{uid}", "output": f"chaos-out-{uid}", "dlq": f"chaos-dlq-{uid}",
                  "group": f"chaos-{uid}"}
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic(topics[k], args.partitions, 1)
                                           for k in ("input", "output", "dlq")]).values():
            future.result(30)
        fleet = Fleet(bootstrap, redis_server.url, topics, guarantee, workdir, args.broker,
                      static=args.static_membership or args.broker == "noida", assignor=args.assignor)
        for slot in range(args.replicas):
            fleet.start(slot)
        started = time.monotonic()
        # Partitioned like the worker's outputs (same key, same partitioner): see the module docstring.
        producer = _background(Infra(bootstrap, redis_server.url).produce, topics["input"], messages,
                               args.rate, partitioner="murmur2_random", **{"enable.idempotence": True})
        kills, victim, complete, last_check = 0, 0, False, 0.0
        next_kill = started + args.kill_every
        while time.monotonic() - started < args.timeout:
            time.sleep(0.2)
            if time.monotonic() >= next_kill:
                fleet.kill(victim)
                fleet.start(victim)
                kills, victim, next_kill = kills + 1, (victim + 1) % args.replicas, next_kill + args.kill_every
            if not producer.is_alive() and time.monotonic() - last_check > 5:
                last_check = time.monotonic()
                found = read_outputs(args, bootstrap, topics)
                result = verdict(found[topics["output"]], expected)
                if not result["missing"] and len(found[topics["dlq"]]) >= poison:
                    complete = True
                    break
        elapsed = time.monotonic() - started
        exit_codes = fleet.stop()
        twice = owned_twice({p.name: p.read_text(errors="replace") for p in workdir.glob("slot*.log")}, fleet.ended)
        waiting = unfinished(bootstrap, topics) if args.broker == "noida" else {}
        found = read_outputs(args, bootstrap, topics)
        result = verdict(found[topics["output"]], expected)
        dead = {(dict(r.headers)["dlq.source.partition"], dict(r.headers)["dlq.source.offset"])
                for r in found[topics["dlq"]]}
        ok = (complete and result["missing"] == 0 and result["wrong_score"] == 0 and len(dead) == poison
              and (guarantee == "at-least-once" or (result["duplicates"] == 0 and len(found[topics["dlq"]]) == poison)))
        return {"broker": args.broker, "guarantee": guarantee, "events": len(messages), "well_formed": len(expected),
                "poison": poison,
                "replicas": args.replicas, "partitions": args.partitions, "rate": args.rate,
                "kill_every_s": args.kill_every, "kills": kills, **result,
                "dead_lettered": len(found[topics["dlq"]]), "seconds": round(elapsed, 1),
                "exit_codes_at_stop": exit_codes, "owned_twice": twice, **waiting, **watch_warnings(workdir),
                **fleet_stats(workdir),
                "logs": str(workdir), "ok": ok}
    finally:
        if fleet is not None:
            fleet.stop()
        broker.stop()
        redis_server.close()


def _background(fn: Any, *fn_args: Any, **fn_kwargs: Any) -> Any:
    import threading

    thread = threading.Thread(target=fn, args=fn_args, kwargs=fn_kwargs, daemon=True)
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=BROKER_KINDS, default="tansu")
    parser.add_argument("--static-membership", action="store_true",
                        help="each slot keeps a group_instance_id across restarts (always on noida)")
    parser.add_argument("--assignor", choices=["range", "roundrobin", "cooperative-sticky"],
                        help="the consumer's partition.assignment.strategy (default: the worker's cooperative-sticky)")
    parser.add_argument("--guarantee", choices=["at-least-once", "exactly-once", "both"], default="both")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=4000, help="events per second produced (0: all at once)")
    parser.add_argument("--poison", type=float, default=0.001, help="share of undecodable events")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between SIGKILLs")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    guarantees = ["at-least-once", "exactly-once"] if args.guarantee == "both" else [args.guarantee]
    results = [run(args, g) for g in guarantees]
    for result in results:
        print(json.dumps(result), flush=True)
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
