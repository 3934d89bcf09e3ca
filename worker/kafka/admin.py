"""Topics: waiting for them at startup, creating the configured ones, and the compacted
control topic. Written once, over the port's ``Admin`` and ``Metadata``."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from worker.errors import StartupError, ToolError
from worker.kafka.port import Admin, BrokerError, Fault, Metadata, NewTopic
from worker.startup import refusal_line, wait_until_ready

logger = logging.getLogger(__name__)

ALREADY_EXISTS = "TOPIC_ALREADY_EXISTS"


def wait_for_topics(metadata: Metadata, topics: Sequence[str], timeout_s: float, where: str,
                    settings_of: Mapping[str, str] | None = None) -> None:
    """Block until the brokers at ``where`` answer and every topic exists, logging progress; else
    ``StartupError``: at once when they refuse this client (``Fault.refused``), naming the settings
    ``settings_of`` gives for that refusal, since waiting cannot mend a configuration."""
    wait_until_ready(lambda: _topics_problem(metadata, topics, where, settings_of or {}), "Kafka", where, timeout_s)
    logger.info("topics present: %s", ", ".join(topics))


def _topics_problem(metadata: Metadata, topics: Sequence[str], where: str,
                    settings_of: Mapping[str, str]) -> str | None:
    try:
        listed = metadata.topics(0.5)  # short, so that Ctrl-C is not held up
    except BrokerError as exc:
        if exc.fault.refused:
            raise StartupError(refusal_line(f"Kafka at {where}", exc.fault.refused, exc.fault.reason,
                                            settings_of)) from exc
        return f"brokers unreachable ({exc.fault.reason})"
    missing = [t for t in topics if t not in listed]
    if missing:
        return f"topic(s) {', '.join(missing)} do not exist (create them, e.g. `worker topics create`)"
    return None


def existing_topics(metadata: Metadata, where: str, timeout_s: float = 10.0) -> dict[str, int]:
    """Every listed topic and its partition count; ``StartupError`` if Kafka is unreachable."""
    try:
        return metadata.topics(timeout_s)
    except BrokerError as exc:
        raise StartupError(f"cannot reach Kafka at {where}: {exc.fault.reason}") from exc


def topic_partitions(metadata: Metadata, topic: str, where: str) -> int:
    """How many partitions ``topic`` has; ``StartupError`` if Kafka is unreachable, ``ToolError`` if it is absent."""
    partitions = existing_topics(metadata, where).get(topic)
    if partitions is None:
        raise ToolError(f"topic {topic!r} does not exist (create it: worker topics create --config ...)")
    return partitions


def create_topics(admin: Admin, wanted: Sequence[str], where: str, partitions: int = 3,
                  replication_factor: int = 1) -> list[str]:
    """Create those of ``wanted`` that do not exist yet; returns one report line per topic."""
    existing = existing_topics(admin, where)
    new = [NewTopic(t, partitions, replication_factor) for t in wanted if t not in existing]
    faults = admin.create_topics(new, 30.0) if new else {}
    lines, failed = [], []
    for topic in wanted:
        if topic in existing:
            lines.append(f"exists   {topic} ({existing[topic]} partitions)")
            continue
        fault = faults[topic]
        if fault is None:
            lines.append(f"created  {topic} ({partitions} partitions, replication factor {replication_factor})")
        elif fault.code == ALREADY_EXISTS:
            lines.append(f"exists   {topic}")
        else:
            failed.append(f"{topic}: {fault.reason}")
    if failed:
        raise ToolError("could not create " + "; ".join(failed))
    if new:
        until_listed(admin, wanted, where)
    return lines


def until_listed(metadata: Metadata, topics: Sequence[str], where: str, timeout_s: float = 30.0) -> None:
    """New topics reach every broker's metadata a little after creation; clients need them there."""
    deadline = time.monotonic() + timeout_s
    while True:
        listed = existing_topics(metadata, where)
        if not (missing := [t for t in topics if t not in listed]):
            return
        if time.monotonic() > deadline:
            raise StartupError(f"topics {', '.join(missing)} were created but are not listed after {timeout_s:.0f}s")
        time.sleep(0.2)


def ensure_topic(admin: Admin, topic: str, config: Mapping[str, str], timeout_s: float = 30.0) -> Fault | None:
    """Creates a one-partition topic with ``config`` unless it exists. Existence is checked first,
    so a principal without the right to create topics can use one made by an administrator.
    Returns what stopped it (``BrokerError`` if the brokers do not answer), or None."""
    if topic in admin.topics(timeout_s):
        return None
    fault = admin.create_topics([NewTopic(topic, 1, 1, config)], timeout_s)[topic]
    if fault is not None and fault.code == ALREADY_EXISTS:
        return None
    if fault is None:
        logger.info("created topic %s (%s)", topic, ", ".join(f"{k}={v}" for k, v in config.items()))
    return fault
