"""Reading whole topics without joining a consumer group (``worker tail``, the demo, the model
control channel): every partition is assigned directly, nothing is committed, and the reader
knows which partitions it has read to their end (``at_end``)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from worker.kafka.confluent import listed_topics, new_client
from worker.kafka.port import BrokerError, Fault
from worker.records import TP, Message

logger = logging.getLogger(__name__)


class TopicReader:
    """Reads every partition of ``topics`` from the oldest message (``from_beginning``) or from
    the end as it is when the reader is made. ``BrokerError`` if the brokers do not answer or a
    topic does not exist (code ``UNKNOWN_TOPIC_OR_PART``)."""

    def __init__(self, config: Mapping[str, Any], topics: Sequence[str], from_beginning: bool,
                 name: str = "worker-reader", fetch_wait_ms: int = 50) -> None:
        self.consumer = new_client(Consumer, {
            **config, "group.id": f"{name}-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest", "fetch.wait.max.ms": fetch_wait_ms})
        self.at_end: set[TP] = set()
        self._errors_logged = 0
        try:
            self.partitions = self._partitions(topics)
            self.consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING if from_beginning else self._end(t, p))
                                  for t, p in sorted(self.partitions)])
        except BaseException:
            self.consumer.close()
            raise

    def _partitions(self, topics: Sequence[str]) -> set[TP]:
        listed = listed_topics(self.consumer, 10.0)
        out: set[TP] = set()
        for topic in topics:
            if not listed.get(topic):
                raise BrokerError(Fault(f"topic {topic!r} does not exist", "UNKNOWN_TOPIC_OR_PART"))
            out.update((topic, p) for p in range(listed[topic]))
        return out

    def _end(self, topic: str, partition: int) -> int:
        try:
            return int(self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1])
        except KafkaException:
            return OFFSET_END

    @property
    def caught_up(self) -> bool:
        """Every partition was read to its end at least once (what was written before is read)."""
        return self.at_end == self.partitions

    def read(self, max_messages: int = 500, timeout_s: float = 0.2) -> list[Message]:
        out: list[Message] = []
        for message in self.consumer.consume(max_messages, timeout_s):
            error = message.error()
            if error is None:
                out.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                self.at_end.add((str(message.topic()), int(message.partition() or 0)))
            elif self._errors_logged < 100:
                self._errors_logged += 1
                logger.warning("reading %s: %s", message.topic(), error)
        return out

    def close(self) -> None:
        self.consumer.close()


class RangeReader:
    """Reads a bounded range of a topic without joining a group (``worker batch --input kafka:T``):
    each partition from its start up to, not including, its end. Bounds are ``earliest``,
    ``latest``, an epoch-ms timestamp (the first offset at or after it), or an offset per
    partition. An end at ``latest`` is where the reader first finds the partition's end (a
    partition EOF, not the broker's watermark: some brokers answer ListOffsets wrongly)."""

    def __init__(self, config: Mapping[str, Any], topic: str, start: Bound, end: Bound) -> None:
        self.consumer = new_client(Consumer, {
            **config, "group.id": f"worker-batch-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest"})
        try:
            partitions = listed_topics(self.consumer, 10.0).get(topic)
            if not partitions:
                raise BrokerError(Fault(f"topic {topic!r} does not exist", "UNKNOWN_TOPIC_OR_PART"))
            self.topic = topic
            starts = {p: self._offset(p, start, OFFSET_BEGINNING, OFFSET_END) or 0 for p in range(partitions)}
            ends = {p: self._offset(p, end, None, None) for p in range(partitions)}
            self.left: dict[int, int | None] = {p: e for p, e in ends.items() if e is None or e > max(starts[p], 0)}
            self.consumer.assign([TopicPartition(topic, p, starts[p]) for p in self.left])
        except BaseException:
            self.consumer.close()
            raise

    def _offset(self, partition: int, bound: Bound, earliest: int | None, latest: int | None) -> int | None:
        """An offset for ``bound``; ``earliest``/``latest`` map to the given values (None: to the end)."""
        if bound == "earliest":
            return earliest if earliest is not None else 0
        if bound == "latest":
            return latest
        if isinstance(bound, dict):
            offset = bound.get(partition, bound.get(-1))  # -1: every partition
            return latest if offset is None else int(offset)
        found = self.consumer.offsets_for_times([TopicPartition(self.topic, partition, int(bound))], timeout=10)[0]
        return latest if found.offset < 0 else int(found.offset)

    def read(self, max_messages: int = 1000, timeout_s: float = 0.5) -> list[Message]:
        """The next messages within the range; empty once every partition reached its end."""
        out: list[Message] = []
        while self.left and not out:
            for message in self.consumer.consume(max_messages, timeout_s):
                partition = int(message.partition() or 0)
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        self.left.pop(partition, None)
                    else:
                        logger.warning("reading %s: %s", self.topic, error)
                    continue
                self._take(message, partition, out)
        return out

    def _take(self, message: Message, partition: int, out: list[Message]) -> None:
        if partition not in self.left:
            return
        end, offset = self.left[partition], int(message.offset() or 0)
        if end is None or offset < end:
            out.append(message)
        if end is not None and offset >= end - 1:
            del self.left[partition]

    def close(self) -> None:
        self.consumer.close()


Bound = str | int | dict[int, int]
"""``earliest``, ``latest``, epoch milliseconds, or an offset per partition (key -1: every partition)."""
