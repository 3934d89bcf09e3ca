"""The broker port over confluent-kafka (librdkafka).

The adapters are thin: messages are librdkafka's own objects (they satisfy
``worker.records.Message``), delivery callbacks are handed to librdkafka as they are, and
the client's exceptions become ``BrokerError``s carrying a ``Fault``. ``produce`` is the one
call on the hot path; wrapping it costs one Python call per output.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from typing import Any, TypeVar

from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec  # where confluent_kafka.admin re-exports it from
from confluent_kafka.cimpl import NewTopic as ConfluentNewTopic  # what confluent_kafka.admin re-exports, typed

from worker.errors import StartupError
from worker.kafka.port import (
    BrokerError,
    DeliveryCallback,
    Fault,
    NewTopic,
    PartitionEnds,
    PartitionProgress,
    RebalanceListener,
)
from worker.records import TP, Headers, Message

logger = logging.getLogger(__name__)

_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
           KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}
# Joins the coordinator refuses for good, whatever the retries: say which setting, and stop.
_REFUSED_JOINS = {KafkaError.INVALID_SESSION_TIMEOUT: (
    "the group coordinator refuses kafka.session_timeout_ms={} (INVALID_SESSION_TIMEOUT): it must lie within the "
    "broker's group.min.session.timeout.ms and group.max.session.timeout.ms (Kafka's defaults: 6000 and 1800000)")}
_ERRORS_LOGGED = 100  # consumer errors logged one by one before they are only skipped
ClientT = TypeVar("ClientT", Consumer, Producer, AdminClient)
_SYSLOG_LEVELS = ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3))
_THREAD = re.compile(r"^\[thrd:([^\]]*)\]: (?:\1: )?(.*)$", re.S)


class ClientLines(logging.Filter):
    """librdkafka's own log lines as the worker's: the facility, client and broker as fields, and
    each kind of line (facility and broker) at most once per ``interval_s``; the next one says how
    many like it were held back. A broker that does not answer is otherwise logged about twenty
    times a second by every client."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.args, tuple) and len(record.args) == 3):
            return True
        facility, client, text = (str(a) for a in record.args)
        found = _THREAD.match(text)
        broker, text = (found.group(1), found.group(2)) if found else ("", text)
        held = self._held_back((facility, broker))
        if held is None:
            return False
        record.msg, record.args = "librdkafka %s: %s%s", (facility, text, _more(held, self.interval_s))
        record.kafka_client, record.broker = client, broker
        return True

    def _held_back(self, key: tuple[str, str]) -> int | None:
        """How many lines like this one were held back since the last shown; None: hold this one."""
        now = self._clock()
        with self._lock:
            last, held = self._seen.get(key, (-self.interval_s, 0))
            if now - last < self.interval_s:
                self._seen[key] = (last, held + 1)
                return None
            self._seen[key] = (now, 0)
            return held


def _more(held: int, interval_s: float) -> str:
    return f" ({held} more like it in the last {interval_s:.0f}s)" if held else ""


CLIENT_LOG = logging.getLogger("worker.kafka.librdkafka")
CLIENT_LOG.addFilter(ClientLines())


def _syslog_level(level: int) -> int:
    return next((syslog for python, syslog in _SYSLOG_LEVELS if level <= python), 2)


def fault_of(error: KafkaError) -> Fault:
    code = error.code()
    return Fault(error.str(), error.name(), fatal=error.fatal(), retriable=error.retriable(),
                 abortable=error.txn_requires_abort(), fenced=code in _FENCED, conflict=code == KafkaError._CONFLICT,
                 refused=_refused(code, error.str()))


# OpenSSL's words for a handshake that failed over certificates. A server refusing our certificate
# can only say so with an alert, which librdkafka reports as a transport error.
_CERTIFICATE_REFUSALS = (("certificate verify failed", "server_certificate"),
                         ("alert certificate required", "client_certificate"),
                         ("alert unknown ca", "client_certificate"), ("alert bad certificate", "client_certificate"),
                         ("alert certificate unknown", "client_certificate"))


def _refused(code: int, text: str) -> str:
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        return "credentials"
    if code not in (KafkaError._SSL, KafkaError._TRANSPORT):
        return ""
    lowered = text.lower()
    return next((kind for words, kind in _CERTIFICATE_REFUSALS if words in lowered), "")


def broker_error(exc: KafkaException) -> BrokerError:
    error = exc.args[0] if exc.args else None
    return BrokerError(fault_of(error) if isinstance(error, KafkaError) else Fault(str(exc)))


def new_client(kind: type[ClientT], config: dict[str, Any]) -> ClientT:
    """The client, logging through the worker's logger (at the level the worker logs at) unless the
    configuration says otherwise."""
    config = {"logger": CLIENT_LOG, "log_level": _syslog_level(CLIENT_LOG.getEffectiveLevel()), **config}
    try:
        return kind(config)
    except KafkaException as exc:
        raise StartupError(f"invalid Kafka client configuration: {broker_error(exc).fault.reason}") from exc


class _Errors:
    """A client's error callback: remembers the last error (what a failed call is explained with)
    and passes each on to the worker's listener, if any. Without a listener nothing more is logged:
    librdkafka's own lines (``ClientLines``) already say the same, once a minute."""

    def __init__(self, listener: Callable[[Fault], None] | None) -> None:
        self.listener = listener
        self.last: Fault | None = None
        self.refusal: Fault | None = None
        """The last refusal: a later "all brokers down" must not hide why they are."""

    def __call__(self, error: KafkaError) -> None:
        self.last = fault_of(error)
        if self.last.refused:
            self.refusal = self.last
        if self.listener is not None:
            self.listener(self.last)

    def explained(self, exc: BrokerError) -> BrokerError:
        """``exc`` with the client's last error added to its reason (a metadata request only says
        that it failed; the last error says why: refused, TLS, authentication...)."""
        last = self.refusal or self.last
        if last is None or last.reason in exc.fault.reason:
            return exc
        return BrokerError(dataclasses.replace(exc.fault, reason=f"{exc.fault.reason}; last client error: "
                                                                  f"{last.reason}", refused=last.refused))


def _with_callbacks(config: Mapping[str, Any], errors: _Errors,
                    on_statistics: Callable[[str], None] | None = None) -> dict[str, Any]:
    out = {**config, "error_cb": errors}
    if on_statistics is not None:
        out["stats_cb"] = on_statistics
    return out


def _partitions(partitions: Sequence[TP]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in partitions]


def _tps(partitions: Sequence[TopicPartition]) -> list[TP]:
    return [(p.topic, p.partition) for p in partitions]


def listed_topics(client: Consumer | Producer | AdminClient, timeout_s: float) -> dict[str, int]:
    try:
        metadata = client.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise broker_error(exc) from exc
    return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}


class ConfluentConsumer:
    """A group member; messages with an error (the client's own events) are logged and skipped."""

    def __init__(self, config: Mapping[str, Any], on_error: Callable[[Fault], None] | None = None,
                 on_statistics: Callable[[str], None] | None = None) -> None:
        self._errors = _Errors(on_error)
        self._consumer = new_client(Consumer, _with_callbacks(config, self._errors, on_statistics))
        self._errors_logged = 0
        self._subscribed = False
        self._session_timeout_ms = config.get("session.timeout.ms", 45_000)

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self._subscribed = True
        # librdkafka assigns what it offers once the callback returns (incrementally, with the
        # cooperative assignor), so the callbacks only pass the news on.
        self._consumer.subscribe(list(topics), on_assign=lambda _, ps: listener.assigned(_tps(ps)),
                                 on_revoke=lambda _, ps: listener.revoked(_tps(ps)),
                                 on_lost=lambda _, ps: listener.lost(_tps(ps)))

    def unsubscribe(self) -> None:
        self._consumer.unsubscribe()

    def consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        messages = self._consumer.consume(max_messages, timeout_s)
        good: list[Message] = [m for m in messages if m.error() is None]
        if len(good) != len(messages):
            for m in messages:
                self._log_error(m)
        return good

    def poll(self, timeout_s: float) -> Message | None:
        message = self._consumer.poll(timeout_s)
        if message is None or message.error() is not None:
            self._log_error(message)
            return None
        return message

    def _log_error(self, message: Any) -> None:
        """Logs a client event handed out as a message (the first ``_ERRORS_LOGGED``); raises
        ``StartupError`` for a join the coordinator refuses for good."""
        error = message.error() if message is not None else None
        if error is None:
            return
        if error.code() in _REFUSED_JOINS:
            raise StartupError(_REFUSED_JOINS[error.code()].format(self._session_timeout_ms))
        if self._errors_logged < _ERRORS_LOGGED:
            self._errors_logged += 1
            logger.warning("consumer error: %s", error)

    def pause(self, partitions: Sequence[TP]) -> None:
        if partitions:
            self._consumer.pause(_partitions(partitions))

    def resume(self, partitions: Sequence[TP]) -> None:
        if partitions:
            self._consumer.resume(_partitions(partitions))

    def seek(self, partition: TP, offset: int) -> None:
        try:
            self._consumer.seek(TopicPartition(partition[0], partition[1], offset))
        except KafkaException as exc:
            raise broker_error(exc) from exc

    def position(self, partitions: Sequence[TP]) -> dict[TP, int]:
        try:
            found = self._consumer.position(_partitions(partitions))
        except KafkaException as exc:
            raise broker_error(exc) from exc
        return {(p.topic, p.partition): p.offset for p in found if p.offset >= 0}

    def progress(self, partitions: Sequence[TP], timeout_s: float) -> dict[TP, PartitionProgress]:
        positions = self.position(partitions)
        unknown = [tp for tp in partitions if tp not in positions]
        # librdkafka has no position before it hands a message out, even once fetching has started: then
        # the committed offset says where reading stands, if the coordinator answers.
        committed, unanswered = self._committed(unknown, timeout_s) if unknown else ({}, False)
        positions.update(committed)
        return {tp: PartitionProgress(positions.get(tp), *self._ends(tp, timeout_s),
                                      offsets_unanswered=unanswered and tp in unknown) for tp in partitions}

    def _committed(self, partitions: Sequence[TP], timeout_s: float) -> tuple[dict[TP, int], bool]:
        try:
            found = self._consumer.committed(_partitions(partitions), timeout=timeout_s)
        except KafkaException:
            return {}, True
        return {(p.topic, p.partition): p.offset for p in found if p.offset >= 0}, False

    def _ends(self, tp: TP, timeout_s: float) -> tuple[int | None, int | None]:
        """(stable end, high watermark). Asked of the broker, the end comes with this consumer's isolation
        level (a read_committed consumer gets the last stable offset); the one cached from the last fetch
        is the high watermark."""
        partition = TopicPartition(*tp)
        try:
            stable = self._consumer.get_watermark_offsets(partition, timeout_s, cached=False)[1]
            end = self._consumer.get_watermark_offsets(partition, cached=True)[1]
        except KafkaException:
            return None, None  # the broker did not answer in time: unknown, not an error of the loop
        return (stable if stable >= 0 else None), (end if end >= 0 else None)

    def commit(self, offsets: Mapping[TP, int]) -> None:
        try:
            self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                  asynchronous=False)
        except KafkaException as exc:
            raise broker_error(exc) from exc

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def topics(self, timeout_s: float) -> dict[str, int]:
        try:
            return listed_topics(self._consumer, timeout_s)
        except BrokerError as exc:
            if not self._subscribed:  # (a subscribed consumer's poll could hand out a message)
                self._consumer.poll(0)  # serves the client's logs and errors, which say why
            raise self._errors.explained(exc) from exc

    def close(self) -> None:
        self._consumer.close()


class ConfluentProducer:
    def __init__(self, config: Mapping[str, Any], on_error: Callable[[Fault], None] | None = None) -> None:
        self._errors = _Errors(on_error)
        self._producer = new_client(Producer, _with_callbacks(config, self._errors))

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                on_delivery: DeliveryCallback | None = None, headers: Headers | None = None) -> None:
        try:
            self._producer.produce(topic, value, key, on_delivery=on_delivery, headers=headers)
        except KafkaException as exc:
            raise broker_error(exc) from exc

    def poll(self, timeout_s: float) -> int:
        try:
            return int(self._producer.poll(timeout_s))
        except KafkaException as exc:  # a fatal error (fenced, say) surfaces here too
            raise broker_error(exc) from exc

    def flush(self, timeout_s: float) -> int:
        return int(self._producer.flush(timeout_s))

    def purge(self) -> None:
        self._producer.purge(in_queue=True, in_flight=True)

    def init_transactions(self, timeout_s: float) -> None:
        self._call(self._producer.init_transactions, timeout_s)

    def begin_transaction(self) -> None:
        self._call(self._producer.begin_transaction)

    def send_offsets_to_transaction(self, offsets: Mapping[TP, int], group: object, timeout_s: float) -> None:
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        self._call(self._producer.send_offsets_to_transaction, partitions, group, timeout_s)

    def commit_transaction(self, timeout_s: float) -> None:
        self._call(self._producer.commit_transaction, timeout_s)

    def abort_transaction(self, timeout_s: float) -> None:
        self._call(self._producer.abort_transaction, timeout_s)

    @staticmethod
    def _call(method: Callable[..., Any], *args: Any) -> None:
        try:
            method(*args)
        except KafkaException as exc:
            raise broker_error(exc) from exc

    def topics(self, timeout_s: float) -> dict[str, int]:
        try:
            return listed_topics(self._producer, timeout_s)
        except BrokerError as exc:
            self._producer.poll(0)  # serves the client's logs and errors, which say why
            raise self._errors.explained(exc) from exc


class ConfluentAdmin:
    def __init__(self, config: Mapping[str, Any]) -> None:
        self._admin = new_client(AdminClient, dict(config))

    def topics(self, timeout_s: float) -> dict[str, int]:
        return listed_topics(self._admin, timeout_s)

    def ends(self, partitions: Sequence[TP], timeout_s: float) -> dict[TP, PartitionEnds]:
        stable = self._ask_latest(partitions, IsolationLevel.READ_COMMITTED, timeout_s)
        end = self._ask_latest(partitions, IsolationLevel.READ_UNCOMMITTED, timeout_s)
        wait([*stable.values(), *end.values()], timeout_s)  # once for both: the loop waits meanwhile
        return {tp: PartitionEnds(_offset(stable.get(tp)), _offset(end.get(tp))) for tp in partitions}

    def _ask_latest(self, partitions: Sequence[TP], isolation: IsolationLevel,
                    timeout_s: float) -> dict[TP, Future[Any]]:
        """Asks for each partition's latest offset for a reader of ``isolation``; the answers to come."""
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # untyped in confluent-kafka 2.16
        try:
            futures = self._admin.list_offsets({TopicPartition(*tp): latest for tp in partitions},
                                               isolation_level=isolation, request_timeout=timeout_s)
        except KafkaException:
            return {}
        return {(p.topic, p.partition): f for p, f in futures.items()}

    def create_topics(self, topics: Sequence[NewTopic], timeout_s: float) -> dict[str, Fault | None]:
        new = [ConfluentNewTopic(t.name, t.partitions, t.replication_factor, config=dict(t.config or {}))
               for t in topics]
        futures = self._admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s)
        return {name: _outcome(future, timeout_s * 2) for name, future in futures.items()}


def _offset(future: Future[Any] | None) -> int | None:
    """The offset an answer holds, if it came (and is not an error)."""
    if future is None or not future.done() or future.exception() is not None:
        return None
    return int(future.result().offset)


def _outcome(future: Any, timeout_s: float) -> Fault | None:
    try:
        future.result(timeout_s)
    except KafkaException as exc:
        return broker_error(exc).fault
    return None
