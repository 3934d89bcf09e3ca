"""Loading feature hashes by hand (``worker features load``): HSET, pipelined, with a tally of what
each configured entity received."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from worker.devtools.console import count, rate
from worker.devtools.sources import Item
from worker.errors import StartupError
from worker.features.keys import KeyTemplate


@dataclass
class LoadTally:
    written: int = 0
    rejected: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    per_entity: Counter[str] = field(default_factory=Counter)
    unknown_fields: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def problem(self, where: str, reason: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(f"{where}: {reason}")

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        return (f"loaded {count(self.written)} hashes ({rate(self.written, elapsed)}), "
                f"errors {count(self.rejected + self.failed)}")


class EntityMatcher:
    """Which configured entity a key belongs to, by its template's literal prefix."""

    def __init__(self, entities: Mapping[str, tuple[str, Sequence[str]]]) -> None:
        """``entities``: per entity name, its key template and fields."""
        self.prefixes = sorted(((KeyTemplate(template).literals[0], name, set(fields))
                                for name, (template, fields) in entities.items()), key=lambda p: -len(p[0]))

    def match(self, key: str) -> tuple[str, set[str]] | None:
        for prefix, name, fields in self.prefixes:
            if key.startswith(prefix):
                return name, fields
        return None


def hash_fields(item: Any) -> tuple[str, dict[str, str]]:
    """``(key, {field: text})`` from ``{"key": ..., "fields": {...}}``; null values are left out."""
    if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"]:
        raise ValueError('expected {"key": "<redis key>", "fields": {...}}')
    fields = item.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise ValueError(f"{item['key']}: 'fields' must be a non-empty object")
    out: dict[str, str] = {}
    for name, value in fields.items():
        if isinstance(value, bool):
            out[name] = "1" if value else "0"
        elif isinstance(value, int | float | str):
            out[name] = repr(value) if isinstance(value, float) else str(value)
        elif value is not None:
            raise ValueError(f"{item['key']}.{name}: {type(value).__name__} is not a number or a string")
    return item["key"], out


def load_hashes(client: Any, items: Iterable[Item], matcher: EntityMatcher, chunk: int = 1000, replace: bool = False,
                on_progress: Callable[[LoadTally], None] | None = None) -> LoadTally:
    """HSET every item, ``chunk`` per pipelined round trip."""
    tally = LoadTally()
    batch: list[tuple[str, str, dict[str, str]]] = []
    for where, item in items:
        try:
            if isinstance(item, Exception):
                raise ValueError(str(item))
            key, fields = hash_fields(item)
        except ValueError as exc:
            tally.rejected += 1
            tally.problem(where, str(exc))
            continue
        batch.append((where, key, fields))
        _note_entity(tally, matcher, key, fields)
        if len(batch) >= chunk:
            _write(client, batch, replace, tally)
            if on_progress:
                on_progress(tally)
    _write(client, batch, replace, tally)
    return tally


def _note_entity(tally: LoadTally, matcher: EntityMatcher, key: str, fields: dict[str, str]) -> None:
    found = matcher.match(key)
    name, known = found if found else ("(no entity)", set())
    tally.per_entity[name] += 1
    if found:
        tally.unknown_fields.update(f"{name}.{f}" for f in fields if f not in known)


def _write(client: Any, batch: list[tuple[str, str, dict[str, str]]], replace: bool, tally: LoadTally) -> None:
    if not batch:
        return
    pipe = client.pipeline(transaction=False)
    for _, key, fields in batch:
        if replace:
            pipe.delete(key)
        pipe.hset(key, mapping=fields)
    try:
        results = pipe.execute(raise_on_error=False)
    except redis.RedisError as exc:
        raise StartupError(f"Redis failed after {tally.written} hashes: {exc}") from exc
    for (where, key, _), result in zip(batch, results[1::2] if replace else results, strict=True):
        if isinstance(result, Exception):
            tally.failed += 1
            tally.problem(where, f"HSET {key}: {result}")
        else:
            tally.written += 1
    batch.clear()
