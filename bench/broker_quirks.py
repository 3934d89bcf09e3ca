"""Reproductions of the test brokers' quirks (README, "Delivery guarantees and faults").

    python -m bench.broker_quirks leave-during-rebalance [--trials 6]

``leave-during-rebalance`` (tansu 0.6): consumer A holds both partitions of a topic; B joins A's
group, and A leaves (closes) while the rebalance B started is still in progress. Tansu removes A
but keeps A's member id as the group's leader, and nothing ever replaces it: B's JoinGroup names
the departed A as leader, its SyncGroup answers REBALANCE_IN_PROGRESS, forever (seen for 360 s;
leaving and joining again, a new consumer, a short max.poll.interval.ms: none help). Kafka clears
the leader when it leaves. The control closes A before B joins: B gets both partitions in ~3 s.
Each trial uses a group of its own; trials run in parallel. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid

from confluent_kafka import Consumer
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("quirk", choices=["leave-during-rebalance"])
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    with LocalBroker() as broker:
        overlapping = run(broker.bootstrap_servers, args.trials, overlap=True)
        control = run(broker.bootstrap_servers, args.trials, overlap=False)
    print(json.dumps({"quirk": args.quirk, "trials": args.trials,
                      "stalled_when_a_leaves_during_the_rebalance": sum(r is None for r in overlapping),
                      "stalled_when_a_left_before": sum(r is None for r in control),
                      "seconds_to_first_assignment_control": [round(r, 2) for r in control if r is not None]}))


if __name__ == "__main__":
    main()
