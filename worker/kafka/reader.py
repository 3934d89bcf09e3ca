"""Reading whole topics without joining a consumer group (``worker tail``, the demo, the model
control channel): every partition is assigned directly, nothing is committed, and the reader
knows which partitions it has read to their end (``at_end``)."""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage

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
    """Reads a bounded range of a topic without joining a group (``worker batch --input kafka:T``).
    Bounds are ``earliest``, ``latest``, epoch milliseconds, or an offset per partition; the end is
    excluded. The broker's answers about offsets are not trusted where they can be wrong (tansu
    answers ListOffsets with offset 0 for every time and a wrong high watermark):

    - an end at ``latest`` is where the reader first finds the partition's end (a partition EOF);
    - a start at ``latest`` reads nothing: the range ends where it starts;
    - a time range is decided by the messages' own timestamps, as Kafka decides ``offsets_for_times``:
      a partition starts at its first message at or after ``from`` and ends at its first message at
      or after ``to``. The broker's offset for ``from`` is only a hint, taken when the message just
      before it is older than ``from`` (checked on reading); otherwise the partition is read from
      its start, so a wrong answer costs time, never messages."""

    def __init__(self, config: Mapping[str, Any], topic: str, start: Bound, end: Bound) -> None:
        self.consumer = new_client(Consumer, {
            **config, "group.id": f"worker-batch-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest"})
        try:
            partitions = listed_topics(self.consumer, 10.0).get(topic)
            if not partitions:
                raise BrokerError(Fault(f"topic {topic!r} does not exist", "UNKNOWN_TOPIC_OR_PART"))
            self.topic = topic
            self.left: dict[int, PartitionRange] = {}
            assignment = []
            for p in range(partitions):
                placed = self._place(p, start, end)
                if placed is not None:
                    self.left[p], offset = placed
                    assignment.append(TopicPartition(topic, p, offset))
            self.consumer.assign(assignment)
        except BaseException:
            self.consumer.close()
            raise

    def _place(self, partition: int, start: Bound, end: Bound) -> tuple[PartitionRange, int] | None:
        """The partition's range and the offset to assign it at; None: nothing to read in it."""
        limit = PartitionRange.ending(partition, end)
        if start == "latest" or (limit.end_offset is not None and limit.end_offset <= 0):
            return None
        if start == "earliest":
            return limit, OFFSET_BEGINNING
        if isinstance(start, dict):
            offset = start.get(partition, start.get(-1))  # -1: every partition; a partition not named: none
            if offset is None or (limit.end_offset is not None and offset >= limit.end_offset):
                return None
            return limit, int(offset)
        limit.from_time = int(start)
        hint = self.consumer.offsets_for_times([TopicPartition(self.topic, partition, int(start))], timeout=10)[0]
        if hint.offset <= 0:  # the start anyway, or "nothing at or after it", which a broker may say wrongly
            return limit, OFFSET_BEGINNING
        limit.probe = hint.offset - 1
        return limit, limit.probe

    def read(self, max_messages: int = 1000, timeout_s: float = 0.5) -> list[Message]:
        """The next messages within the range; empty once every partition reached its end."""
        out: list[Message] = []
        while self.left and not out:
            rewound: set[int] = set()  # what this batch still holds of them was fetched before the seek
            for message in self.consumer.consume(max_messages, timeout_s):
                partition = int(message.partition() or 0)
                if partition not in rewound:
                    self._one(message, partition, out, rewound)
        return out

    def _one(self, message: KafkaMessage, partition: int, out: list[Message], rewound: set[int]) -> None:
        error = message.error()
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            logger.warning("reading %s: %s", self.topic, error)
            return
        limit = self.left.get(partition)
        if limit is None:
            return
        offset = int(message.offset() or 0)
        verdict = Verdict.END if error is not None else limit.admit(offset, int(message.timestamp()[1]))
        if verdict is Verdict.END and limit.probe is not None:
            verdict = Verdict.REWIND  # the hint was at or past the end: it cannot be trusted
        if verdict is Verdict.REWIND:
            limit.probe = None
            rewound.add(partition)
            self.consumer.seek(TopicPartition(self.topic, partition, OFFSET_BEGINNING))
        elif verdict is Verdict.END:
            del self.left[partition]
        elif verdict is Verdict.TAKE:
            out.append(message)
            if limit.end_offset is not None and offset + 1 >= limit.end_offset:
                del self.left[partition]  # the last one: no need to wait for the partition's end

    def close(self) -> None:
        self.consumer.close()


class Verdict(enum.Enum):
    TAKE = "take"
    SKIP = "skip"
    END = "end"
    REWIND = "rewind"
    """read the partition from its start: the broker's offset for the start time may be too late"""


@dataclass
class PartitionRange:
    """Where one partition's range ends (an offset, or the first message at or after a time), where
    it starts when that is a time, and the offset whose message must predate that time for the
    broker's hint to be trusted (``probe``)."""

    end_offset: int | None = None
    end_time: int | None = None
    from_time: int | None = None
    probe: int | None = None

    @classmethod
    def ending(cls, partition: int, end: Bound) -> PartitionRange:
        if end == "earliest":
            return cls(end_offset=0)
        if isinstance(end, dict):
            offset = end.get(partition, end.get(-1))  # a partition not named: to its end
            return cls(end_offset=None if offset is None else int(offset))
        return cls(end_time=None if end == "latest" else int(end))

    def admit(self, offset: int, timestamp: int) -> Verdict:
        if self.probe is not None:
            probe, self.probe = self.probe, None
            trusted = offset == probe and self.from_time is not None and timestamp < self.from_time
            return Verdict.SKIP if trusted else Verdict.REWIND
        if self.end_offset is not None and offset >= self.end_offset:
            return Verdict.END
        if self.end_time is not None and timestamp >= self.end_time:
            return Verdict.END
        if self.from_time is not None:
            if timestamp < self.from_time:
                return Verdict.SKIP
            self.from_time = None  # from the first message at or after it on, as Kafka's offsets_for_times
        return Verdict.TAKE


Bound = str | int | dict[int, int]
"""``earliest``, ``latest``, epoch milliseconds, or an offset per partition (key -1: every partition)."""
