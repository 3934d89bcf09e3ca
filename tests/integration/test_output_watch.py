"""Outputs a transaction left open hides from read_committed readers, named by the worker.

On noida-db, which answers the last stable offset as Kafka does (tansu answers 0 while any
transaction is open: ``python -m bench.broker_quirks open-lso``), whatever the suite's broker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.support.configs import changed, fraud_config, write_config
from tests.support.kafka_io import Topics, create_topics
from tests.support.worker_process import StartWorker
from worker.devtools.local import NoidaBroker, free_port, kafka_address
from worker.kafka.confluent import ConfluentAdmin
from worker.kafka.port import PartitionEnds

pytestmark = [pytest.mark.integration]


@pytest.fixture
def noida() -> Iterator[str]:
    with NoidaBroker().start() as broker:
        broker.wait_for_port(kafka_address(broker.bootstrap_servers)[1])
        yield broker.bootstrap_servers


def left_open(bootstrap: str, topics: Topics) -> Producer:
    """A producer (a crashed replica's, say) that commits one output, then leaves a transaction open
    with two more: partition 0 holds the record, its commit marker, and the two (offsets 0 to 3)."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{topics.group}-elsewhere"})
    producer.init_transactions(10)
    for values in ([b"committed"], [b"open-1", b"open-2"]):
        producer.begin_transaction()
        for value in values:
            producer.produce(topics.output, value, partition=0)
        producer.flush(10)
        if values == [b"committed"]:
            producer.commit_transaction(10)
    return producer


def test_the_admin_tells_the_last_stable_offset_from_the_end(noida: str) -> None:
    topics = create_topics(noida, partitions=2, prefix="ends")
    producer = left_open(noida, topics)
    admin = ConfluentAdmin({"bootstrap.servers": noida})
    asked = [(topics.output, 0), (topics.output, 1)]

    assert admin.ends(asked, 5.0) == {asked[0]: PartitionEnds(2, 4), asked[1]: PartitionEnds(0, 0)}
    producer.commit_transaction(10)
    assert admin.ends(asked, 5.0) == {asked[0]: PartitionEnds(5, 5), asked[1]: PartitionEnds(0, 0)}


def test_a_worker_names_the_output_partition_a_transaction_left_open_holds(
        noida: str, redis_db_url: str, start_worker: StartWorker, tmp_path: Path) -> None:
    topics = create_topics(noida, partitions=2, prefix="held")
    producer = left_open(noida, topics)
    # Looks 1.5 s apart: the longest healthy transaction (0.2 s interval + 1 s commit timeout) and a quarter.
    config = write_config(tmp_path / "fraud.yaml", changed(fraud_config(), **{
        "kafka.stall_report_s": 1, "batch.commit_interval_ms": 200, "kafka.commit_timeout_ms": 1000}))
    worker = start_worker(config, topics, redis_db_url, "--guarantee", "exactly-once", "--bootstrap-servers", noida)
    worker.wait_for_log("outputs held from read_committed readers on 1 partitions", 60)

    assert (f"{topics.output}[0]: records from offset 2 on are invisible to read_committed readers (the log ends "
            "at 4)") in worker.log()
    producer.abort_transaction(10)
    time.sleep(2.0)  # a look in progress as it ended may still report it
    warnings = worker.log().count("outputs held")
    time.sleep(4.5)  # three more looks
    assert worker.log().count("outputs held") == warnings, "quiet once the transaction ended"
    assert worker.stop() == 0


def test_a_broker_that_does_not_answer_leaves_the_ends_unknown_within_the_timeout() -> None:
    admin = ConfluentAdmin({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0})
    asked = [("out", p) for p in range(12)]
    started = time.monotonic()

    assert admin.ends(asked, 0.5) == {tp: PartitionEnds(None, None) for tp in asked}
    assert time.monotonic() - started < 3.0, "two bounded waits, not one per partition"
