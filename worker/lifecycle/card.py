"""Model cards: ``model-card.json`` beside each ``model.onnx``.

A card describes one version: its inputs and outputs, threshold, training metrics, reference
feature statistics (for drift monitoring) and golden vectors (sample inputs with the outputs
the model must reproduce). Two layouts are read, so that existing cards work unchanged:

- single input and output, as the project's example writes them::

    {"input": {"name": "features", "shape": [null, 17]},
     "output": {"name": "probabilities", "score_column": 1},
     "golden": [{"input": [...], "probabilities": [...], "fraud": false}]}

  where a golden vector's expected outputs are its keys named like a model output (other keys,
  such as the true label ``fraud``, are ignored);
- any number of inputs and outputs::

    {"inputs": [{"name": "tier", ...}], "outputs": [...],
     "golden": [{"inputs": {"tier": [...], ...}, "outputs": {"score": [...]}}]}

Unknown keys are kept when a card is rewritten.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CARD_FILE = "model-card.json"


class CardError(ValueError):
    """A model card cannot be read or has the wrong shape."""


@dataclass(frozen=True)
class TensorDecl:
    """A tensor as the card declares it (any part may be unknown)."""

    name: str
    dtype: str | None = None
    shape: tuple[int | None, ...] | None = None


@dataclass(frozen=True)
class GoldenVector:
    """One sample: inputs by name (``None`` for "the model's only input") and, when the card
    names them, expected outputs by name; ``raw`` is the entry as written."""

    inputs: dict[str | None, Any]
    outputs: dict[str, Any] | None
    raw: dict[str, Any]

    def expected(self, output_names: list[str]) -> dict[str, Any]:
        """Expected outputs: the ``outputs`` mapping, else the keys named like a model output."""
        if self.outputs is not None:
            return self.outputs
        return {k: v for k, v in self.raw.items() if k in output_names}


@dataclass(frozen=True)
class ModelCard:
    name: str | None
    version: str | None
    inputs: list[TensorDecl]
    outputs: list[TensorDecl]
    threshold: float | None
    training: dict[str, Any]
    reference_stats: dict[str, Any]
    golden: list[GoldenVector]
    golden_atol: float | None
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ModelCard:
        if not isinstance(data, dict):
            raise CardError("a model card must be a JSON object")
        golden = data.get("golden") or []
        if not isinstance(golden, list):
            raise CardError("'golden' must be a list of vectors")
        tolerance = data.get("golden_tolerance") or {}
        return cls(_text(data.get("name")), _text(data.get("version")),
                   _decls(data, "input", "inputs"), _decls(data, "output", "outputs"),
                   _number(data.get("threshold")), dict(data.get("training") or {}),
                   dict(data.get("reference_stats") or {}), [_golden(i, g) for i, g in enumerate(golden)],
                   _number(tolerance.get("atol")) if isinstance(tolerance, dict) else None, data)

    @classmethod
    def empty(cls) -> ModelCard:
        return cls.parse({})

    def summary(self) -> str:
        metrics = {k: v for k, v in self.training.items() if isinstance(v, int | float) and
                   any(m in k for m in ("auc", "precision", "recall", "accuracy", "f1", "rmse"))}
        parts = [f"{k} {v:g}" for k, v in list(metrics.items())[:3]] or ["no training metrics"]
        return ", ".join(([f"threshold {self.threshold:g}"] if self.threshold is not None else []) + parts)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _decls(data: dict[str, Any], single: str, plural: str) -> list[TensorDecl]:
    items = data.get(plural)
    if items is None:
        items = [data[single]] if isinstance(data.get(single), dict) else []
    if isinstance(items, dict):  # {"name": {...}} form
        items = [{"name": k, **(v if isinstance(v, dict) else {})} for k, v in items.items()]
    decls = []
    for item in items:
        if not isinstance(item, dict) or "name" not in item:
            raise CardError(f"every entry of '{plural}' needs a name")
        shape = item.get("shape")
        decls.append(TensorDecl(str(item["name"]), _text(item.get("dtype")),
                                tuple(d if isinstance(d, int) else None for d in shape) if isinstance(shape, list)
                                else None))
    return decls


def _golden(index: int, entry: Any) -> GoldenVector:
    if not isinstance(entry, dict):
        raise CardError(f"golden vector {index} is not an object")
    if isinstance(entry.get("inputs"), dict):
        inputs: dict[str | None, Any] = dict(entry["inputs"])
    elif "input" in entry:
        inputs = {None: entry["input"]}
    else:
        raise CardError(f"golden vector {index} has no 'input' or 'inputs'")
    outputs = entry.get("outputs")
    if outputs is not None and not isinstance(outputs, dict):
        raise CardError(f"golden vector {index}: 'outputs' must map output names to values")
    return GoldenVector(inputs, outputs, entry)


def card_path(model_path: Path) -> Path:
    """Where a model's card lives: beside it (``model-card.json``, or ``<stem>.card.json`` for a
    file outside a repository that has one)."""
    beside = model_path.parent / CARD_FILE
    other = model_path.with_suffix(".card.json")
    return other if other.is_file() and not beside.is_file() else beside


def read_card(model_path: Path) -> ModelCard:
    """The card of a model file; an empty card if it has none. Raises ``CardError`` if unreadable."""
    path = card_path(model_path)
    if not path.is_file():
        return ModelCard.empty()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CardError(f"cannot read the model card {path}: {exc}") from exc
    return ModelCard.parse(data)


def write_card(path: Path, data: dict[str, Any]) -> None:
    """Writes a card atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
