"""The Schema Registry port: the two calls the worker needs, a minimal HTTP client for them
and the in-memory twin for tests and local tools."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from typing import Any, Protocol

from worker.errors import RegistryUnavailable


class SchemaRegistry(Protocol):
    """The two Schema Registry calls the worker needs."""

    def get_schema(self, schema_id: int) -> str: ...
    def register(self, subject: str, schema: str) -> int: ...


class HttpSchemaRegistry:
    """A minimal Confluent Schema Registry client (the REST API's two calls we use)."""

    def __init__(self, url: str, username: str | None = None, password: str | None = None,
                 ca_location: str | None = None, timeout_s: float = 10.0) -> None:
        self._url = url.rstrip("/")
        self._timeout = timeout_s
        self._headers = {"Accept": "application/vnd.schemaregistry.v1+json",
                         "Content-Type": "application/vnd.schemaregistry.v1+json"}
        if username:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._ssl = ssl.create_default_context(cafile=ca_location) if ca_location else None

    def get_schema(self, schema_id: int) -> str:
        return str(self._call("GET", f"/schemas/ids/{schema_id}")["schema"])

    def register(self, subject: str, schema: str) -> int:
        body = json.dumps({"schema": schema}).encode()
        return int(self._call("POST", f"/subjects/{subject}/versions", body)["id"])

    def _call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        request = urllib.request.Request(self._url + path, data=body, method=method, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._ssl) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise LookupError(f"{method} {path}: not found") from exc
            raise RegistryUnavailable(f"schema registry {method} {path}: HTTP {exc.code}") from exc
        except (OSError, ValueError) as exc:
            raise RegistryUnavailable(f"schema registry {self._url} unreachable: {exc}") from exc


class InMemorySchemaRegistry:
    """The registry's in-memory twin for tests and local tools."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, int] = {}

    def get_schema(self, schema_id: int) -> str:
        if schema_id not in self.schemas:
            raise LookupError(schema_id)
        return self.schemas[schema_id]

    def register(self, subject: str, schema: str) -> int:
        for known_id, text in self.schemas.items():
            if json.loads(text) == json.loads(schema):
                self.subjects[subject] = known_id
                return known_id
        schema_id = len(self.schemas) + 1
        self.schemas[schema_id] = schema
        self.subjects[subject] = schema_id
        return schema_id

