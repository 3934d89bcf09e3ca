"""Drift references: reference bins per feature name, and for the score.

Two sources, one shape per feature (``{"bins": {"edges": [...], "shares": [...]}, ...}``):

- a model card: ``reference_stats.<feature>`` for the features and ``score_stats`` for the
  score (the example's training script writes both; other keys such as mean or quantiles are
  ignored here);
- a reference file written by ``worker monitor reference``: ``{"features": {<feature>: ...},
  "score": ..., "source": ..., "rows": N}``.

A feature without ``bins`` is not watched; malformed bins are an error naming the feature.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.quality.bins import Bins, BinsError


@dataclass(frozen=True)
class Reference:
    """Bins per feature name, and for the score when known."""

    features: dict[str, Bins]
    score: Bins | None = None

    def to_json(self, **about: Any) -> dict[str, Any]:
        return {**about, "features": {name: {"bins": b.to_json()} for name, b in self.features.items()},
                "score": {"bins": self.score.to_json()} if self.score is not None else None}


def from_card(card: dict[str, Any], what: str = "the model card") -> Reference | None:
    """The card's reference; None when it has no bins at all."""
    stats = card.get("reference_stats") or {}
    if not isinstance(stats, dict):
        raise BinsError(f"{what}: reference_stats must map feature names to statistics")
    features = {name: _bins(entry, f"{what}: reference_stats.{name}.bins") for name, entry in stats.items()
                if isinstance(entry, dict) and "bins" in entry}
    score_stats = card.get("score_stats")
    score = _bins(score_stats, f"{what}: score_stats.bins") if isinstance(score_stats, dict) else None
    return Reference(features, score) if features or score is not None else None


def from_file(path: Path) -> Reference:
    """A reference file written by ``worker monitor reference``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BinsError(f"cannot read the drift reference {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("features"), dict):
        raise BinsError(f"{path}: expected {{'features': {{<name>: {{'bins': ...}}}}, 'score': ...}}")
    features = {name: _bins(entry, f"{path}: features.{name}.bins") for name, entry in data["features"].items()}
    score = data.get("score")
    return Reference(features, _bins(score, f"{path}: score.bins") if score else None)


def _bins(entry: Any, what: str) -> Bins:
    if not isinstance(entry, dict):
        raise BinsError(f"{what}: expected an object")
    return Bins.parse(entry.get("bins"), what)
