"""The fraud example's parts agree: model file, model card, data generator and config; both
example cards carry well-formed drift references (bins)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from worker.config.compile import compile_settings
from worker.config.settings import load_settings
from worker.pipeline.assembly import ConstColumn, EventColumn, FeatureColumn
from worker.quality.bins import Bins

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "models" / "fraud" / "1"
ETA_CARD = REPO / "models" / "eta" / "1" / "model-card.json"
CONFIG = REPO / "deploy" / "config" / "fraud-example.yaml"


def load_data_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fraud_example_data", REPO / "models" / "fraud" / "data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


data = load_data_module()


def load_train_module() -> ModuleType:
    """``models/fraud/train.py`` (it puts its directory on sys.path to import ``data``; undone here)."""
    spec = importlib.util.spec_from_file_location("fraud_example_train", REPO / "models" / "fraud" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    path, previous = list(sys.path), sys.modules.get("data")
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        if previous is None:
            sys.modules.pop("data", None)
        else:
            sys.modules["data"] = previous
    return module


@pytest.fixture(scope="module")
def card() -> dict[str, Any]:
    return dict(json.loads((MODEL_DIR / "model-card.json").read_text()))


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"])


def column_names(column: Any) -> str:
    if isinstance(column, EventColumn):
        return column.path
    if isinstance(column, FeatureColumn):
        return f"{column.entity}.{column.field}"
    assert isinstance(column, ConstColumn)
    return f"const {column.value}"


def test_the_model_reproduces_its_golden_vectors(card: dict[str, Any], session: ort.InferenceSession) -> None:
    golden = card["golden"]
    assert len(golden) == 20 and any(g["fraud"] for g in golden)
    x = np.array([g["input"] for g in golden], dtype=np.float32)
    probabilities = session.run([card["output"]["name"]], {card["input"]["name"]: x})[0]
    np.testing.assert_allclose(probabilities, [g["probabilities"] for g in golden], rtol=0, atol=1e-6)


def test_the_model_signature_is_what_the_card_says(card: dict[str, Any], session: ort.InferenceSession) -> None:
    (features,) = session.get_inputs()
    assert (features.name, features.type, features.shape[1]) == ("features", "tensor(float)", 17)
    outputs = {o.name: o for o in session.get_outputs()}
    assert outputs["probabilities"].type == "tensor(float)" and outputs["probabilities"].shape[1] == 2
    assert card["feature_order"] == data.FEATURE_ORDER and card["input"]["shape"] == [None, 17]


def test_the_config_feeds_the_cards_feature_order_defaults_and_threshold(card: dict[str, Any]) -> None:
    settings = load_settings(CONFIG)
    compiled = compile_settings(settings)
    (tensor,) = compiled.tensors
    assert [column_names(c) for c in tensor.columns] == card["feature_order"]
    defaults = {f"{c.entity}.{c.field}": c.default for c in tensor.columns if isinstance(c, FeatureColumn)}
    for entity in ("card", "merchant", "device"):
        for name, value in card["defaults"][entity].items():
            assert defaults[f"{entity}.{name}"] == value, f"{entity}.{name}"
    events = {c.path: c for c in tensor.columns if isinstance(c, EventColumn)}
    assert events["distance_from_home_km"].default == card["defaults"]["distance_from_home_km"]
    assert dict(events["channel"].mapping or {}) == card["defaults"]["channel"]
    assert settings.model.threshold == card["threshold"]
    assert (compiled.model.name, compiled.model.version) == (card["name"], card["version"])


def test_unknown_entities_take_the_defaults() -> None:
    world = data.make_world(seed=3, n_cards=50, n_merchants=5, n_farms=2)
    record = {"amount": 12.5, "channel": "POS", "card": {"id": "c-unknown", "present": True},
              "merchant": {"id": "m-unknown", "category": 5411, "country": "DE"}, "device": None,
              "distance_from_home_km": None}
    row = data.feature_vector(record, world)
    assert row[:5] == [12.5, 1.0, 0.0, 5411.0, data.DISTANCE_DEFAULT]
    assert row[5:] == [float(v) for v in [*data.CARD_DEFAULTS.values(), *data.MERCHANT_DEFAULTS.values(),
                                          *data.DEVICE_DEFAULTS.values()]]


def test_the_generator_is_deterministic_apart_from_event_time() -> None:
    def stream(seed: int) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "event_time"} for r in data.events(200, seed)]

    assert stream(5) == stream(5)
    assert stream(5) != stream(6)
    hashes = list(data.features())
    assert hashes == list(data.features())
    assert {h["key"].split(":")[1] for h in hashes} == {"card", "merchant", "device"}


def test_the_generated_events_carry_fraud_and_every_shape_of_record() -> None:
    world = data.make_world()
    pairs = list(data.transactions(world, 3000, seed=2))
    records = [r for r, _ in pairs]
    assert 0.005 < np.mean([fraud for _, fraud in pairs]) < 0.05
    assert {r["channel"] for r in records} == set(data.CHANNELS)
    assert any(r["device"] is None for r in records) and any(r["device"] for r in records)
    assert any(r["distance_from_home_km"] is None for r in records)
    assert any(r["card"]["id"] not in world.cards for r in records)  # new cards: defaults
    assert any(r["device"] and r["device"]["id"] not in world.devices for r in records)  # unseen devices


def test_reference_statistics_cover_every_feature(card: dict[str, Any]) -> None:
    stats = card["reference_stats"]
    assert list(stats) == card["feature_order"]
    for name, s in stats.items():
        q = list(s["quantiles"].values())
        assert s["min"] <= q[0] <= q[-1] <= s["max"], name
        assert q == sorted(q), name


@pytest.mark.parametrize("path", [MODEL_DIR / "model-card.json", ETA_CARD], ids=["fraud", "eta"])
def test_every_feature_and_the_score_have_well_formed_bins(path: Path) -> None:
    card = json.loads(path.read_text())
    for name in card.get("feature_order", []):
        bins = Bins.parse(card["reference_stats"][name].get("bins"), f"reference_stats.{name}.bins")
        assert float(bins.shares.sum()) == pytest.approx(1.0, abs=1e-9), name
        assert bins.size >= 2, name
    if "feature_order" in card or "score_stats" in card:
        score = Bins.parse(card["score_stats"].get("bins"), "score_stats.bins")
        assert float(score.shares.sum()) == pytest.approx(1.0, abs=1e-9)


def test_the_eta_card_has_no_per_feature_reference_to_carry() -> None:
    """Several named inputs, one of them strings, and no feature_order: no per-feature bins
    (README); if the card gains a feature_order, the test above wants bins for it."""
    card = json.loads(ETA_CARD.read_text())
    assert "feature_order" not in card and len(card["inputs"]) > 1
    assert any(i["dtype"] == "string" for i in card["inputs"])


@pytest.fixture(scope="module")
def training_sample(card: dict[str, Any]) -> tuple[np.ndarray, int]:
    """The rows train.py trained and held out on, regenerated from the card's seed (~1 s), and the cut."""
    train = load_train_module()
    x, _ = train.labelled(card["training"]["rows"], card["training"]["seed"])
    return x, len(x) - card["training"]["holdout_rows"]


def test_the_feature_bins_are_the_training_rows_deciles(card: dict[str, Any],
                                                        training_sample: tuple[np.ndarray, int]) -> None:
    x, _ = training_sample
    assert x.shape == (card["training"]["rows"], len(card["feature_order"]))
    for j, name in enumerate(card["feature_order"]):
        expected = Bins.of_values(x[:, j])
        recorded = Bins.parse(card["reference_stats"][name]["bins"], name)
        np.testing.assert_allclose(recorded.edges, expected.edges, rtol=1e-12, atol=0, err_msg=name)
        np.testing.assert_allclose(recorded.shares, expected.shares, rtol=0, atol=1e-9, err_msg=name)


def test_the_score_bins_are_the_holdout_scores_deciles(card: dict[str, Any], session: ort.InferenceSession,
                                                       training_sample: tuple[np.ndarray, int]) -> None:
    x, cut = training_sample
    probabilities = session.run([card["output"]["name"]], {card["input"]["name"]: x[cut:]})[0]
    scores = probabilities[:, card["output"]["score_column"]]
    expected, stats = Bins.of_values(scores), card["score_stats"]
    recorded = Bins.parse(stats["bins"], "score_stats.bins")
    # ONNX Runtime may differ in the last float32 bits between machines (the golden vectors allow 1e-6):
    # an edge can move that much and a handful of the 16,000 holdout rows change bins.
    np.testing.assert_allclose(recorded.edges, expected.edges, rtol=0, atol=1e-6)
    np.testing.assert_allclose(recorded.shares, expected.shares, rtol=0, atol=1e-3)
    assert stats["mean"] == pytest.approx(float(scores.mean()), abs=1e-5)
    assert stats["std"] == pytest.approx(float(scores.std()), abs=1e-5)
