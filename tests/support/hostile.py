"""Hostile input values for the fraud workload's Transaction schema: truncated, random,
bit-flipped, schema-mismatched, with trailing bytes, oversized, and tombstones.

Each kind is a function of a ``random.Random`` and a well-formed encoded record, so the property
test (hypothesis) and the integration test (a seeded generator) draw from the same kinds.
Whether a value must be dead-lettered is decided independently of the worker by ``must_dead_letter``
(random bytes, flipped bits or another schema's record can happen to be a valid Transaction).
"""

from __future__ import annotations

import io
import json
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
from hypothesis import strategies as st

# Another schema a producer might mistakenly use for the same topic.
OTHER = fastavro.parse_schema({"type": "record", "name": "Refund", "fields": [
    {"name": "refund_id", "type": "long"}, {"name": "card_id", "type": "string"},
    {"name": "amount", "type": "float"}, {"name": "reasons", "type": {"type": "array", "items": "string"}},
    {"name": "meta", "type": {"type": "map", "values": "long"}}]})


def truncated(rng: random.Random, valid: bytes, limit: int) -> bytes:
    return valid[: rng.randrange(len(valid))]


def random_bytes(rng: random.Random, valid: bytes, limit: int) -> bytes:
    return rng.randbytes(rng.randrange(0, 300))


def bit_flipped(rng: random.Random, valid: bytes, limit: int) -> bytes:
    data = bytearray(valid)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def other_schema(rng: random.Random, valid: bytes, limit: int) -> bytes:
    record = {"refund_id": rng.randrange(-2**63, 2**63), "card_id": _text(rng, 12), "amount": rng.uniform(-1e6, 1e6),
              "reasons": [_text(rng, 8) for _ in range(rng.randrange(4))],
              "meta": {_text(rng, 4): rng.randrange(2**31) for _ in range(rng.randrange(3))}}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, OTHER, record)
    return buf.getvalue()


def json_instead(rng: random.Random, valid: bytes, limit: int) -> bytes:
    return json.dumps({"event_id": _text(rng, 10), "amount": rng.random()}).encode()


def trailing_bytes(rng: random.Random, valid: bytes, limit: int) -> bytes:
    return valid + rng.randbytes(rng.randint(1, 16))


def oversized(rng: random.Random, valid: bytes, limit: int) -> bytes:
    """Over the configured limit; half of them are otherwise perfectly valid (trailing padding)."""
    return valid + rng.randbytes(limit + 1 - len(valid) + rng.randrange(2000))


KINDS: dict[str, Callable[[random.Random, bytes, int], bytes]] = {
    f.__name__: f for f in (truncated, random_bytes, bit_flipped, other_schema, json_instead, trailing_bytes,
                            oversized)}


def hostile(kind: str, rng: random.Random, valid: bytes, limit: int) -> bytes | None:
    """A hostile value of ``kind`` (``tombstone`` is a message without a value)."""
    return None if kind == "tombstone" else KINDS[kind](rng, valid, limit)


def plain_schema(path: Path) -> Any:
    """The schema as the worker reads it: logical types as their plain types (timestamps as ints)."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "logicalType"}
        return [strip(n) for n in node] if isinstance(node, list) else node
    return fastavro.parse_schema(strip(json.loads(path.read_text())))


def must_dead_letter(value: bytes | None, schema: Any, limit: int) -> bool:
    """Whether a correct worker must dead-letter ``value``: no value, over the limit, or not
    exactly one record of ``schema`` (checked with fastavro directly, not through the worker)."""
    if value is None or len(value) > limit:
        return True
    buf = io.BytesIO(value)
    try:
        fastavro.schemaless_reader(buf, schema)
    except Exception:  # fastavro raises EOFError, UnicodeDecodeError, IndexError, ...
        return True
    return buf.tell() != len(value)


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + "é€😀", k=rng.randint(0, n)))


def transactions(schema: Any) -> st.SearchStrategy[bytes]:
    """Well-formed Transaction values with arbitrary field values (extreme numbers, any text)."""
    text = st.text(max_size=30)
    record = st.fixed_dictionaries({
        "event_id": text, "card_id": text, "merchant_id": text,
        "amount": st.floats(allow_nan=True, allow_infinity=True),
        "currency": st.text(max_size=5), "mcc": st.integers(-2**31, 2**31 - 1), "card_present": st.booleans(),
        "channel": st.sampled_from(schema_symbols(schema, "channel")),
        "distance_from_home_km": st.none() | st.floats(allow_nan=True),
        "event_time": st.integers(-2**63, 2**63 - 1),
    })
    return record.map(lambda r: _encode(schema, r))


def hostile_values(schema: Any, limit: int) -> st.SearchStrategy[bytes | None]:
    kinds = st.sampled_from([*KINDS, "tombstone"])
    return st.builds(lambda kind, rng, valid: hostile(kind, rng, valid, limit), kinds,
                     st.randoms(use_true_random=False), transactions(schema))


def schema_symbols(schema: Any, field_name: str) -> list[str]:
    (found,) = [f for f in schema["fields"] if f["name"] == field_name]
    return list(found["type"]["symbols"])


def _encode(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()
