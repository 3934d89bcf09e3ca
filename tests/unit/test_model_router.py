"""Routing inside a batch: the canary's share of keys by a stable hash, the shadow on every
event, and one snapshot of the serving models per batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.unit.test_pipeline import POISON_AMOUNT, STORE, decoded, make_pipeline, payment, scores
from worker.features.store import InMemoryFeatureStore
from worker.inference import FunctionModel, TensorInfo
from worker.pipeline.pipeline import Pipeline
from worker.serving import Serving, canary_mask, key_point

KEYS = [f"card-{i}".encode() for i in range(10_000)]


def versioned(version: str, scale: float, fails: Callable[[np.ndarray], bool] = lambda x: False,
              on_run: Callable[[], object] = lambda: None) -> FunctionModel:
    """The test pipeline's model with its P(class 1) scaled by ``scale``: versions are told apart by score."""
    def fn(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        on_run()
        x = feeds["x"]
        if np.any(x[:, 0] == POISON_AMOUNT) or fails(x):
            raise RuntimeError("cannot score")
        p = (scores(x.astype(np.float64)) * scale).astype(np.float32)
        return {"probabilities": np.stack([1 - p, p], axis=1), "raw": x[:, :1] * 2}

    return FunctionModel(fn, [TensorInfo("x", "float32", (None, 2))],
                         [TensorInfo("probabilities", "float32", (None, 2)), TensorInfo("raw", "float32", (None, 1))],
                         name="twin", version=version)


SCALES = {"1": 1.0, "2": 0.5, "3": 0.25}


def expected_score(prediction: dict[str, Any], amount: float, count: float) -> float:
    p = scores(np.array([[amount, count]], dtype=np.float32).astype(np.float64))[0] * SCALES[prediction["version"]]
    return float(np.float32(p))


def pipeline_with(serving: Serving) -> Pipeline:
    pipeline = make_pipeline(InMemoryFeatureStore(STORE))
    pipeline.slot.set(serving)
    return pipeline


def test_the_canary_takes_its_share_of_keys_and_a_key_always_goes_the_same_way() -> None:
    chosen = canary_mask(KEYS, 0.10)

    assert 0.08 <= chosen.mean() <= 0.12
    assert np.array_equal(chosen, canary_mask(KEYS, 0.10))
    assert np.array_equal(chosen[::-1], canary_mask(KEYS[::-1], 0.10))  # per key, not per position
    assert not np.any(chosen & ~canary_mask(KEYS, 0.20)), "raising the share moved keys off the canary"
    assert not canary_mask([None, None], 1.0).any(), "keyless events stay on the active model"
    assert canary_mask(KEYS[:100], 1.0).all()


def test_the_split_does_not_depend_on_the_process() -> None:
    # BLAKE2b-64 with a fixed personalisation: pinned, so every replica and every release agree.
    assert key_point(b"card-1") == 0xD1CBE58FEA59A2C4
    assert key_point(b"") == 0x3A38F2C05CF45C5B


def test_canary_rows_are_scored_by_the_candidate_and_record_its_version() -> None:
    pipeline = pipeline_with(Serving(versioned("1", 1.0), versioned("2", 0.5), 0.5))
    messages = [payment(i, card=f"k{i}") for i in range(200)]

    result = pipeline.process(messages)

    predictions = [decoded(o.value) for o in result.outputs]
    assert len(predictions) == 200 and not result.dead_letters
    mask = canary_mask([f"k{i}".encode() for i in range(200)], 0.5)
    assert [p["version"] for p in predictions] == ["2" if m else "1" for m in mask]
    for i, p in enumerate(predictions):
        count = float(STORE.get(f"card:k{i}", {}).get("count", 0))
        assert p["score"] == pytest.approx(expected_score(p, float(i), count), abs=1e-6)
    runs = {(r.role, r.version): r.events for r in result.runs}
    assert runs == {("active", "1"): int((~mask).sum()), ("canary", "2"): int(mask.sum())}


def test_events_the_canary_fails_on_are_scored_by_the_active_model_and_counted() -> None:
    failing = versioned("2", 0.5, fails=lambda x: bool(np.any(x[:, 0] == 7.0)))
    pipeline = pipeline_with(Serving(versioned("1", 1.0), failing, 1.0))

    result = pipeline.process([payment(i) for i in range(10)])

    versions = [decoded(o.value)["version"] for o in result.outputs]
    assert versions == ["2"] * 7 + ["1"] + ["2"] * 2
    assert not result.dead_letters
    canary_run = next(r for r in result.runs if r.role == "canary")
    assert (canary_run.events, canary_run.errors) == (10, 1)


def test_the_shadow_scores_every_published_event_into_its_own_outputs() -> None:
    pipeline = pipeline_with(Serving(versioned("1", 1.0), shadow=versioned("3", 0.25)))
    messages = [payment(i) for i in range(20)] + [payment(99, amount=POISON_AMOUNT)]

    result = pipeline.process(messages)

    main = [decoded(o.value) for o in result.outputs]
    shadow = [decoded(o.value) for o in result.shadow_outputs]
    assert len(main) == len(shadow) == 20 and len(result.dead_letters) == 1
    assert {p["version"] for p in main} == {"1"} and {p["version"] for p in shadow} == {"3"}
    assert [o.key for o in result.shadow_outputs] == [o.key for o in result.outputs]
    for m, s in zip(main, shadow, strict=True):
        assert m["event_id"] == s["event_id"]
        assert s["score"] == pytest.approx(m["score"] * 0.25, rel=1e-5)
    assert result.shadow is not None
    assert result.shadow.compared == 20 and result.shadow.version == "3"
    assert result.shadow.abs_diff_sum == pytest.approx(sum(m["score"] * 0.75 for m in main), rel=1e-4)
    assert result.shadow.label_agreements == sum((m["score"] >= 0.5) == (s["score"] >= 0.5)
                                                 for m, s in zip(main, shadow, strict=True))


def test_a_swap_during_a_batch_applies_from_the_next_batch() -> None:
    pipeline = make_pipeline(InMemoryFeatureStore(STORE))
    replacement = Serving(versioned("3", 0.25))
    swapping = versioned("1", 1.0, on_run=lambda: pipeline.slot.set(replacement))
    pipeline.slot.set(Serving(swapping, versioned("2", 0.5), 0.5, versioned("2", 0.5)))

    first = pipeline.process([payment(i, card=f"k{i}") for i in range(50)])
    second = pipeline.process([payment(i, card=f"k{i}") for i in range(50)])

    assert {decoded(o.value)["version"] for o in first.outputs} == {"1", "2"}
    assert len(first.shadow_outputs) == 50, "the shadow of the batch's snapshot still ran"
    assert {decoded(o.value)["version"] for o in second.outputs} == {"3"}
    assert not second.shadow_outputs


def test_only_the_active_model_runs_without_canary_or_shadow() -> None:
    pipeline = pipeline_with(Serving(versioned("1", 1.0)))

    result = pipeline.process([payment(i) for i in range(5)])

    assert [(r.role, r.version, r.events, r.errors) for r in result.runs] == [("active", "1", 5, 0)]
    assert result.shadow is None and not result.shadow_outputs
