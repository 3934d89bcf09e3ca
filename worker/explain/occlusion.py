"""Occlusion: a feature's contribution is the score minus the score with that feature alone set to
its reference value (the training median).

For n events and k features, the model runs once on the n × k rows (each event k times, each
copy with one feature neutralised), so a batch costs one extra model call. What it means: "had
this feature been ordinary, the score would have been this much lower". Where it misleads: with
correlated features (amount and the card's average amount, say) neutralising one alone makes an
event no model has seen, and two features that explain the same thing can each look small; the
contributions do not add up to the score minus anything in particular.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from worker.inference import Model

ScoreOf = Callable[[Model, dict[str, np.ndarray]], np.ndarray]
"""Runs a model on some feeds and returns the score of each row."""


class Occlusion:
    def __init__(self, columns: Sequence[tuple[str, int | None]], baseline: np.ndarray, score: ScoreOf) -> None:
        """``columns``: each explained feature's (tensor, column; None for a 1-D tensor); ``baseline``:
        each one's reference value; ``score``: the score of a model's outputs."""
        self.columns = list(columns)
        self.baseline = np.asarray(baseline, dtype=np.float64)
        self.score = score

    def contributions(self, model: Model, feeds: dict[str, np.ndarray], scores: np.ndarray) -> np.ndarray:
        """``[n, k]``: each event's ``scores`` minus its score with each feature neutralised."""
        n, k = len(scores), len(self.columns)
        copies = {name: np.repeat(tensor, k, axis=0) for name, tensor in feeds.items()}  # event i's k copies together
        rows = np.arange(n) * k
        for j, (tensor, column) in enumerate(self.columns):
            target = copies[tensor]
            if column is None:
                target[rows + j] = self.baseline[j]
            else:
                target[rows + j, column] = self.baseline[j]
        neutral = self.score(model, copies).reshape(n, k)
        return np.asarray(scores, dtype=np.float64)[:, None] - neutral
