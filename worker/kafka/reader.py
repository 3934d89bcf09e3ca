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
