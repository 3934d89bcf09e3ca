"""Model repositories for tests: versions built with onnx.helper, with model cards whose golden
vectors come from ONNX Runtime run directly on the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import helper

from tests.support.onnx_models import FLOAT, const, save_model

Builder = Callable[[Path], Path]


def logistic(weights: list[float], bias: float = 0.0, input_name: str = "x",
             batch: int | str = "N") -> Builder:
    """``x [N, len(weights)]`` → ``probabilities [N, 2]`` = [1 - p, p], p = sigmoid(x · w + bias)."""
    w = np.asarray(weights, dtype=np.float32).reshape(-1, 1)

    def build(path: Path) -> Path:
        nodes = [helper.make_node("MatMul", [input_name, "w"], ["z0"]),
                 helper.make_node("Add", ["z0", "b"], ["z"]),
                 helper.make_node("Sigmoid", ["z"], ["p"]),
                 helper.make_node("Sub", ["one", "p"], ["q"]),
                 helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1)]
        return save_model(path, nodes, [(input_name, FLOAT, [batch, len(weights)])],
                          [("probabilities", FLOAT, [batch, 2])],
                          [const("w", w), const("b", np.array([[bias]], dtype=np.float32)),
                           const("one", np.ones((1, 1), dtype=np.float32))])
    return build


def probabilities(path: Path, x: np.ndarray, input_name: str = "x") -> np.ndarray:
    """``probabilities`` from ONNX Runtime run directly on the file."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["probabilities"], {input_name: x.astype(np.float32)})[0])


def run(path: Path, x: np.ndarray, input_name: str = "x") -> np.ndarray:
    """P(class 1), the score, from ONNX Runtime run directly on the file."""
    return probabilities(path, x, input_name)[:, 1]


def golden_inputs(width: int, n: int = 8, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 5, (n, width)).astype(np.float32)


def add_version(root: Path, name: str, version: str, build: Builder, golden_from: Builder | None = None,
                width: int = 2, card: dict[str, Any] | None = None, golden: bool = True) -> Path:
    """Writes ``root/name/version/model.onnx`` and its card; the golden vectors' expected
    outputs come from ``golden_from`` (default: the model itself)."""
    directory = root / name / version
    directory.mkdir(parents=True, exist_ok=True)
    path = build(directory / "model.onnx")
    data: dict[str, Any] = {"name": name, "version": version, "input": {"name": "x", "shape": [None, width]},
                            "output": {"name": "probabilities", "score_column": 1}, "threshold": 0.5,
                            "training": {"holdout_auc": 0.9}, **(card or {})}
    if golden:
        x = golden_inputs(width)
        reference = path if golden_from is None else golden_from(directory / "reference.onnx")
        expected = probabilities(reference, x)
        data["golden"] = [{"input": row.tolist(), "probabilities": out.tolist()}
                          for row, out in zip(x, expected, strict=True)]
        if golden_from is not None:
            reference.unlink()
    (directory / "model-card.json").write_text(json.dumps(data, indent=1))
    return path
