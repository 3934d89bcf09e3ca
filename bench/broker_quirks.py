"""Reproductions of the test brokers' quirks (README, "Delivery guarantees and faults").

    python -m bench.broker_quirks leave-during-rebalance [--trials 6]
    python -m bench.broker_quirks list-offsets

``leave-during-rebalance`` (tansu 0.6): consumer A holds both partitions of a topic; B joins A's
group, and A leaves (closes) while the rebalance B started is still in progress. Tansu removes A
but keeps A's member id as the group's leader, and nothing ever replaces it: B's JoinGroup names
the departed A as leader, its SyncGroup answers REBALANCE_IN_PROGRESS, forever (seen for 360 s;
leaving and joining again, a new consumer, a short max.poll.interval.ms: none help). Kafka clears
the leader when it leaves. The control closes A before B joins: B gets both partitions in ~3 s.
Each trial uses a group of its own; trials run in parallel. Prints one JSON line.

``list-offsets`` (tansu 0.6): 10 messages with timestamps one second apart go to a topic of two
partitions (5 each); the broker is asked for each partition's watermarks and, with
``offsets_for_times``, for the offset of the first message at or after three times (before all,
the middle, after all). Kafka answers the true end (5) and 0, the middle offset, -1; tansu answers
a high watermark of 1 and offset 0 for every time. Prints what it answered beside the truth (from
the producer's delivery reports).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from contextlib import nullcontext

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from worker.devtools.local import LocalBroker

WAIT_S = 30.0


def trial(bootstrap: str, topic: str, overlap: bool) -> float | None:
    """Seconds from B's subscribe to its first assignment (None: none within WAIT_S)."""
    group = f"quirk-{uuid.uuid4().hex[:8]}"
    seen: dict[str, list[int]] = {"a": [], "b": []}
    a = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000,
                  "partition.assignment.strategy": "cooperative-sticky"})
    a.subscribe([topic], on_assign=lambda _, ps: seen["a"].extend(p.partition for p in ps))
    while len(seen["a"]) < 2:
        a.poll(0.1)
    if not overlap:
        a.close()
        time.sleep(0.2)
    got: list[float] = []
    b = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000,
                  "partition.assignment.strategy": "cooperative-sticky"})
    started = time.monotonic()
    b.subscribe([topic], on_assign=lambda _, ps: got.append(time.monotonic() - started))
    if overlap:
        deadline = started + 0.2
        while time.monotonic() < deadline:
            a.poll(0.05)
        a.close()  # LeaveGroup while B's rebalance is in progress
    while not got and time.monotonic() - started < WAIT_S:
        b.poll(0.1)
    b.close()
    return got[0] if got else None


def run(bootstrap: str, trials: int, overlap: bool) -> list[float | None]:
    topic = f"quirk-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: the future needs its client
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(10)
    results: list[float | None] = [None] * trials

    def one(i: int) -> None:
        results[i] = trial(bootstrap, topic, overlap)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(trials)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def list_offsets(bootstrap: str) -> dict[str, object]:
    """The broker's watermarks and offsets for times against the truth, per partition."""
    topic, base = f"quirk-{uuid.uuid4().hex[:8]}", 1_700_000_000_000
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        producer.produce(topic, b"%d" % i, partition=i % 2, timestamp=base + i * 1000)
    producer.flush(10)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic})  # asks only: joins nothing
    times = {"before_all": base - 1, "middle": base + 4_500, "after_all": base + 60_000}
    out: dict[str, object] = {"quirk": "list-offsets", "messages_per_partition": 5}
    for p in (0, 1):
        stamps = [base + i * 1000 for i in range(p, 10, 2)]  # the partition's messages, in offset order
        truth = {name: next((o for o, ts in enumerate(stamps) if ts >= t), -1) for name, t in times.items()}
        answered = {name: consumer.offsets_for_times([TopicPartition(topic, p, t)], timeout=10)[0].offset
                    for name, t in times.items()}
        out[f"partition_{p}"] = {"watermarks": consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10),
                                 "true_watermarks": [0, len(stamps)], "offsets_for_times": answered,
                                 "true_offsets_for_times": truth}
    consumer.close()
    return out


def rebalance(bootstrap: str, trials: int) -> dict[str, object]:
    overlapping = run(bootstrap, trials, overlap=True)
    control = run(bootstrap, trials, overlap=False)
    return {"quirk": "leave-during-rebalance", "trials": trials,
            "stalled_when_a_leaves_during_the_rebalance": sum(r is None for r in overlapping),
            "stalled_when_a_left_before": sum(r is None for r in control),
            "seconds_to_first_assignment_control": [round(r, 2) for r in control if r is not None]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("quirk", choices=["leave-during-rebalance", "list-offsets"])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--bootstrap", help="ask this broker instead of starting tansu")
    args = ap.parse_args()
    with LocalBroker() if args.bootstrap is None else nullcontext() as broker:
        bootstrap = args.bootstrap or broker.bootstrap_servers  # type: ignore[union-attr]
        found = list_offsets(bootstrap) if args.quirk == "list-offsets" else rebalance(bootstrap, args.trials)
    print(json.dumps(found))


if __name__ == "__main__":
    main()
