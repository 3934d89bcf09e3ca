"""Which events are explained, by which method, and their reasons.

An ``Explainer`` picks the rows to explain (``when``: the flagged ones, all, or none), asks its
method for each feature's signed contribution (``[n, k]``), and turns those into reasons (the
``top_k`` features with the largest positive contributions, largest first) and a map of every
feature's contribution. The pipeline calls it once per model that scored rows of a batch (the
active model and a canary apart), and never lets a failure here fail a prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from worker.explain.treeshap import TreeShap
from worker.inference import Model

When = Literal["flagged", "all", "never"]


class Method(Protocol):
    def contributions(self, model: Model, feeds: dict[str, np.ndarray], scores: np.ndarray) -> np.ndarray:
        """``[n, k]`` signed contributions of the k explained features to each row's score."""


class TreeShapMethod:
    """Exact interventional TreeSHAP of a tree ensemble with one 2-D input, built once per model
    version from its ONNX file (``worker.explain.treeshap``)."""

    def __init__(self, tensor: str, column: int, background: np.ndarray) -> None:
        self.tensor = tensor
        self.column = column
        self.background = background
        self._built: dict[tuple[str, str], TreeShap] = {}

    def contributions(self, model: Model, feeds: dict[str, np.ndarray], scores: np.ndarray) -> np.ndarray:
        return self.of(model).shap_values(np.asarray(feeds[self.tensor], dtype=np.float32))

    def of(self, model: Model) -> TreeShap:
        key = (model.name, model.version)
        if key not in self._built:
            path: Path | None = getattr(model, "path", None)
            if path is None:
                raise ValueError(f"{model.name} v{model.version} has no ONNX file to read trees from")
            self._built[key] = TreeShap.from_onnx(path, self.column, self.background)
        return self._built[key]


class Explainer:
    def __init__(self, names: Sequence[str], method: Method, when: When, top_k: int, threshold: float) -> None:
        self.names = list(names)
        self.method = method
        self.when = when
        self.top_k = top_k
        self.threshold = threshold

    def rows(self, scores: np.ndarray, published: np.ndarray) -> np.ndarray:
        """The rows to explain: published ones, and flagged ones only with ``when: flagged``."""
        if self.when == "never":
            return np.zeros(0, dtype=np.intp)
        chosen = published & (scores >= self.threshold) if self.when == "flagged" else published
        return np.flatnonzero(chosen)

    def contributions(self, model: Model, feeds: dict[str, np.ndarray], scores: np.ndarray) -> np.ndarray:
        return self.method.contributions(model, feeds, scores)

    def describe(self, contributions: np.ndarray) -> list[tuple[list[str], dict[str, float]]]:
        """Per row: its reasons (top features pushing the score up, largest first) and every contribution."""
        order = np.argsort(-contributions, axis=1, kind="stable")[:, :self.top_k]
        names = self.names
        out = []
        for row, top in zip(contributions.tolist(), order.tolist(), strict=True):
            out.append(([names[j] for j in top if row[j] > 0], dict(zip(names, row, strict=True))))
        return out

