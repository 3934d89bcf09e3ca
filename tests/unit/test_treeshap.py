"""Exact interventional TreeSHAP read from ONNX tree ensembles (``worker.explain.treeshap``): the raw
output is ONNX Runtime's, the values are the brute-force Shapley values and shap's, they add up to
the raw output minus the expected one, and models it cannot read are refused with the reason."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from math import factorial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support.configs import fraud_workload_dir
from tests.support.fraud import population
from tests.support.onnx_models import linear_classifier
from worker.explain import treeshap
from worker.explain.treeshap import TreeShap, TreeShapError

REPO = Path(__file__).resolve().parents[2]
FRAUD = REPO / "models" / "fraud"
OPSET = {"": 17, "ai.onnx.ml": 3}


def export(model: Any, width: int) -> onnx.ModelProto:
    """skl2onnx's ONNX for a fitted scikit-learn model, as models/fraud/train.py exports."""
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(model): {"zipmap": False}} if hasattr(model, "classes_") else None
    proto: onnx.ModelProto = skl2onnx.to_onnx(model, initial_types=[("features", FloatTensorType([None, width]))],
                                              options=options, target_opset=OPSET)
    return proto


def run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's last output (probabilities, or a regressor's ``variable``)."""
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    last: np.ndarray = np.asarray(outputs[-1])
    return last


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def brute_force(f: Any, x: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Shapley values of v(S) = mean over background rows r of f(x_S, r_notS), every coalition enumerated."""
    width = x.shape[1]
    codes = np.arange(1 << width)
    masks = ((codes[:, None] >> np.arange(width)) & 1).astype(bool)  # [2^F, F]: bit j = feature j from x
    sizes = masks.sum(axis=1)
    weight = np.array([factorial(s) * factorial(width - s - 1) / factorial(width) for s in range(width)])
    out = np.zeros(x.shape, dtype=np.float64)
    for i, row in enumerate(x):
        hybrids = np.where(masks[:, None, :], row[None, None, :], background[None, :, :])  # [2^F, m, F]
        v = f(hybrids.reshape(-1, width).astype(np.float32)).reshape(len(codes), -1).mean(axis=1)
        for j in range(width):
            without = codes[~masks[:, j]]
            out[i, j] = np.sum(weight[sizes[without]] * (v[without | (1 << j)] - v[without]))
    return out


def small_data(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Four features, two of them few-valued, so trees test a feature twice on a path and tie on values."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(size=n), rng.integers(0, 5, n), rng.normal(size=n), rng.integers(0, 2, n)])
    logit = x[:, 0] + 0.8 * (x[:, 1] - 2) - x[:, 2] * x[:, 3] + rng.normal(scale=0.5, size=n)
    return x.astype(np.float32), (logit > 0).astype(np.int64)


@pytest.fixture(scope="module")
def small_gbc() -> tuple[Any, onnx.ModelProto, np.ndarray]:
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = small_data()
    model = GradientBoostingClassifier(n_estimators=3, max_depth=3, random_state=0).fit(x, y)
    return model, export(model, 4), x


# The raw output


def test_a_binary_gradient_boosting_classifier_is_one_score_and_its_logistic(
        small_gbc: tuple[Any, onnx.ModelProto, np.ndarray]) -> None:
    """skl2onnx writes every weight for class 0, base_values = [prior log-odds] and LOGISTIC; ONNX
    Runtime's probabilities are [sigmoid(-s), sigmoid(s)] of the score s, the decision function."""
    model, proto, x = small_gbc
    (ensemble,) = [n for n in proto.graph.node if n.op_type == "TreeEnsembleClassifier"]
    attrs = {a.name: helper.get_attribute_value(a) for a in ensemble.attribute}
    assert set(attrs["class_ids"]) == {0} and attrs["post_transform"] == b"LOGISTIC"
    prior = small_data()[1].mean()
    assert attrs["base_values"] == pytest.approx([np.log(prior / (1 - prior))], abs=1e-6)
    probabilities = run(proto, x)
    positive, negative = TreeShap.from_onnx(proto, 1, x[:5]), TreeShap.from_onnx(proto, 0, x[:5])
    np.testing.assert_allclose(sigmoid(positive.margin(x)), probabilities[:, 1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(sigmoid(negative.margin(x)), probabilities[:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(positive.margin(x), model.decision_function(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["forest", "multiclass", "regressor"])
def test_other_encodings_give_onnx_runtimes_outputs(name: str) -> None:
    """A binary random forest (class 0 weights, all positive, NONE: [1 - s, s]), a softmax
    multiclass booster (one raw score per class) and a regressor (with base_values)."""
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, RandomForestClassifier

    x, y = small_data(seed=1)
    if name == "forest":
        model: Any = RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0).fit(x, y)
    elif name == "multiclass":
        classes = np.digitize(x[:, 0], [-0.5, 0.5])
        model = GradientBoostingClassifier(n_estimators=4, max_depth=2, random_state=0).fit(x, classes)
    else:
        model = GradientBoostingRegressor(n_estimators=4, max_depth=3, random_state=0).fit(x, x[:, 0] + x[:, 1])
    proto = export(model, 4)
    expected = run(proto, x).reshape(len(x), -1)
    margins = np.column_stack([TreeShap.from_onnx(proto, c, x[:3]).margin(x) for c in range(expected.shape[1])])
    if name == "multiclass":
        margins = np.exp(margins) / np.exp(margins).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(margins, expected, rtol=0, atol=1e-5)


# Exact Shapley values


@pytest.mark.parametrize("rows", [1, 5])
def test_the_values_are_the_exact_shapley_values(small_gbc: tuple[Any, onnx.ModelProto, np.ndarray], rows: int) -> None:
    _, proto, x = small_gbc
    background, events = x[:rows], x[100:120]
    shap = TreeShap.from_onnx(proto, 1, background)
    slots = (shap.leaves.slot_feature < 4).sum(axis=1)
    conditions = (shap.leaves.bit > 0).sum(axis=0)
    assert np.any(conditions > slots), "no path tests a feature twice: the slots are not exercised"
    values = shap.shap_values(events)
    np.testing.assert_allclose(values, brute_force(shap.margin, events, background), rtol=0, atol=1e-9)
    assert shap.expected == pytest.approx(float(shap.margin(background).mean()), abs=1e-12)
    np.testing.assert_allclose(values.sum(axis=1), shap.margin(events) - shap.expected, rtol=0, atol=1e-9)


def as_regressor(classifier: onnx.ModelProto, changes: dict[str, Any]) -> onnx.ModelProto:
    """The classifier's trees as a TreeEnsembleRegressor (its output: the raw score), attributes changed."""
    (node,) = [n for n in classifier.graph.node if n.op_type == "TreeEnsembleClassifier"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kept = {k: v for k, v in attrs.items() if k.startswith("nodes_") or k == "base_values"}
    kept |= {"target_ids": attrs["class_ids"], "target_nodeids": attrs["class_nodeids"],
             "target_treeids": attrs["class_treeids"], "target_weights": attrs["class_weights"],
             "n_targets": 1, "post_transform": "NONE", **changes}
    return ensemble_model([helper.make_node("TreeEnsembleRegressor", ["features"], ["variable"],
                                            domain="ai.onnx.ml", **kept)])


def ensemble_model(nodes: list[onnx.NodeProto], input_type: int = TensorProto.FLOAT,
                   initializers: tuple[onnx.TensorProto, ...] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "trees", [helper.make_tensor_value_info("features", input_type, [None, 4])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, [None, 1])],
                              list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSET.items()], ir_version=9)


def test_every_node_mode_ties_and_missing_values_follow_onnx_runtime(
        small_gbc: tuple[Any, onnx.ModelProto, np.ndarray]) -> None:
    """The same trees with every mode, thresholds on the (integer) values, NaN inputs and NaN
    tracking the true branch at some nodes: ONNX Runtime's output, and exact Shapley values."""
    _, proto, _ = small_gbc
    (node,) = [n for n in proto.graph.node if n.op_type == "TreeEnsembleClassifier"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rng = np.random.default_rng(3)
    modes = [m if m == b"LEAF" else rng.choice([m.encode() for m in treeshap.MODES]) for m in attrs["nodes_modes"]]
    changes = {"nodes_modes": modes, "nodes_values": np.floor(attrs["nodes_values"]).tolist(),
               "nodes_missing_value_tracks_true": rng.integers(0, 2, len(modes)).tolist()}
    model = as_regressor(proto, changes)
    assert {m.decode() for m in modes} == {*treeshap.MODES, "LEAF"}
    x = rng.integers(-2, 5, (400, 4)).astype(np.float32)
    x[rng.random(x.shape) < 0.15] = np.nan
    shap = TreeShap.from_onnx(model, 0, x[:4])
    np.testing.assert_allclose(shap.margin(x), run(model, x)[:, 0], rtol=0, atol=1e-5)
    events = x[200:215]
    np.testing.assert_allclose(shap.shap_values(events), brute_force(shap.margin, events, x[:4]), rtol=0, atol=1e-9)


def test_a_regressor_and_a_softmax_class_are_explained_exactly() -> None:
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    x, _ = small_data(seed=2)
    regressor = GradientBoostingRegressor(n_estimators=3, max_depth=3, random_state=0).fit(x, x[:, 0] * x[:, 1])
    multiclass = GradientBoostingClassifier(n_estimators=2, max_depth=3, random_state=0).fit(x, x[:, 1].astype(int))
    for proto, column in ((export(regressor, 4), 0), (export(multiclass, 4), 3)):
        shap = TreeShap.from_onnx(proto, column, x[:3])
        events = x[50:60]
        np.testing.assert_allclose(shap.shap_values(events), brute_force(shap.margin, events, x[:3]), rtol=0, atol=1e-9)


# The example models


def load_script(path: Path, name: str, siblings: tuple[str, ...]) -> ModuleType:
    """A script that puts its directory on sys.path to import its siblings; undone here."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved_path, saved = list(sys.path), {s: sys.modules.get(s) for s in siblings}
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved_path
        for sibling, previous in saved.items():
            if previous is None:
                sys.modules.pop(sibling, None)
            else:
                sys.modules[sibling] = previous
    return module


@pytest.fixture(scope="module")
def fraud_model() -> tuple[Any, np.ndarray, np.ndarray]:
    """The example model retrained by models/fraud/train.py (deterministic, ~12 s), its holdout
    rows and the card's background (100 holdout rows)."""
    card = json.loads((FRAUD / "1" / "model-card.json").read_text())
    train = load_script(FRAUD / "train.py", "fraud_example_train_for_treeshap", ("data",))
    x, y = train.labelled(card["training"]["rows"], card["training"]["seed"])
    cut = len(x) - card["training"]["holdout_rows"]
    model = train.fit(x[:cut], y[:cut], card["training"]["seed"])
    background = np.array(card.get("background") or x[cut:cut + 100], dtype=np.float32)
    return model, x[cut:], background


def test_the_retrained_example_model_is_the_onnx_file(fraud_model: tuple[Any, np.ndarray, np.ndarray]) -> None:
    model, holdout, _ = fraud_model
    probabilities = run(FRAUD / "1" / "model.onnx", holdout)
    np.testing.assert_allclose(model.predict_proba(holdout)[:, 1], probabilities[:, 1], rtol=0, atol=1e-6)
    shap = TreeShap.from_onnx(FRAUD / "1" / "model.onnx", 1, holdout[:100])
    np.testing.assert_allclose(sigmoid(shap.margin(holdout)), probabilities[:, 1], rtol=0, atol=1e-5)


def test_the_example_model_matches_shaps_tree_explainer(fraud_model: tuple[Any, np.ndarray, np.ndarray]) -> None:
    shap_package = pytest.importorskip("shap")
    model, holdout, background = fraud_model
    events = holdout[-1000:]
    explainer = shap_package.TreeExplainer(model, data=background, feature_perturbation="interventional",
                                           model_output="raw")
    expected = np.asarray(explainer.shap_values(events))
    ours = TreeShap.from_onnx((FRAUD / "1" / "model.onnx").read_bytes(), 1, background)
    values = ours.shap_values(events)
    assert expected.shape == values.shape == (1000, 17)
    error = float(np.abs(values - expected).max())
    print(f"\nfraud example: max |ours - shap| = {error:.2e} (largest value {np.abs(expected).max():.2f})")
    assert error < 1e-4
    assert ours.expected == pytest.approx(float(np.ravel(explainer.expected_value)[0]), abs=1e-5)
    np.testing.assert_allclose(values.sum(axis=1), ours.margin(events) - ours.expected, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def workload(gen: ModuleType) -> tuple[Path, np.ndarray]:
    """The shared workload's model and 3,000 model inputs of its generated events."""
    args = population(3000, seed=5)
    records = [record for _, _, record in gen.event_stream(args)]
    return fraud_workload_dir() / "model.onnx", gen.feature_matrix(records, args)


def test_the_workload_model_is_read_exactly_and_adds_up(workload: tuple[Path, np.ndarray]) -> None:
    path, x = workload
    rng = np.random.default_rng(4)
    noise = (x[rng.integers(0, len(x), (500, x.shape[1])), np.arange(x.shape[1])] *
             rng.uniform(0.5, 2.0, (500, x.shape[1]))).astype(np.float32)  # columns mixed across rows, scaled
    shap = TreeShap.from_onnx(path, 1, x[:100])
    for rows in (x, noise):
        np.testing.assert_allclose(sigmoid(shap.margin(rows)), run(path, rows)[:, 1], rtol=0, atol=1e-5)
    values = shap.shap_values(x[-1000:])
    np.testing.assert_allclose(values.sum(axis=1), shap.margin(x[-1000:]) - shap.expected, rtol=0, atol=1e-6)
    one_by_one = np.concatenate([shap.shap_values(x[i:i + 7]) for i in range(len(x) - 1000, len(x), 7)])
    np.testing.assert_allclose(one_by_one, values, rtol=0, atol=1e-12)


def shap_trees(proto: onnx.ModelProto) -> dict[str, Any]:
    """The ensemble (BRANCH_LEQ, binary, weights for class 0) as shap's dictionary model format."""
    (node,) = [n for n in proto.graph.node if n.op_type == "TreeEnsembleClassifier"]
    a = {x.name: np.array(helper.get_attribute_value(x)) for x in node.attribute}
    assert set(a["nodes_modes"].tolist()) == {b"BRANCH_LEQ", b"LEAF"}
    weights = {(t, n): w for t, n, w in zip(a["class_treeids"], a["class_nodeids"], a["class_weights"], strict=True)}
    trees = []
    for tree in np.unique(a["nodes_treeids"]):
        at = np.flatnonzero(a["nodes_treeids"] == tree)
        ids, leaf = a["nodes_nodeids"][at], a["nodes_modes"][at] == b"LEAF"
        assert np.array_equal(ids, np.arange(len(at)))
        left = np.where(leaf, -1, a["nodes_truenodeids"][at])
        trees.append({"children_left": left, "children_right": np.where(leaf, -1, a["nodes_falsenodeids"][at]),
                      "children_default": left, "feature": np.where(leaf, -2, a["nodes_featureids"][at]),
                      "threshold": a["nodes_values"][at].astype(np.float64),
                      "value": np.array([[weights.get((tree, i), 0.0)] for i in ids], dtype=np.float64),
                      "node_sample_weight": np.ones(len(at))})
    return {"trees": trees, "base_offset": float(a["base_values"][0])}


def test_the_workload_model_matches_shap_and_is_quick(workload: tuple[Path, np.ndarray]) -> None:
    shap_package = pytest.importorskip("shap")
    path, x = workload
    background, events = x[:100], x[-1000:]
    started = time.perf_counter()
    ours = TreeShap.from_onnx(path, 1, background)
    precompute = time.perf_counter() - started
    explainer = shap_package.TreeExplainer(shap_trees(onnx.load(str(path))), data=background.astype(np.float64),
                                           feature_perturbation="interventional", model_output="raw")
    expected = np.asarray(explainer.shap_values(events.astype(np.float64), check_additivity=False))
    error = float(np.abs(ours.shap_values(events) - expected).max())
    assert error < 1e-4
    batch = x[-30:]
    ours.shap_values(batch)
    started = time.perf_counter()
    for _ in range(100):
        ours.shap_values(batch)
    explain = (time.perf_counter() - started) / 100
    print(f"\nworkload (150 trees, depth 4): max |ours - shap| = {error:.2e}; precompute {precompute * 1e3:.1f} ms, "
          f"shap_values of 30 rows {explain * 1e3:.3f} ms")


def test_threads_share_a_model_without_sharing_workspaces(workload: tuple[Path, np.ndarray]) -> None:
    path, x = workload
    shap = TreeShap.from_onnx(path, 1, x[:20])
    batches = [x[i * 30:(i + 1) * 30] for i in range(8)]
    alone = [shap.shap_values(b) for b in batches]
    together: dict[int, list[np.ndarray]] = {}

    def work(k: int) -> None:
        together[k] = [shap.shap_values(b) for b in batches for _ in range(20)][::20]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for results in together.values():
        for mine, reference in zip(results, alone, strict=True):
            np.testing.assert_array_equal(mine, reference)


# Models it cannot read


def test_a_model_without_trees_is_refused(tmp_path: Path) -> None:
    path = linear_classifier(tmp_path / "linear.onnx", 4)
    with pytest.raises(TreeShapError, match=r"no TreeEnsembleClassifier/TreeEnsembleRegressor node.*MatMul"):
        TreeShap.from_onnx(path, 1, np.zeros((1, 4), np.float32))


@pytest.fixture(scope="module")
def regressor_node(small_gbc: tuple[Any, onnx.ModelProto, np.ndarray]) -> onnx.NodeProto:
    node: onnx.NodeProto = as_regressor(small_gbc[1], {}).graph.node[0]
    return node


def test_two_ensembles_or_a_computed_input_are_refused(regressor_node: onnx.NodeProto) -> None:
    second = onnx.NodeProto()
    second.CopyFrom(regressor_node)
    second.output[0] = "other"
    with pytest.raises(TreeShapError, match="2 tree ensemble nodes"):
        TreeShap.from_onnx(ensemble_model([second, regressor_node]), 0, np.zeros((1, 4), np.float32))
    scaled = onnx.NodeProto()
    scaled.CopyFrom(regressor_node)
    scaled.input[0] = "scaled"
    model = ensemble_model([helper.make_node("Mul", ["features", "scale"], ["scaled"]), scaled],
                           initializers=(numpy_helper.from_array(np.full(4, 2.0, np.float32), "scale"),))
    with pytest.raises(TreeShapError, match=r"computed by a Mul node, not the model input.*occlusion"):
        TreeShap.from_onnx(model, 0, np.zeros((1, 4), np.float32))


def test_a_cast_to_float_before_the_ensemble_is_read_through(regressor_node: onnx.NodeProto) -> None:
    cast = onnx.NodeProto()
    cast.CopyFrom(regressor_node)
    cast.input[0] = "as_float"
    model = ensemble_model([helper.make_node("Cast", ["features"], ["as_float"], to=TensorProto.FLOAT), cast],
                           input_type=TensorProto.DOUBLE)
    x, _ = small_data(seed=5, n=50)
    shap = TreeShap.from_onnx(model, 0, x[:2])
    np.testing.assert_allclose(shap.margin(x), run(model, x.astype(np.float64))[:, 0], rtol=0, atol=1e-5)
    rounded = ensemble_model([helper.make_node("Cast", ["features"], ["as_int"], to=TensorProto.INT64),
                              helper.make_node("Cast", ["as_int"], ["as_float"], to=TensorProto.FLOAT), cast])
    with pytest.raises(TreeShapError, match="computed by a Cast node"):
        TreeShap.from_onnx(rounded, 0, x[:2])


@pytest.mark.parametrize(("changes", "message"), [
    ({"post_transform": "PROBIT"}, "post_transform PROBIT is not supported"),
    ({"aggregate_function": "MAX"}, "aggregate_function MAX is not a sum"),
])
def test_outputs_that_are_not_sums_of_leaves_are_refused(small_gbc: tuple[Any, onnx.ModelProto, np.ndarray],
                                                        changes: dict[str, Any], message: str) -> None:
    with pytest.raises(TreeShapError, match=message):
        TreeShap.from_onnx(as_regressor(small_gbc[1], changes), 0, np.zeros((1, 4), np.float32))


def test_a_missing_column_or_too_deep_trees_are_refused(small_gbc: tuple[Any, onnx.ModelProto, np.ndarray],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _, proto, x = small_gbc
    with pytest.raises(TreeShapError, match="column 2 is not one of the model's 2 classes"):
        TreeShap.from_onnx(proto, 2, x[:1])
    monkeypatch.setattr(treeshap, "MAX_TABLE", 100)
    with pytest.raises(TreeShapError, match=r"too deep.*use explain\.method: occlusion"):
        TreeShap.from_onnx(proto, 1, x[:1])


def test_rows_of_the_wrong_width_are_refused(small_gbc: tuple[Any, onnx.ModelProto, np.ndarray]) -> None:
    _, proto, x = small_gbc
    shap = TreeShap.from_onnx(proto, 1, x[:1])
    with pytest.raises(ValueError, match=r"shape \[n, 4\]"):
        shap.shap_values(x[:, :3])
    with pytest.raises(ValueError, match="at least one row"):
        TreeShap.from_onnx(proto, 1, x[:0])
