"""Reason codes: which events are explained, how contributions become reasons, occlusion's
arithmetic, failures that never fail a prediction, and the example model's extreme feature named
first by both methods."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from tests.unit.test_example_model import CONFIG, MODEL_DIR, REPO, data
from tests.unit.test_model_router import pipeline_with, versioned
from tests.unit.test_pipeline import payment
from worker.app.components import make_pipeline
from worker.config.compile import compile_settings
from worker.config.settings import load_settings
from worker.explain.explainer import Explainer
from worker.explain.occlusion import Occlusion
from worker.features.store import InMemoryFeatureStore
from worker.inference import FunctionModel, Model, TensorInfo
from worker.pipeline.pipeline import Pipeline
from worker.records import InputMessage
from worker.serving import Serving

NAMES = ["a", "b", "c", "d"]
PREDICTION_SCHEMA = REPO / "schemas" / "fraud" / "prediction.avsc"


class Fixed:
    """A method returning given contributions (or failing)."""

    def __init__(self, contributions: np.ndarray | None) -> None:
        self.given = contributions
        self.calls: list[tuple[str, int]] = []

    def contributions(self, model: Model, feeds: dict[str, np.ndarray], scores: np.ndarray) -> np.ndarray:
        self.calls.append((model.version, len(scores)))
        if self.given is None:
            raise RuntimeError("explainer broke")
        return self.given[: len(scores)]


def test_reasons_are_the_top_positive_contributions_largest_first() -> None:
    explainer = Explainer(NAMES, Fixed(None), "all", 3, 0.5)
    described = explainer.describe(np.array([[0.1, -0.5, 0.3, 0.2], [-0.1, -0.2, 0.0, 0.05]]))
    assert [why for why, _ in described] == [["c", "d", "a"], ["d"]]
    assert described[0][1] == {"a": 0.1, "b": -0.5, "c": 0.3, "d": 0.2}


def test_flagged_means_published_and_over_the_threshold() -> None:
    scores, published = np.array([0.2, 0.7, 0.9, 0.5]), np.array([True, True, False, True])
    assert Explainer(NAMES, Fixed(None), "flagged", 3, 0.5).rows(scores, published).tolist() == [1, 3]
    assert Explainer(NAMES, Fixed(None), "all", 3, 0.5).rows(scores, published).tolist() == [0, 1, 3]
    assert not len(Explainer(NAMES, Fixed(None), "never", 3, 0.5).rows(scores, published))


def test_occlusion_is_the_score_minus_the_score_with_one_feature_neutralised() -> None:
    weights = np.array([1.0, -2.0, 0.5])

    def fn(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"score": feeds["x"].astype(np.float64) @ weights}

    model = FunctionModel(fn, [TensorInfo("x", "float32", (None, 3))], [TensorInfo("score", "float64", (None,))])
    occlusion = Occlusion([("x", 0), ("x", 1), ("x", 2)], np.array([1.0, 1.0, 1.0]),
                          lambda m, feeds: np.asarray(m.run(feeds, ["score"])[0]))
    x = np.array([[3.0, 0.0, 2.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    got = occlusion.contributions(model, {"x": x}, fn({"x": x})["score"])
    np.testing.assert_allclose(got, (x - 1.0) * weights)
    assert model.calls == 1, "one model call for every event and feature"


def explaining(pipeline: Pipeline, method: Fixed, when: str = "all") -> Pipeline:
    pipeline.explainer = Explainer(["amount", "card.count"], method, when, 2, 0.5)  # type: ignore[arg-type]
    return pipeline


def test_a_failing_explainer_publishes_every_prediction_without_reasons() -> None:
    pipeline = explaining(pipeline_with(Serving(versioned("1", 1.0))), Fixed(None))
    result = pipeline.process([payment(i) for i in range(20)])
    assert len(result.outputs) == 20 and not result.dead_letters
    assert result.explain_failures == 20 and result.explained == 0


def test_the_canary_explains_its_own_rows() -> None:
    method = Fixed(np.tile([0.3, 0.1], (200, 1)))
    pipeline = explaining(pipeline_with(Serving(versioned("1", 1.0), versioned("2", 0.5), 0.5)), method)
    result = pipeline.process([payment(i, card=f"k{i}") for i in range(200)])
    assert sorted(v for v, _ in method.calls) == ["1", "2"] and sum(n for _, n in method.calls) == 200
    assert result.explained == 200


def example_pipeline(method: str) -> tuple[Pipeline, Any]:
    return example_with({"explain": {"when": "all", "method": method}})


def example_with(overrides: dict[str, Any]) -> tuple[Pipeline, Any]:
    """The example's pipeline (its model, card and features) with ``overrides`` on its settings."""
    settings = load_settings(CONFIG, overrides)
    compiled = compile_settings(settings)
    store = InMemoryFeatureStore({h["key"]: {k: str(v) for k, v in h["fields"].items()} for h in data.features()})
    return make_pipeline(settings, compiled, store), compiled


def encoded(compiled: Any, record: dict[str, Any]) -> InputMessage:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, compiled.input_schema, record)
    return InputMessage(buf.getvalue(), record["card"]["id"].encode())


def decoded(compiled: Any, value: bytes | None) -> dict[str, Any]:
    record = fastavro.schemaless_reader(io.BytesIO(value or b""), compiled.output_schema)  # type: ignore[call-overload]
    assert isinstance(record, dict)
    return record


def outsized(n: int) -> list[dict[str, Any]]:
    """``n`` ordinary card-present payments, each with an amount 50 times its card's 30-day average."""
    world = data.make_world()
    ordinary = [r for r in data.events(400, seed=3) if r["card"]["present"] and r["amount"] < 100][:n]
    extreme = []
    for record in ordinary:
        changed = copy.deepcopy(record)
        average = world.cards.get(record["card"]["id"], {}).get("amount_avg_30d", 0.0)
        changed["amount"] = 50 * max(average, 10.0)
        extreme.append(changed)
    return extreme


@pytest.mark.parametrize("method", ["occlusion", "tree_shap"])
def test_an_amount_fifty_times_the_cards_average_is_the_first_reason(method: str) -> None:
    pipeline, compiled = example_pipeline(method)
    result = pipeline.process([encoded(compiled, r) for r in outsized(20)])
    first = [decoded(compiled, o.value)["reasons"][:1] for o in result.outputs]
    assert first == [["amount"]] * 20, first


def test_a_method_returning_the_wrong_number_of_rows_publishes_every_prediction_without_reasons() -> None:
    pipeline, compiled = example_pipeline("occlusion")
    assert pipeline.explainer is not None
    pipeline.explainer.method = Fixed(np.ones((1, len(pipeline.explainer.names))))  # one row for twenty events
    result = pipeline.process([encoded(compiled, r) for r in data.events(20, seed=4)])
    assert [decoded(compiled, o.value)["reasons"] for o in result.outputs] == [[]] * 20
    assert not result.dead_letters
    assert result.explain_failures == 20 and result.explained == 0


def test_with_the_examples_settings_exactly_the_flagged_payments_carry_reasons() -> None:
    pipeline, compiled = example_with({})
    assert pipeline.explainer is not None and pipeline.explainer.when == "flagged"
    result = pipeline.process([encoded(compiled, r) for r in data.events(2000, seed=5)])
    outputs = [decoded(compiled, o.value) for o in result.outputs]
    assert len(outputs) == 2000 and sum(o["is_fraud"] for o in outputs) >= 10, "too few flagged to tell"
    assert [o["event_id"] for o in outputs if bool(o["reasons"]) != o["is_fraud"]] == []
    assert result.explained == sum(o["is_fraud"] for o in outputs)


def test_contributions_decode_from_an_output_as_every_card_feature_with_the_outsized_amount_largest(
        tmp_path: Path) -> None:
    schema = json.loads(PREDICTION_SCHEMA.read_text())
    schema["fields"].append({"name": "contributions", "type": {"type": "map", "values": "double"}, "default": {}})
    (tmp_path / "prediction.avsc").write_text(json.dumps(schema))
    pipeline, compiled = example_with({"avro": {"output_schema": str(tmp_path / "prediction.avsc")},
                                       "output": {"fields": {"contributions": "$contributions"}},
                                       "explain": {"when": "all"}})
    result = pipeline.process([encoded(compiled, r) for r in outsized(5)])
    card = json.loads((MODEL_DIR / "model-card.json").read_text())
    for output in result.outputs:
        contributions = decoded(compiled, output.value)["contributions"]
        assert list(contributions) == card["feature_order"]
        assert max(contributions, key=contributions.__getitem__) == "amount", contributions
