"""The control channel: a table of JSON values by key that every replica reads in full.

``KafkaControlTable`` is a compacted topic read by assignment of all its partitions from the
beginning (never as a group member: every replica must see every command). ``FileControlTable``
is a JSON file watched for changes, for work on one machine. ``MemoryControlTable`` is the
in-memory twin for tests. ``ControlLoop`` is the replica's background thread: it applies each
new desired state of its model and publishes what it applied (see ``worker.lifecycle.state``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from worker.errors import WorkerError
from worker.kafka.admin import ensure_topic
from worker.kafka.confluent import ConfluentProducer
from worker.kafka.port import Admin, BrokerError
from worker.kafka.reader import TopicReader
from worker.lifecycle.state import DesiredState, ReplicaStatus, model_key, replica_key

logger = logging.getLogger(__name__)

Table = dict[str, Any]


class ControlError(WorkerError):
    """The control channel cannot be read or written."""


class ControlTable(Protocol):
    def catch_up(self, timeout_s: float) -> Table:
        """Reads everything written so far; returns the whole table."""

    def poll(self, timeout_s: float) -> dict[str, Any]:
        """Changes since the last read (``None`` for a deleted key), waiting up to ``timeout_s``."""

    def put(self, key: str, value: Any) -> None:
        """Writes a value (``None`` deletes the key); durable when it returns, else ``ControlError``."""

    def close(self) -> None: ...


class MemoryControlTable:
    """The twin: tables made with the same ``log`` see each other's writes, like readers of one topic."""

    def __init__(self, log: list[tuple[str, Any]] | None = None) -> None:
        self.log: list[tuple[str, Any]] = [] if log is None else log
        self._read = 0

    def catch_up(self, timeout_s: float = 0) -> Table:
        table: Table = {}
        for key, value in self.log:
            _apply(table, key, value)
        self._read = len(self.log)
        return table

    def poll(self, timeout_s: float = 0) -> dict[str, Any]:
        new, self._read = self.log[self._read:], len(self.log)
        return dict(new)

    def put(self, key: str, value: Any) -> None:
        self.log.append((key, json.loads(json.dumps(value))))

    def close(self) -> None:
        pass


def _apply(table: Table, key: str, value: Any) -> None:
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value


class FileControlTable:
    """A JSON object in a file, rewritten atomically under a lock; readers poll its contents."""

    def __init__(self, path: Path, interval_s: float = 0.2) -> None:
        self.path = path
        self.interval_s = interval_s
        self._lock_path = path.with_name(path.name + ".lock")
        self._text: str | None = None
        self._table: Table = {}

    def catch_up(self, timeout_s: float = 0) -> Table:
        self._text = self._read_text()
        self._table = self._parse(self._text)
        return dict(self._table)

    def poll(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while (text := self._read_text()) == self._text:
            if time.monotonic() >= deadline:
                return {}
            time.sleep(min(self.interval_s, max(deadline - time.monotonic(), 0)))
        before, self._text, self._table = self._table, text, self._parse(text)
        changed: dict[str, Any] = {k: v for k, v in self._table.items() if before.get(k) != v}
        changed.update({k: None for k in before if k not in self._table})
        return changed

    def put(self, key: str, value: Any) -> None:
        with self._locked():
            table = self._parse(self._read_text())
            _apply(table, key, value)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)

    def close(self) -> None:
        pass

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_text(self) -> str | None:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ControlError(f"cannot read the control file {self.path}: {exc}") from exc

    def _parse(self, text: str | None) -> Table:
        if text is None:
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ControlError(f"the control file {self.path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ControlError(f"the control file {self.path} must hold a JSON object")
        return data


class KafkaControlTable:
    """A compacted topic, read from the beginning of every partition by assignment."""

    def __init__(self, topic: str, client_config: dict[str, Any], put_timeout_s: float = 10.0) -> None:
        self.topic = topic
        self.client_config = client_config
        self.put_timeout_s = put_timeout_s
        self._reader: TopicReader | None = None
        self._producer: ConfluentProducer | None = None

    def catch_up(self, timeout_s: float) -> Table:
        reader = self._open()
        table: Table = {}
        deadline = time.monotonic() + timeout_s
        while not reader.caught_up:
            if time.monotonic() > deadline:
                raise ControlError(f"could not read the control topic {self.topic} to its end within {timeout_s:.0f}s")
            for key, value in self._read(reader, 0.2):
                _apply(table, key, value)
        return table

    def poll(self, timeout_s: float) -> dict[str, Any]:
        return dict(self._read(self._open(), timeout_s))

    def put(self, key: str, value: Any) -> None:
        producer = self._producer_()
        failures: list[str] = []

        def delivered(err: object | None, _: object) -> None:
            if err is not None:
                failures.append(str(err))

        payload = None if value is None else json.dumps(value).encode()
        try:
            producer.produce(self.topic, payload, key.encode(), on_delivery=delivered)
        except (BrokerError, BufferError) as exc:
            failures.append(str(exc))
        left = producer.flush(self.put_timeout_s)
        if left or failures:
            raise ControlError(f"could not write to the control topic {self.topic}: "
                               f"{failures[0] if failures else 'not acknowledged in time'}")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._producer is not None:
            self._producer.flush(self.put_timeout_s)
            self._producer = None

    def _open(self) -> TopicReader:
        if self._reader is None:
            try:
                self._reader = TopicReader(self.client_config, [self.topic], from_beginning=True,
                                           name="worker-control", fetch_wait_ms=100)
            except BrokerError as exc:
                raise ControlError(f"cannot read the control topic {self.topic}: {exc.fault.reason}") from exc
        return self._reader

    def _producer_(self) -> ConfluentProducer:
        if self._producer is None:
            self._producer = ConfluentProducer({**self.client_config, "enable.idempotence": True, "acks": "all",
                                                "linger.ms": 0})
        return self._producer

    def _read(self, reader: TopicReader, timeout_s: float) -> list[tuple[str, Any]]:
        records = []
        for message in reader.read(500, timeout_s):
            record = _decode(message.key(), message.value(), self.topic)
            if record is not None:
                records.append(record)
        return records


def _decode(key: bytes | None, value: bytes | None, where: str) -> tuple[str, Any] | None:
    if key is None:
        logger.warning("ignoring a control record without a key on %s", where)
        return None
    try:
        return key.decode(), None if value is None else json.loads(value)
    except ValueError as exc:
        logger.warning("ignoring a control record on %s that is not UTF-8 JSON (key %r): %s", where, key, exc)
        return None


def ensure_control_topic(admin: Admin, topic: str, timeout_s: float = 30.0) -> None:
    """Creates the compacted control topic (one partition) unless it exists."""
    try:
        fault = ensure_topic(admin, topic, {"cleanup.policy": "compact"}, timeout_s)
    except BrokerError as exc:
        raise ControlError(f"cannot reach the brokers for the control topic {topic}: {exc.fault.reason}") from exc
    if fault is not None:
        raise ControlError(f"cannot create the control topic {topic}: {fault.reason}")


class ControlLoop(threading.Thread):
    """A replica's control thread: applies each new desired state of ``model`` (``apply`` loads
    and validates what it names, then swaps the serving state) and publishes the outcome."""

    def __init__(self, table: ControlTable, model: str, replica: str,
                 apply: Callable[[DesiredState], ReplicaStatus], interval_s: float = 0.2) -> None:
        super().__init__(name="model-control", daemon=True)
        self.table, self.model, self.replica = table, model, replica
        self.apply = apply
        self.interval_s = interval_s
        self._stopped = threading.Event()
        self._outbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

    def handle(self, raw: Any) -> ReplicaStatus | None:
        """Applies one desired state (from the table) and publishes the status; None if malformed."""
        try:
            desired = DesiredState.from_json(raw)
        except ValueError as exc:
            logger.error("ignoring a malformed command for model %s: %s", self.model, exc)
            return None
        status = self.apply(desired)
        self.publish_status(status)
        return status

    def publish_status(self, status: ReplicaStatus) -> None:
        self._put(replica_key(self.model, self.replica), status.to_json())

    def publish(self, key: str, value: Any) -> None:
        """Queues a write for the control thread (callable from any thread, never blocks)."""
        self._outbox.put((key, value))

    def run(self) -> None:
        key = model_key(self.model)
        while not self._stopped.is_set():
            self._drain()
            try:
                changes = self.table.poll(self.interval_s)
            except WorkerError as exc:
                logger.warning("cannot read the control channel, retrying: %s", exc)
                self._stopped.wait(1.0)
                continue
            if changes.get(key) is not None:
                self.handle(changes[key])

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops the thread, then deletes this replica's status (it no longer serves)."""
        self._stopped.set()
        if self.is_alive():
            self.join(timeout_s)
        self._drain()
        self._put(replica_key(self.model, self.replica), None)
        self.table.close()

    def _drain(self) -> None:
        while True:
            try:
                key, value = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._put(key, value)

    def _put(self, key: str, value: Any) -> None:
        try:
            self.table.put(key, value)
        except WorkerError as exc:
            logger.warning("cannot write %s to the control channel: %s", key, exc)
