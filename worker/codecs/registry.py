"""The Schema Registry port: the two calls the worker needs, what a fetched schema is, and the
in-memory twin for tests and local tools. The client for a real registry is ``registry_client``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SchemaText:
    """A registered schema as the registry holds it: its JSON text, and the texts of the schemas it
    references (Schema Registry references), each after the ones it references in turn."""

    text: str
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class SchemaReference:
    """A reference to register a schema with: the full name of the type it uses, and the subject and
    version under which that type's schema is registered."""

    name: str
    subject: str
    version: int


class SchemaNotFound(LookupError):
    """The registry has no schema by that id (or no such subject or version)."""


class SchemaRegistry(Protocol):
    """The two Schema Registry calls the worker needs."""

    def get_schema(self, schema_id: int) -> SchemaText: ...
    def register(self, subject: str, schema: str) -> int: ...


class InMemorySchemaRegistry:
    """The registry's in-memory twin for tests and local tools (no references)."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, int] = {}

    def get_schema(self, schema_id: int) -> SchemaText:
        if schema_id not in self.schemas:
            raise SchemaNotFound(schema_id)
        return SchemaText(self.schemas[schema_id])

    def register(self, subject: str, schema: str) -> int:
        for known_id, text in self.schemas.items():
            if json.loads(text) == json.loads(schema):
                self.subjects[subject] = known_id
                return known_id
        schema_id = len(self.schemas) + 1
        self.schemas[schema_id] = schema
        self.subjects[subject] = schema_id
        return schema_id
