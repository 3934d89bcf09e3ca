"""The feature store port and its in-memory twin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from worker.errors import FeatureStoreUnavailable

RawValue = bytes | None
# Keys and field names: text for plain hashes, bytes where a layout names them in binary (Feast).
Name = str | bytes
Requests = Sequence[tuple[Sequence[Name], Sequence[Name]]]
# A store answers a key with its field values, or with the error it got for that key alone
# (a key holding another Redis type, say), which dead-letters only the events that use it.
KeyValues = list[RawValue] | Exception


class FeatureStore(Protocol):
    """Reads hash fields for many keys in one round trip."""

    def fetch(self, requests: Requests) -> list[list[KeyValues]]:
        """For each ``(fields, keys)``: one list per key with the raw value of each field."""

    def ping(self) -> None:
        """Raise ``FeatureStoreUnavailable`` unless the store answers."""

    def close(self) -> None: ...


class InMemoryFeatureStore:
    """The feature store's in-memory twin: ``{key: {field: value}}``."""

    def __init__(self, data: dict[Any, dict[Any, Any]] | None = None) -> None:
        self.data = data if data is not None else {}
        self.calls = 0
        self.available = True

    def fetch(self, requests: Requests) -> list[list[KeyValues]]:
        self.ping()
        self.calls += 1
        return [[[_raw(self.data.get(key, {}).get(f)) for f in fields] for key in keys]
                for fields, keys in requests]

    def ping(self) -> None:
        if not self.available:
            raise FeatureStoreUnavailable("in-memory store switched off")

    def close(self) -> None:
        pass


def _raw(value: Any) -> RawValue:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()
