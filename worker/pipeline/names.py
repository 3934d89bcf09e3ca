"""Model-input columns named for people: drift figures and explanations speak of ``amount`` and
``merchant.risk_score``, not of ``features[:, 0]``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from worker.pipeline.assembly import ConstColumn, EventColumn, TensorSpec


@dataclass(frozen=True)
class NamedColumn:
    """A model-input column: its tensor, its column (None for a 1-D tensor) and its name."""

    tensor: str
    column: int | None
    name: str


def named_columns(tensors: Sequence[TensorSpec], feature_order: Sequence[str] | None) -> list[NamedColumn]:
    """Every numeric model-input column, named as the card's ``feature_order`` when the model has
    one 2-D input of that width, else by its source (``amount``, ``card.txn_count_1h``; a source
    feeding several inputs is named ``source@input`` in each); constants are not named."""
    numeric = [t for t in tensors if t.dtype != "string"]
    if feature_order and len(numeric) == 1 and numeric[0].rank == 2 and len(numeric[0].columns) == len(feature_order):
        return [NamedColumn(numeric[0].name, j, name) for j, name in enumerate(feature_order)]
    named = []
    for tensor in numeric:
        for j, column in enumerate(tensor.columns):
            if isinstance(column, ConstColumn):
                continue
            name = column.path if isinstance(column, EventColumn) else f"{column.entity}.{column.field}"
            named.append(NamedColumn(tensor.name, j if tensor.rank == 2 else None, name))
    seen = Counter(c.name for c in named)
    return [c if seen[c.name] == 1 else NamedColumn(c.tensor, c.column, f"{c.name}@{c.tensor}") for c in named]
