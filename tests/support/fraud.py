"""The shared fraud workload (``../shared/workload/fraud``) driven from tests through its own gen.py."""

from __future__ import annotations

import argparse
import datetime
import importlib
import io
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import fastavro

from tests.support.configs import fraud_workload_dir
from tests.support.kafka_io import ToSend


def load_gen() -> ModuleType:
    """The workload's gen.py (it imports its sibling population.py as a top-level module)."""
    directory = str(fraud_workload_dir())
    sys.path.insert(0, directory)
    try:
        return importlib.import_module("gen")
    finally:
        sys.path.remove(directory)


def population(n: int, seed: int = 5) -> argparse.Namespace:
    """gen.py's arguments for a small population (features and events must agree on them)."""
    return argparse.Namespace(cards=2000, merchants=200, missing_cards=0.02, seed=seed, n=n, rate=0, poison=0)


@dataclass
class FraudEvents:
    """Messages to produce, in order; the record each carries (None for poison)."""

    messages: list[ToSend] = field(default_factory=list)
    records: list[dict[str, Any] | None] = field(default_factory=list)

    @property
    def poison(self) -> list[int]:
        return [i for i, r in enumerate(self.records) if r is None]

    @property
    def good(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r is not None]

    def add(self, message: ToSend, record: dict[str, Any] | None) -> None:
        self.messages.append(message)
        self.records.append(record)


def decodes(gen: ModuleType, value: bytes) -> bool:
    """Whether ``value`` is exactly one Transaction record (checked independently of the worker)."""
    buf = io.BytesIO(value)
    try:
        fastavro.schemaless_reader(buf, gen.TXN)
    except Exception:  # fastavro raises EOFError, UnicodeDecodeError, IndexError, ...
        return False
    return buf.tell() == len(value)


def poisoned(gen: ModuleType, value: bytes, rng: random.Random) -> bytes:
    """Half the value, or random bytes of its length, never valid Avro (drawn again if they happen to be)."""
    return truncated(value) if rng.random() < 0.5 else random_poison(gen, value, rng)


def truncated(value: bytes) -> bytes:
    """gen.py's first kind of poison: the first half of a value."""
    return value[: len(value) // 2]


def random_poison(gen: ModuleType, value: bytes, rng: random.Random) -> bytes:
    """gen.py's second kind: random bytes of the value's length (never valid Avro by chance)."""
    while True:
        garbage = rng.randbytes(len(value))
        if not decodes(gen, garbage):
            return garbage


def avro_container(path: Path, schema: dict[str, Any], blocks: list[list[bytes]]) -> None:
    """An Avro container file of ``schema`` whose blocks hold the given encoded values as they are
    (fastavro's writer encodes records, so it cannot put poison in a block)."""
    sync = os.urandom(16)
    with path.open("wb") as f:
        fastavro.writer(f, schema, [], sync_marker=sync)  # the header alone
        for values in blocks:
            data = b"".join(values)
            f.write(zigzag(len(values)) + zigzag(len(data)) + data + sync)


def zigzag(n: int) -> bytes:
    """An Avro long: zigzag, then base-128 varint."""
    z, out = (n << 1) ^ (n >> 63), bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def fraud_events(gen: ModuleType, args: argparse.Namespace, poison_every: int = 0) -> FraudEvents:
    """``args.n`` events from gen.py's stream; every ``poison_every``-th is replaced by poison."""
    rng = random.Random(args.seed)
    out = FraudEvents()
    for i, (key, value, record) in enumerate(gen.event_stream(args)):
        if poison_every and i % poison_every == poison_every // 2:
            out.add(ToSend(key, poisoned(gen, value, rng), [("origin", b"test-%d" % i)]), None)
        else:
            out.add(ToSend(key, value), record)
    return out


def workload(gen: ModuleType, redis_url: str, n: int, seed: int,
             poison_every: int = 0) -> tuple[argparse.Namespace, FraudEvents]:
    """Loads the population's features into Redis and makes ``n`` events (with poison)."""
    args = population(n=n, seed=seed)
    gen.cmd_features(argparse.Namespace(**{**vars(args), "redis": redis_url}))
    return args, fraud_events(gen, args, poison_every)


def default_feature_scores(gen: ModuleType, records: list[dict[str, Any]]) -> list[float]:
    """The scores of ``records`` with every card and merchant feature at its default (Redis down)."""
    import numpy as np
    import onnxruntime as ort

    rows = np.asarray([gen.feature_row(r, None, None) for r in records], dtype=np.float32)
    session = ort.InferenceSession(str(gen.HERE / "model.onnx"), providers=["CPUExecutionProvider"])
    return [float(s) for s in session.run(["probabilities"], {"features": rows})[0][:, 1]]


def decode_prediction(gen: ModuleType, value: bytes | None) -> dict[str, Any]:
    buf = io.BytesIO(value or b"")
    record = dict(fastavro.schemaless_reader(buf, gen.PRED))  # type: ignore[arg-type]
    assert buf.tell() == len(value or b""), "bytes left over after a Prediction"
    if isinstance(record["scored_at"], datetime.datetime):  # gen.py parses the logical type
        record["scored_at"] = (record["scored_at"] - EPOCH) // datetime.timedelta(milliseconds=1)
    return record


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
