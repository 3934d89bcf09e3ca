"""Prediction records and keys from events and model outputs."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from worker.pipeline.output import (
    Computed,
    Constant,
    FromEvent,
    FromModel,
    KeySpec,
    OutputBuilder,
    ScoredBatch,
    ScoreSpec,
    Source,
    select,
)
from worker.records import InputMessage

EVENTS: list[dict[str, Any]] = [{"id": 5, "user": {"id": 2**40, "name": "Ann"}}, {"id": -3, "user": None}]


def builder(key: KeySpec, **fields: Source) -> OutputBuilder:
    return OutputBuilder(dict(fields), ScoreSpec("probabilities", 1, 0.5), key)


def test_records_from_every_kind_of_source() -> None:
    b = builder(KeySpec("id"), id=FromEvent("id"), name=FromEvent("user.name"), score=Computed("score"),
                flag=Computed("label"), flag_int=Computed("label", as_int=True), logit=FromModel("logit", 0),
                flat=FromModel("flat"), model=Computed("model_name"), version=Computed("model_version"),
                at=Computed("scored_at"), source=Constant("test"))
    scored = ScoredBatch({"probabilities": np.array([[0.3, 0.7], [0.9, 0.1]], dtype=np.float32),
                          "logit": np.array([[1.5], [-2.0]], dtype=np.float32), "flat": np.array([10, 20])},
                         "m", "3", 1_700_000_000_000)

    records = b.records(EVENTS, scored)

    assert records[0] == {"id": 5, "name": "Ann", "score": float(np.float32(0.7)), "flag": True, "flag_int": 1,
                          "logit": 1.5, "flat": 10, "model": "m", "version": "3", "at": 1_700_000_000_000,
                          "source": "test"}
    assert records[1]["name"] is None
    assert (records[1]["flag"], records[1]["flag_int"], records[1]["flat"]) == (False, 0, 20)
    assert b.model_outputs() == ["probabilities", "logit", "flat"]


def test_zipmap_outputs_are_read_by_class() -> None:
    zipmap = [{0: 0.25, 1: 0.75}, {0: 0.5, 1: 0.5}]

    assert select(zipmap, 1).tolist() == [0.75, 0.5]
    assert select(np.array([[0.1], [0.2]]), None).tolist() == [0.1, 0.2]
    assert select(np.array([0.3, 0.4]), 1).tolist() == [0.3, 0.4]


def test_keys_as_text_int64_or_the_input_key() -> None:
    sources = [InputMessage(b"v", b"in-0"), InputMessage(b"v", None)]

    assert builder(KeySpec("id")).keys(EVENTS, sources) == [b"5", b"-3"]
    assert builder(KeySpec("user.id", "int64")).keys(EVENTS, sources) == [struct.pack(">q", 2**40), None]
    assert builder(KeySpec("user.name")).keys(EVENTS, sources) == [b"Ann", None]
    assert builder(KeySpec(None)).keys(EVENTS, sources) == [b"in-0", None]
