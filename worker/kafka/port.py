"""The broker port: what the worker needs of a Kafka client, as small Protocols.

``worker.kafka.confluent`` implements them over confluent-kafka, ``worker.kafka.memory`` in
memory for tests (like dramatiq's StubBroker). Messages are ``worker.records.Message``-shaped:
the adapter hands out the client's own message objects, never copies. Partitions are plain
``(topic, partition)`` tuples and offsets plain integers.

A client error reaches the worker as a ``Fault``, the few facts it acts on (fatal, retriable,
abortable, fenced), raised inside a ``BrokerError``. Delivery reports are the exception, for
speed: a delivery callback gets the client's own error object (or None), which it only tests
and prints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from worker.errors import WorkerError
from worker.records import TP, Headers, Message

DeliveryCallback = Callable[[Any, Any], None]
"""``(error or None, message)``, called once per produced message when the broker answers."""


def error_text(error: object) -> str:
    """A delivery report's error as text: the client's own message where it has one."""
    text = getattr(error, "str", None)
    return str(text()) if callable(text) else str(error)


@dataclass(frozen=True)
class Fault:
    """A broker client's error, in the terms the worker acts on."""

    reason: str
    code: str = ""
    """The client's name for it (``_MSG_TIMED_OUT``, ``PRODUCER_FENCED``...), for logs and metrics."""
    fatal: bool = False
    """The client is unusable from now on and must be replaced."""
    retriable: bool = False
    """The same call may succeed if tried again."""
    abortable: bool = False
    """The open transaction cannot commit and must be aborted."""
    fenced: bool = False
    """Another instance took over this producer's transactional id."""
    conflict: bool = False
    """Another transactional operation (a commit that timed out) must be finished first."""
    refused: str = ""
    """What the broker, or TLS, turned this client away for, when it is the client's configuration
    and no retry can help: ``server_certificate`` (the brokers' certificate is not trusted),
    ``client_certificate`` (ours is missing or not trusted) or ``credentials`` (SASL)."""

    def __str__(self) -> str:
        return f"{self.reason} ({self.code})" if self.code else self.reason


class BrokerError(WorkerError):
    """A broker client call failed; ``fault`` says how."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(str(fault))
        self.fault = fault


class RebalanceListener(Protocol):
    """Told about partitions as the group moves them; called inside ``poll``/``consume``."""

    def assigned(self, partitions: list[TP]) -> None: ...

    def revoked(self, partitions: list[TP]) -> None:
        """Taken away in an orderly rebalance: offsets may still be committed for them now."""

    def lost(self, partitions: list[TP]) -> None:
        """Taken away without a chance to commit (the group moved on without this member)."""


@dataclass(frozen=True)
class Rebalance:
    """A ``RebalanceListener`` made of three callables."""

    assigned: Callable[[list[TP]], None]
    revoked: Callable[[list[TP]], None]
    lost: Callable[[list[TP]], None]


@dataclass(frozen=True)
class PartitionProgress:
    """Where reading a partition stands, for telling why nothing arrives from it."""

    position: int | None
    """The offset of the next message to be handed out: the consumer's own once it has handed one out,
    before that the group's committed offset (where fetching starts); None if neither is known."""
    stable_end: int | None
    """The end of what this consumer may read: the last stable offset for a read_committed one (no
    further than the first record of a transaction still open), the high watermark otherwise."""
    end: int | None
    """The high watermark: the end of the log, open transactions' records included (None: not known yet)."""
    offsets_unanswered: bool = False
    """The group's committed offset was asked for and did not come in time: the consumer cannot start
    fetching (a coordinator that does not answer, or holds the request behind a join in progress; on
    Kafka also offsets an open transaction is committing, KIP-447's UNSTABLE_OFFSET_COMMIT)."""


@dataclass(frozen=True)
class PartitionEnds:
    """Where a partition ends, for readers of each isolation level (None: the broker did not say)."""

    stable_end: int | None
    """The last stable offset: a read_committed reader sees nothing from the first record of a
    transaction still open on the partition."""
    end: int | None
    """The high watermark: the end of the log, open transactions' records included."""


class Metadata(Protocol):
    def topics(self, timeout_s: float) -> dict[str, int]:
        """Every topic the brokers list, with its partition count; ``BrokerError`` if none answers."""


class Consumer(Metadata, Protocol):
    """A consumer group member with manual offset commits."""

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None: ...

    def unsubscribe(self) -> None:
        """Leave the group (``subscribe`` joins it again)."""

    def consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        """What is fetched, up to ``max_messages``, waiting up to ``timeout_s`` for the first."""

    def poll(self, timeout_s: float) -> Message | None: ...

    def pause(self, partitions: Sequence[TP]) -> None: ...

    def resume(self, partitions: Sequence[TP]) -> None: ...

    def seek(self, partition: TP, offset: int) -> None:
        """The next message of ``partition`` handed out is at ``offset``."""

    def position(self, partitions: Sequence[TP]) -> dict[TP, int]:
        """The offset of the next message to be handed out, per partition (where known)."""

    def commit(self, offsets: Mapping[TP, int]) -> None:
        """Commit synchronously (``BrokerError`` if refused)."""

    def progress(self, partitions: Sequence[TP], timeout_s: float) -> dict[TP, PartitionProgress]:
        """Per partition, where reading it stands; asks the broker (a round trip, so not per batch)."""

    def group_metadata(self) -> object:
        """The member's group identity, which a transaction commits input offsets with."""

    def close(self) -> None:
        """Leave the group."""


class Producer(Metadata, Protocol):
    """An idempotent (optionally transactional) producer with delivery reports."""

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None,
                on_delivery: DeliveryCallback | None = None, headers: Headers | None = None) -> None:
        """Queue a message; ``BufferError`` while the queue is full, ``BrokerError`` if refused."""

    def poll(self, timeout_s: float) -> int:
        """Serve delivery reports (waiting up to ``timeout_s`` for one); returns how many."""

    def flush(self, timeout_s: float) -> int:
        """Wait until every queued message is acknowledged; returns how many still are not."""

    def purge(self) -> None:
        """Drop every queued and in-flight message (their reports say so)."""

    def init_transactions(self, timeout_s: float) -> None: ...

    def begin_transaction(self) -> None: ...

    def send_offsets_to_transaction(self, offsets: Mapping[TP, int], group: object, timeout_s: float) -> None: ...

    def commit_transaction(self, timeout_s: float) -> None: ...

    def abort_transaction(self, timeout_s: float) -> None: ...


ProducerFactory = Callable[[Callable[[Fault], None]], Producer]
"""Makes a producer that reports client-level errors to the callback given."""


@dataclass(frozen=True)
class NewTopic:
    name: str
    partitions: int = 1
    replication_factor: int = 1
    config: Mapping[str, str] | None = None


class Ends(Metadata, Protocol):
    def ends(self, partitions: Sequence[TP], timeout_s: float) -> dict[TP, PartitionEnds]:
        """Per partition, its last stable offset and its end, asked of the broker (round trips: not per batch)."""


class Admin(Ends, Protocol):
    def create_topics(self, topics: Sequence[NewTopic], timeout_s: float) -> dict[str, Fault | None]:
        """Create each topic; per topic, the fault that stopped it (code ``TOPIC_ALREADY_EXISTS``
        for one that exists), or None."""
