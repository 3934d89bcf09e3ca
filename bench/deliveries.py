"""What delivery reports cost per output: the sink's callback against none at all.

    python -m bench.deliveries [--broker noida] [--n 200000] [--batch 500] [--rounds 3]

Produces ``--n`` 60-byte keyed messages to a local broker in batches of ``--batch``, as the sink
does (one ticket per batch, a thread serving delivery reports, a flush at the end), with the
sink's ticket callback and, alternating in the same run, with no callback (librdkafka then makes
no Python message object and calls nothing: the floor). Prints the process CPU per message
(librdkafka's own threads included) of each, per round, and the callback's own time per report
(called in a loop, no broker: the best of 15 runs), as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import timeit
import uuid
from collections.abc import Callable

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from worker.devtools.local import BROKER_KINDS, kafka_address, local_broker
from worker.kafka.port import DeliveryCallback
from worker.kafka.sink import DeliveryTracker

PRODUCER = {"linger.ms": 1, "batch.num.messages": 10_000, "enable.idempotence": True, "acks": "all",
            "queue.buffering.max.messages": 1_000_000}


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def produce(bootstrap: str, messages: list[tuple[bytes, bytes]], batch: int,
            callback: Callable[[int], DeliveryCallback | None]) -> float:
    """CPU seconds per message to produce ``messages`` and have every one acknowledged."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"deliveries-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER})
    producer.list_topics(topic, timeout=10)
    stop = threading.Event()
    server = threading.Thread(target=lambda: [producer.poll(0.05) for _ in iter(stop.is_set, True)])
    server.start()
    started = cpu_s()
    for first in range(0, len(messages), batch):
        chunk = messages[first:first + batch]
        on_delivery = callback(len(chunk))
        for value, key in chunk:
            producer.produce(topic, value, key, on_delivery=on_delivery)
        producer.poll(0)
    left = producer.flush(60)
    spent = cpu_s() - started
    stop.set()
    server.join()
    if left:
        raise RuntimeError(f"{left} messages unacknowledged after 60 s")
    return spent / len(messages)


def callback_alone_ns(n: int = 100_000) -> float:
    """Nanoseconds per call of a ticket's callback, called in a loop as if every message were acknowledged."""
    tracker = DeliveryTracker()

    def reports() -> None:
        on_delivery = tracker.ticket(n, 0).on_delivery
        for _ in range(n):
            on_delivery(None, None)
    return min(timeit.repeat(reports, number=1, repeat=15)) / n * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", choices=BROKER_KINDS, default="noida")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    messages = [(os.urandom(60), b"card%05d" % (i % 5000)) for i in range(args.n)]
    tracker = DeliveryTracker()
    kinds: dict[str, Callable[[int], DeliveryCallback | None]] = {
        "ticket": lambda size: tracker.ticket(size, 0).on_delivery, "none": lambda size: None}
    found: dict[str, list[float]] = {kind: [] for kind in kinds}
    with local_broker(args.broker) as broker:
        broker.start().wait_for_port(kafka_address(broker.bootstrap_servers)[1])
        for _ in range(args.rounds):
            for kind, callback in kinds.items():
                found[kind].append(round(produce(broker.bootstrap_servers, messages, args.batch, callback) * 1e6, 2))
    print(json.dumps({"broker": args.broker, "messages": args.n, "batch": args.batch, "cpu_us_per_message": found,
                      "callback_alone_ns": round(callback_alone_ns())}))


if __name__ == "__main__":
    main()
