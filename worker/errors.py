"""Errors raised by the worker.

Per-event errors (``EventError`` and subclasses) carry the raw input message so that the
dead-letter topic can republish it byte for byte. Infrastructure errors (Redis, Kafka)
are transient and handled by the runner; configuration errors stop the worker at startup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.records import Message


class WorkerError(Exception):
    """Base class of every error the worker raises on purpose."""


class ConfigError(WorkerError):
    """The configuration is invalid; ``problems`` holds one ``(key, reason)`` per fault."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {reason}" for key, reason in problems))

    @classmethod
    def at(cls, key: str, reason: str) -> ConfigError:
        return cls([(key, reason)])

    def lines(self) -> list[str]:
        return [f"config error: {key}: {reason}" for key, reason in self.problems]


class StartupError(WorkerError):
    """A dependency (model, schema, broker, Redis) could not be made ready at startup."""


class EventError(WorkerError):
    """One event cannot be processed; it goes to the dead-letter topic, the batch goes on.

    ``stage`` names where it failed (decode, features, assemble, inference, encode) and
    ``raw`` is the original message, kept so that the dead letter is the same bytes.
    """

    stage = "process"

    def __init__(self, reason: str, raw: Message | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class DecodeError(EventError):
    stage = "decode"


class FeatureValueError(EventError):
    stage = "features"


class AssemblyError(EventError):
    stage = "assemble"


class InferenceError(EventError):
    stage = "inference"


class EncodeError(EventError):
    stage = "encode"


class FeatureStoreUnavailable(WorkerError):
    """The feature store cannot be reached; the batch is retried, not dead-lettered.

    ``refused`` names a refusal that no retry can mend, when that is what it is (a certificate,
    the credentials: see ``worker.startup.REFUSALS``); startup gives up at once on those."""

    def __init__(self, reason: str, refused: str = "") -> None:
        super().__init__(reason)
        self.refused = refused


class RegistryUnavailable(WorkerError):
    """The Schema Registry did not answer; the batch is retried rather than dead-lettered."""


class RegistryRefused(RegistryUnavailable):
    """The Schema Registry answered with a refusal (an HTTP 4xx other than 404: credentials,
    permissions, an incompatible or invalid schema); the message carries its error code and reason.

    A kind of ``RegistryUnavailable`` on purpose: met while decoding, the refusal concerns the worker
    (its credentials), not the event, so the batch is held rather than every event dead-lettered."""

    def __init__(self, message: str, http_status: int, error_code: int, reason: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code
        self.reason = reason


class BrokerUnavailable(WorkerError):
    """The broker does not acknowledge outputs (or finish a commit) in time; the loop holds its batch."""


class ProducerFenced(WorkerError):
    """Another instance took over this worker's transactional id; this one must stop."""


class ModelRunError(WorkerError):
    """The model failed on a whole batch; the pipeline splits it to find the culprits."""


class ToolError(WorkerError):
    """A mistake in a hands-on command's input or options; printed without a traceback."""


class UsageError(ToolError):
    """The command was invoked wrongly (an option, an input that is not there, a file in the wrong
    format, nothing to resume): exit code 2, as a configuration error, so that a script can tell it
    from exit code 1, which ``worker batch`` keeps for "some rows were dead-lettered" and ``worker
    models evaluate`` for "a gate failed"."""
