"""The Schema Registry port over confluent-kafka's ``SchemaRegistryClient``.

The library brings TLS (CA, client certificate and key), basic and bearer auth, URL-quoted
subjects and schema references; this adapter maps its answers onto the worker's errors: 404 is a
``SchemaNotFound``, any other refusal a ``RegistryRefused`` with the registry's own error code and
message, and an unreachable registry or a 5xx a ``RegistryUnavailable`` (the batch is held).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry import SchemaReference as ConfluentReference

from worker.codecs.registry import SchemaNotFound, SchemaReference, SchemaText
from worker.errors import RegistryRefused, RegistryUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")
_TRANSIENT_STATUS = {408, 429}  # the registry's own "try again later"


@dataclass(frozen=True)
class RegistryConnection:
    """Where the registry is and how to authenticate; secrets are kept out of ``repr``."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    bearer_token: str | None = field(default=None, repr=False)
    bearer_logical_cluster: str | None = None
    ca_location: str | None = None
    certificate_location: str | None = None
    key_location: str | None = None
    key_password: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0

    def client_config(self) -> dict[str, Any]:
        """The ``SchemaRegistryClient`` configuration."""
        # No retries inside the client: the worker's loop holds the batch and retries with its own
        # backoff, and a retry inside a batch would only stall it.
        config: dict[str, Any] = {"url": self.url, "timeout": self.timeout_s, "max.retries": 0}
        tls = {"ssl.ca.location": self.ca_location, "ssl.certificate.location": self.certificate_location,
               "ssl.key.location": self.key_location, "ssl.key.password": self.key_password}
        config.update({key: value for key, value in tls.items() if value is not None})
        if self.username is not None:
            config["basic.auth.user.info"] = f"{self.username}:{self.password or ''}"
        if self.bearer_token is not None:
            # The client requires a logical cluster with bearer auth (a Confluent Cloud header);
            # a self-managed registry ignores the empty one.
            config.update({"bearer.auth.credentials.source": "STATIC_TOKEN", "bearer.auth.token": self.bearer_token,
                           "bearer.auth.logical.cluster": self.bearer_logical_cluster or ""})
        return config


class ConfluentSchemaRegistry:
    """The worker's ``SchemaRegistry`` on confluent-kafka's client (which also caches schemas by id)."""

    def __init__(self, connection: RegistryConnection) -> None:
        self._url = _without_credentials(connection.url)
        self._client = SchemaRegistryClient(connection.client_config())

    def get_schema(self, schema_id: int) -> SchemaText:
        schema = self._call(f"GET schema id {schema_id}", self._client.get_schema, schema_id)
        return SchemaText(str(schema.schema_str), tuple(self._referenced(schema, set())))

    def register(self, subject: str, schema: str, references: Sequence[SchemaReference] = ()) -> int:
        refs = [ConfluentReference(r.name, r.subject, r.version) for r in references]
        return int(self._call(f"register under subject {subject!r}", self._client.register_schema, subject,
                              Schema(schema, "AVRO", refs)))

    def close(self) -> None:
        self._client.close()

    def _referenced(self, schema: Schema, seen: set[tuple[str, int]]) -> list[str]:
        """The texts of the schemas ``schema`` references, depth first, each once."""
        texts: list[str] = []
        for ref in schema.references or []:
            key = (str(ref.subject), int(ref.version or 0))
            if key in seen:
                continue
            seen.add(key)
            registered = self._call(f"GET subject {key[0]!r} version {key[1]}", self._client.get_version, *key)
            texts += self._referenced(registered.schema, seen)
            texts.append(str(registered.schema.schema_str))
        return texts

    def _call(self, what: str, call: Callable[..., T], *args: Any) -> T:
        try:
            return call(*args)
        except SchemaRegistryError as exc:
            raise _refusal(what, exc) from exc
        except Exception as exc:  # the client's HTTP library (httpx or httpx2) raises its own transport errors
            raise RegistryUnavailable(f"schema registry {self._url} unreachable ({what}): {_transport(exc)}") from exc


def _refusal(what: str, exc: SchemaRegistryError) -> Exception:
    status, code, message = exc.http_status_code, exc.error_code, exc.error_message
    said = f"HTTP {status}, error code {code}: {message}"
    if status == 404:
        return SchemaNotFound(f"{what}: not found ({said})")
    if status >= 500 or status in _TRANSIENT_STATUS:
        return RegistryUnavailable(f"schema registry failed to {what}: {said}")
    return RegistryRefused(f"schema registry refused to {what}: {said}", status, code, message)


def _without_credentials(urls: str) -> str:
    """The registry URLs as errors may show them: credentials in a URL's userinfo are the client's too."""
    return ",".join(re.sub(r"//[^/@]*@", "//***@", url) for url in urls.split(","))


def _transport(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return text + " (is avro.schema_registry_ca_location the CA that signed the registry's certificate?)"
    return text
