"""Reads topics the way a ``read_committed`` consumer must see them, from the log itself.

A record written in a Kafka transaction is visible only once its producer's transaction ends
with a COMMIT marker; an ABORT marker hides it. Brokers tell clients which ranges were aborted
in the fetch response, and librdkafka filters on that list; tansu always sends an empty list,
so librdkafka's ``read_committed`` shows aborted records there. This reader decides from the
control batches (the commit and abort markers) in the log instead, which works on any broker:
it fetches raw record batches (Fetch v4, read_uncommitted) and pairs every transactional
record with the next marker of its producer.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer

_FETCH, _VERSION = 1, 4
_CONTROL, _TRANSACTIONAL, _COMPRESSION = 0x20, 0x10, 0x07
ABORT, COMMIT = 0, 1


@dataclass(frozen=True)
class LogRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    producer_id: int
    transactional: bool


@dataclass
class PartitionLog:
    """One partition's data records and its transaction markers, in offset order."""

    records: list[LogRecord] = field(default_factory=list)
    markers: list[tuple[int, int, int]] = field(default_factory=list)  # (offset, producer id, ABORT/COMMIT)

    def committed(self) -> list[LogRecord]:
        """Records outside transactions, and those whose transaction committed (open ones are not yet)."""
        out: list[LogRecord] = []
        pending: dict[int, list[LogRecord]] = {}
        events = sorted([(r.offset, 0, r) for r in self.records] + [(o, 1, (p, kind)) for o, p, kind in self.markers],
                        key=lambda e: e[0])
        for _, is_marker, item in events:
            if is_marker:
                producer, kind = item  # type: ignore[misc]
                if kind == COMMIT:
                    out += pending.pop(producer, [])
                else:
                    pending.pop(producer, None)
            elif not item.transactional:  # type: ignore[union-attr]
                out.append(item)  # type: ignore[arg-type]
            else:
                pending.setdefault(item.producer_id, []).append(item)  # type: ignore[union-attr]
        return sorted(out, key=lambda r: r.offset)

    def aborted(self) -> int:
        return sum(1 for _, _, kind in self.markers if kind == ABORT)


def read_committed(bootstrap: str, topics: Sequence[str], timeout_s: float = 60.0) -> dict[str, list[LogRecord]]:
    """Every committed record of ``topics`` (all partitions, up to their current end), by topic."""
    logs = read_logs(bootstrap, topics, timeout_s)
    return {t: [r for (topic, _), log in sorted(logs.items()) if topic == t for r in log.committed()] for t in topics}


def read_logs(bootstrap: str, topics: Sequence[str], timeout_s: float = 60.0) -> dict[tuple[str, int], PartitionLog]:
    leaders = _leaders(bootstrap, topics)
    logs: dict[tuple[str, int], PartitionLog] = {}
    deadline = time.monotonic() + timeout_s
    connections: dict[str, _Connection] = {}
    try:
        for (topic, partition), address in leaders.items():
            connection = connections.get(address) or connections.setdefault(address, _Connection(address))
            logs[(topic, partition)] = _read_partition(connection, topic, partition, deadline)
    finally:
        for connection in connections.values():
            connection.close()
    return logs


def _leaders(bootstrap: str, topics: Sequence[str]) -> dict[tuple[str, int], str]:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "committed-reader"})
    try:
        metadata = probe.list_topics(timeout=10)
    finally:
        probe.close()
    brokers = {b.id: f"{b.host}:{b.port}" for b in metadata.brokers.values()}
    return {(t, p): brokers[info.leader] for t in topics for p, info in sorted(metadata.topics[t].partitions.items())}


def _read_partition(connection: _Connection, topic: str, partition: int, deadline: float) -> PartitionLog:
    log = PartitionLog()
    offset = 0
    while True:
        end, batches = connection.fetch(topic, partition, offset)
        for batch in batches:
            offset = max(offset, _add_batch(log, topic, partition, batch))
        if offset >= end:
            return log
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic}[{partition}]: read to {offset} of {end}")


def _add_batch(log: PartitionLog, topic: str, partition: int, batch: bytes) -> int:
    """Adds a record batch's records (or its marker) to ``log``; returns the offset after it."""
    base_offset, = struct.unpack_from(">q", batch, 0)
    attributes, last_delta = struct.unpack_from(">hi", batch, 21)
    producer_id, = struct.unpack_from(">q", batch, 43)
    if attributes & _COMPRESSION:
        raise NotImplementedError("compressed batches are not read here (produce without compression)")
    records = list(_records(batch, 61, struct.unpack_from(">i", batch, 57)[0]))
    if attributes & _CONTROL:
        key = records[0][1] or b"\0\0\0\0"
        log.markers.append((base_offset, producer_id, struct.unpack_from(">h", key, 2)[0]))
    else:
        transactional = bool(attributes & _TRANSACTIONAL)
        for delta, key, value, headers in records:
            log.records.append(LogRecord(topic, partition, base_offset + delta, key, value, headers, producer_id,
                                         transactional))
    return base_offset + last_delta + 1


def _records(data: bytes, pos: int, count: int) -> Iterator[tuple[int, bytes | None, bytes | None,
                                                                tuple[tuple[str, bytes | None], ...]]]:
    for _ in range(count):
        length, pos = _varint(data, pos)
        end = pos + length
        pos += 1  # attributes
        _, pos = _varint(data, pos)  # timestamp delta
        delta, pos = _varint(data, pos)
        key, pos = _bytes(data, pos)
        value, pos = _bytes(data, pos)
        n_headers, pos = _varint(data, pos)
        headers = []
        for _ in range(n_headers):
            name, pos = _bytes(data, pos)
            header_value, pos = _bytes(data, pos)
            headers.append(((name or b"").decode(), header_value))
        yield delta, key, value, tuple(headers)
        pos = end


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _bytes(data: bytes, pos: int) -> tuple[bytes | None, int]:
    length, pos = _varint(data, pos)
    if length < 0:
        return None, pos
    return data[pos:pos + length], pos + length


class _Connection:
    """One broker connection speaking just Fetch v4."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self._sock = socket.create_connection((host, int(port)), timeout=30)
        self._correlation = 0

    def fetch(self, topic: str, partition: int, offset: int) -> tuple[int, list[bytes]]:
        """The partition's high watermark and the complete record batches from ``offset``."""
        self._correlation += 1
        name = topic.encode()
        body = struct.pack(">iiiib", -1, 100, 1, 8 << 20, 0) + struct.pack(">ih", 1, len(name)) + name + \
            struct.pack(">iiqi", 1, partition, offset, 4 << 20)
        client = b"committed-reader"
        header = struct.pack(">hhih", _FETCH, _VERSION, self._correlation, len(client)) + client
        self._sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        return _parse_fetch(self._receive())

    def _receive(self) -> bytes:
        size, = struct.unpack(">i", self._exactly(4))
        return self._exactly(size)

    def _exactly(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self._sock.recv(min(left, 1 << 20))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._sock.close()


def _parse_fetch(data: bytes) -> tuple[int, list[bytes]]:
    pos = 8  # correlation id, throttle time
    n_topics, = struct.unpack_from(">i", data, pos)
    assert n_topics == 1, n_topics
    name_len, = struct.unpack_from(">h", data, pos + 4)
    pos += 6 + name_len
    n_partitions, = struct.unpack_from(">i", data, pos)
    assert n_partitions == 1, n_partitions
    _, error, high_watermark, _ = struct.unpack_from(">ihqq", data, pos + 4)
    if error:
        raise RuntimeError(f"fetch failed with Kafka error code {error}")
    pos += 4 + 4 + 2 + 8 + 8
    n_aborted, = struct.unpack_from(">i", data, pos)
    pos += 4 + max(n_aborted, 0) * 16
    size, = struct.unpack_from(">i", data, pos)
    records = data[pos + 4: pos + 4 + max(size, 0)]
    batches = []
    at = 0
    while at + 12 <= len(records):
        length, = struct.unpack_from(">i", records, at + 8)
        if at + 12 + length > len(records):
            break  # a partial batch at the end of the response
        batches.append(records[at: at + 12 + length])
        at += 12 + length
    return high_watermark, batches
