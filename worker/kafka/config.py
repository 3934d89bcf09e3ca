"""librdkafka configurations of the worker's clients: the worker's required settings win over
the user's tuning, which wins over the worker's defaults."""

from __future__ import annotations

from typing import Any


def consumer_config(bootstrap_servers: str, group_id: str, common: dict[str, Any],
                    own: dict[str, Any]) -> dict[str, Any]:
    """The consumer's librdkafka config: the worker's required settings win over user tuning."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "partition.assignment.strategy": "cooperative-sticky",
        # Where the broker answers a waiting fetch as data arrives (Kafka, Redpanda, noida-db) this
        # costs no latency. tansu answers at the end of the wait and fetches cost it more the more
        # record batches a partition holds: at 10 ms a consumer of a 400k-record backlog in small
        # batches read nothing in 30 s, at 100 ms it read it in 2.3 s (bench.broker_quirks fetch-wait);
        # the contract check on tansu went from 840-3,478 to 24,751-31,616 events/s.
        "fetch.wait.max.ms": 100,
        # With the prefetch queue capped (memory bound), librdkafka's default 1 s back-off after
        # reaching the cap starves the loop; refill promptly instead.
        "fetch.queue.backoff.ms": 20,
        **common,
        **own,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
    }


def producer_config(bootstrap_servers: str, common: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap_servers,
        "linger.ms": 1,
        "batch.num.messages": 10_000,
        "partitioner": "murmur2_random",  # keys land on the partitions Java clients would pick
        **common,
        **own,
        "enable.idempotence": True,
        "acks": "all",
    }


def traces_producer_config(common: dict[str, Any]) -> dict[str, Any]:
    """Producer settings for traces: best effort, small memory, batched; ``common`` holds the
    brokers and security settings shared with the worker's other clients."""
    return {"linger.ms": 200, "compression.type": "lz4", "queue.buffering.max.messages": 10_000,
            "queue.buffering.max.kbytes": 32 * 1024, "message.timeout.ms": 30_000, **common,
            "acks": 1, "enable.idempotence": False}
