"""Explanations from settings: the explainer the pipeline calls when an output field carries
``$reasons`` or ``$contributions``."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from worker.app.cards import card_of
from worker.config.compile import Compiled
from worker.config.settings import WorkerSettings
from worker.errors import ConfigError
from worker.explain.explainer import Explainer, Method, TreeShapMethod
from worker.explain.occlusion import Occlusion, ScoreOf
from worker.inference import Model
from worker.pipeline.names import NamedColumn, named_columns
from worker.pipeline.output import select

logger = logging.getLogger(__name__)


def make_explainer(settings: WorkerSettings, compiled: Compiled, always: bool = False) -> Explainer | None:
    """None when no output field asks for reasons, or ``explain.when`` is ``never`` (unless
    ``always``); ``ConfigError`` when the chosen method cannot explain this model."""
    e = settings.explain
    if not always and (not compiled.builder.explains or e.when == "never"):
        return None
    model = compiled.model
    card = card_of(settings, compiled)(model.name, model.version)
    order = card.get("feature_order")
    columns = named_columns(compiled.tensors, order if isinstance(order, list) else None)
    baseline = _baseline(columns, card.get("reference_stats") or {})
    method = (_occlusion(columns, baseline, compiled) if e.method == "occlusion"
              else _tree_shap(columns, baseline, card, compiled))
    logger.info("explaining %s predictions by %s: top %d of %d features", e.when, e.method, e.top_k, len(columns))
    return Explainer([c.name for c in columns], method, e.when, e.top_k, settings.model.threshold)


def reference_value(stats: Any) -> float | None:
    """A feature's ordinary value from its card statistics: the median (``median``, ``quantiles.p50``,
    or the middle of nine deciles), else the mean."""
    if not isinstance(stats, dict):
        return None
    quantiles = stats.get("quantiles")
    for value in (stats.get("median"), quantiles.get("p50") if isinstance(quantiles, dict) else None,
                  quantiles[4] if isinstance(quantiles, list) and len(quantiles) == 9 else None, stats.get("mean")):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _baseline(columns: list[NamedColumn], stats: dict[str, Any]) -> np.ndarray:
    values = [reference_value(stats.get(c.name)) for c in columns]
    missing = [c.name for c, v in zip(columns, values, strict=True) if v is None]
    if missing:
        raise ConfigError.at("explain", f"explaining needs each model input's ordinary value (the card's "
                                        f"reference_stats.<feature> median or mean); none for {', '.join(missing)}")
    return np.array(values, dtype=np.float64)


def model_scores(compiled: Compiled) -> ScoreOf:
    """Runs a model on some feeds and returns each row's score, as the configuration selects it."""
    score = compiled.builder.score

    def scores(model: Model, feeds: dict[str, np.ndarray]) -> np.ndarray:
        (output,) = model.run(feeds, [score.output])
        return np.asarray(select(output, score.column), dtype=np.float64)

    return scores


def _occlusion(columns: list[NamedColumn], baseline: np.ndarray, compiled: Compiled) -> Method:
    return Occlusion([(c.tensor, c.column) for c in columns], baseline, model_scores(compiled))


def _tree_shap(columns: list[NamedColumn], baseline: np.ndarray, card: dict[str, Any],
               compiled: Compiled) -> Method:
    from worker.explain.treeshap import TreeShapError

    tensors = {c.tensor for c in columns}
    spec = next((t for t in compiled.tensors if t.name in tensors), None)
    if len(tensors) != 1 or spec is None or spec.rank != 2 or len(spec.columns) != len(columns):
        raise ConfigError.at("explain.method", "tree_shap reads a tree ensemble fed by one 2-D numeric input whose "
                                               "every column is a feature; use occlusion for this model")
    background = np.asarray(card.get("background") or [baseline], dtype=np.float32)
    method = TreeShapMethod(spec.name, compiled.builder.score.column or 0, background)
    try:
        method.of(compiled.model)
    except (TreeShapError, OSError) as exc:
        raise ConfigError.at("explain.method", f"tree_shap cannot read the model: {exc}") from exc
    return method


def describe(settings: WorkerSettings, compiled: Compiled) -> str:
    """One line for ``check-config`` (building the explainer checks that its method fits the model)."""
    e = settings.explain
    if not compiled.builder.explains:
        return "off (no output field takes $reasons or $contributions)"
    explainer = make_explainer(settings, compiled)
    if explainer is None:
        return "off (explain.when: never)"
    return f"{e.when} predictions by {e.method}: top {e.top_k} of {len(explainer.names)} features"

