"""Train the example fraud model; write ``<version>/model.onnx`` and ``<version>/model-card.json``.

    pip install -e '.[train]'
    python models/fraud/train.py            # rebuilds version 1 (deterministic)
    python models/fraud/train.py --version 2 --seed 11

The data are synthetic (``data.py`` beside this file): a training world of cards,
merchants and devices, and its transactions labelled by the generator's fraud mechanism.
The model is scikit-learn's gradient boosting, exported to ONNX with one float input
``features [N, 17]`` (columns in ``data.FEATURE_ORDER``) and one output
``probabilities [N, 2]`` (no ZipMap, so the worker reads column 1 as the score).

The card's drift references, ``reference_stats.<feature>.bins`` (decile bins of every input over
the training rows) and ``score_stats`` (of the holdout scores), come from ``worker.quality.bins``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from worker.quality.bins import Bins

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import data  # noqa: E402  (beside this script, not a package)

INPUT, OUTPUT = "features", "probabilities"
OPSET = {"": 17, "ai.onnx.ml": 3}
QUANTILES = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]


def labelled(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and fraud labels of ``rows`` transactions in a training world (not the demo's)."""
    world = data.make_world(seed, n_cards=40_000, n_merchants=2_000, n_farms=400)
    pairs = list(data.transactions(world, rows, seed + 1))
    x = data.feature_matrix([record for record, _ in pairs], world)
    y = np.array([fraud for _, fraud in pairs], dtype=np.int64)
    return x, y


def fit(x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier

    model = GradientBoostingClassifier(n_estimators=120, max_depth=3, learning_rate=0.1, subsample=0.8,
                                       random_state=seed)
    return model.fit(x, y)


def export(model: Any, path: Path, width: int) -> dict[str, int]:
    """Write the ONNX file; returns the opsets it uses."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(model, initial_types=[(INPUT, FloatTensorType([None, width]))],
                  options={id(model): {"zipmap": False}}, target_opset=OPSET)
    # skl2onnx names the outputs 'label' and 'probabilities'; the worker reads the latter.
    # It lists the opsets in set order; sorted, the file is the same bytes on every run.
    imports = sorted(onx.opset_import, key=lambda o: o.domain)
    del onx.opset_import[:]
    onx.opset_import.extend(imports)
    onx.doc_string = f"fraud example: {INPUT} float32[N,{width}] in model-card.json feature_order"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    return {o.domain or "ai.onnx": o.version for o in imports}


def onnx_probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT], {INPUT: x})[0])


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold (2 decimals) with the best F1 on the holdout."""
    best, best_f1 = 0.5, -1.0
    for t in np.round(np.arange(0.05, 0.96, 0.01), 2):
        flagged = p >= t
        tp = float(np.sum(flagged & (y == 1)))
        f1 = 2 * tp / max(float(flagged.sum() + y.sum()), 1.0)
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best


def metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    flagged = p >= threshold
    tp = float(np.sum(flagged & (y == 1)))
    return {"holdout_auc": round(float(roc_auc_score(y, p)), 4),
            "holdout_average_precision": round(float(average_precision_score(y, p)), 4),
            "precision_at_threshold": round(tp / max(float(flagged.sum()), 1.0), 4),
            "recall_at_threshold": round(tp / max(float(y.sum()), 1.0), 4)}


def reference_stats(x: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per feature: what the model saw in training, to compare live traffic with (drift):
    summary statistics and the decile ``bins`` (edges and the training rows' share per bin)."""
    stats = {}
    for j, name in enumerate(data.FEATURE_ORDER):
        col = x[:, j].astype(np.float64)
        stats[name] = {"mean": round(float(col.mean()), 6), "std": round(float(col.std()), 6),
                       "min": float(col.min()), "max": float(col.max()),
                       "quantiles": {f"p{round(q * 100):02d}": float(np.quantile(col, q)) for q in QUANTILES},
                       "bins": Bins.of_values(col).to_json()}
    return stats


def score_stats(scores: np.ndarray) -> dict[str, Any]:
    """The holdout scores (column 1 of the probabilities): the reference for score drift."""
    scores = np.asarray(scores, dtype=np.float64)
    return {"mean": round(float(scores.mean()), 6), "std": round(float(scores.std()), 6),
            "bins": Bins.of_values(scores).to_json()}


def golden(x: np.ndarray, y: np.ndarray, probabilities: np.ndarray, seed: int, n: int = 20) -> list[dict[str, Any]]:
    """``n`` holdout inputs (a quarter of them fraud) with the exact probabilities ONNX Runtime gives."""
    rng = np.random.default_rng(seed)
    frauds, others = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    picks = np.concatenate([rng.choice(frauds, n // 4, replace=False), rng.choice(others, n - n // 4, replace=False)])
    return [{"input": [float(v) for v in x[i]], "probabilities": [float(v) for v in probabilities[i]],
             "fraud": bool(y[i])} for i in sorted(picks.tolist())]


def background(holdout: np.ndarray, seed: int, n: int = 100) -> list[list[float]]:
    """``n`` holdout rows: what explain.method tree_shap compares an event with (interventional
    Shapley values are averages over such reference rows)."""
    picks = np.random.default_rng(seed + 1).choice(len(holdout), n, replace=False)
    return [[float(v) for v in holdout[i]] for i in sorted(picks.tolist())]


def card(args: argparse.Namespace, x: np.ndarray, y: np.ndarray, holdout: slice, p: np.ndarray,
         threshold: float, diff: float, opsets: dict[str, int]) -> dict[str, Any]:
    import onnx
    import skl2onnx
    import sklearn

    return {
        "name": "fraud", "version": args.version,
        "description": "Card-payment fraud score for the inference-worker example (synthetic data).",
        "input": {"name": INPUT, "dtype": "float32", "shape": [None, len(data.FEATURE_ORDER)]},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": [None, 2], "score_column": 1},
        "feature_order": data.FEATURE_ORDER,
        "defaults": {"card": data.CARD_DEFAULTS, "merchant": data.MERCHANT_DEFAULTS, "device": data.DEVICE_DEFAULTS,
                     "distance_from_home_km": data.DISTANCE_DEFAULT, "channel": data.CHANNEL_CODES},
        "threshold": threshold,
        "training": {"estimator": "sklearn GradientBoostingClassifier(n_estimators=120, max_depth=3, "
                                  "learning_rate=0.1, subsample=0.8)",
                     "rows": len(x), "holdout_rows": len(p), "seed": args.seed,
                     "positive_rate": round(float(y.mean()), 5), **metrics(y[holdout], p, threshold),
                     "max_abs_diff_sklearn_vs_onnx": diff,
                     "versions": {"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
                                  "onnx": onnx.__version__, "opsets": opsets}},
        "reference_stats": reference_stats(x),
        "score_stats": score_stats(p),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="1", help="model version (the output directory's name)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rows", type=int, default=80_000)
    args = parser.parse_args(argv)
    started = time.monotonic()
    x, y = labelled(args.rows, args.seed)
    cut = int(0.8 * len(x))
    model = fit(x[:cut], y[:cut], args.seed)
    out = HERE / args.version
    opsets = export(model, out / "model.onnx", x.shape[1])
    probabilities = onnx_probabilities(out / "model.onnx", x[cut:])
    diff = float(np.abs(probabilities[:, 1] - model.predict_proba(x[cut:])[:, 1]).max())
    threshold = best_threshold(y[cut:], probabilities[:, 1])
    model_card = card(args, x, y, slice(cut, None), probabilities[:, 1], threshold, diff, opsets)
    model_card["golden"] = golden(x[cut:], y[cut:], probabilities, args.seed)
    model_card["background"] = background(x[cut:], args.seed)
    (out / "model-card.json").write_text(json.dumps(model_card, indent=1) + "\n")
    summary = {k: model_card["training"][k] for k in ("rows", "positive_rate", "holdout_auc",
                                                      "holdout_average_precision")}
    print(json.dumps({**summary, "threshold": threshold, "seconds": round(time.monotonic() - started, 1),
                      "written": str(out)}))


if __name__ == "__main__":
    main()
