"""Reason codes: which events are explained, how contributions become reasons, occlusion's
arithmetic, failures that never fail a prediction, and the example model's extreme feature named
first by both methods."""

from __future__ import annotations

import copy
import io
from typing import Any

import fastavro
import numpy as np
import pytest

from tests.unit.test_example_model import CONFIG, data
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
    settings = load_settings(CONFIG, {"explain": {"when": "all", "method": method}})
    compiled = compile_settings(settings)
    store = InMemoryFeatureStore({h["key"]: {k: str(v) for k, v in h["fields"].items()} for h in data.features()})
    return make_pipeline(settings, compiled, store), compiled


def encoded(compiled: Any, record: dict[str, Any]) -> InputMessage:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, compiled.input_schema, record)
    return InputMessage(buf.getvalue(), record["card"]["id"].encode())


@pytest.mark.parametrize("method", ["occlusion", "tree_shap"])
def test_an_amount_fifty_times_the_cards_average_is_the_first_reason(method: str) -> None:
    pipeline, compiled = example_pipeline(method)
    world = data.make_world()
    ordinary = [r for r in data.events(400, seed=3) if r["card"]["present"] and r["amount"] < 100][:20]
    extreme = []
    for record in ordinary:
        changed = copy.deepcopy(record)
        average = world.cards.get(record["card"]["id"], {}).get("amount_avg_30d", 0.0)
        changed["amount"] = 50 * max(average, 10.0)
        extreme.append(changed)
    result = pipeline.process([encoded(compiled, r) for r in extreme])
    reasons = [fastavro.schemaless_reader(io.BytesIO(o.value), compiled.output_schema)["reasons"]  # type: ignore[call-overload]
               for o in result.outputs]
    assert len(reasons) == 20
    first = [r[0] if r else None for r in reasons]
    assert first.count("amount") >= 19, first
