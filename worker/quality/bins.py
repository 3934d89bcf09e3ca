"""Reference bins and the population stability index (PSI).

A reference is, per feature, a list of bin ``edges`` and the training rows' ``shares`` per bin:
bin 0 holds values below ``edges[0]``, bin k values in ``[edges[k-1], edges[k])`` and the last
bin values at or above ``edges[-1]`` (so there is one more share than edges). That is the layout
of a model card's ``reference_stats.<feature>.bins`` and of the files ``worker monitor
reference`` writes. A NaN falls in the last bin (numpy sorts it after every number).

PSI compares the live shares ``a`` with the reference shares ``e``:
``sum((a - e) * ln(a / e))``, each share floored at ``FLOOR`` so that an empty bin does not
make it infinite. Rule of thumb: below 0.1 stable, 0.1–0.2 a moderate shift, above 0.2 a shift
worth acting on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FLOOR = 1e-4
DECILES = np.linspace(0.1, 0.9, 9)
MAX_DISTINCT = 10


class BinsError(ValueError):
    """A reference (bins and shares) is missing or malformed."""


@dataclass(frozen=True, eq=False)
class Bins:
    edges: np.ndarray
    """Ascending bin edges (float64)."""
    shares: np.ndarray
    """The reference's share per bin: ``len(edges) + 1`` values summing to 1."""

    def __post_init__(self) -> None:
        if self.edges.ndim != 1 or len(self.shares) != len(self.edges) + 1:
            raise BinsError(f"{len(self.edges)} edges need {len(self.edges) + 1} shares, not {len(self.shares)}")
        if len(self.edges) > 1 and np.any(np.diff(self.edges) <= 0):
            raise BinsError("bin edges must be strictly ascending")
        if np.any(self.shares < 0) or abs(float(self.shares.sum()) - 1) > 1e-3:
            raise BinsError(f"bin shares must be ≥ 0 and sum to 1 (they sum to {float(self.shares.sum()):.4f})")

    @property
    def size(self) -> int:
        return len(self.shares)

    def index(self, values: np.ndarray) -> np.ndarray:
        """The bin of every value."""
        return np.searchsorted(self.edges, values, side="right")

    def to_json(self) -> dict[str, list[float]]:
        return {"edges": [float(e) for e in self.edges], "shares": [float(s) for s in self.shares]}

    @classmethod
    def parse(cls, data: Any, what: str) -> Bins:
        """Bins from ``{"edges": [...], "shares": [...]}``; ``what`` names them in errors."""
        if not isinstance(data, dict) or "edges" not in data or "shares" not in data:
            raise BinsError(f"{what}: expected {{'edges': [...], 'shares': [...]}}")
        try:
            edges = np.asarray(data["edges"], dtype=np.float64)
            shares = np.asarray(data["shares"], dtype=np.float64)
            return cls(edges, shares)
        except (TypeError, ValueError) as exc:
            raise BinsError(f"{what}: {exc}") from exc

    @classmethod
    def of_values(cls, values: np.ndarray) -> Bins:
        """Bins of ``values`` and their shares: the distinct deciles as edges, except that a feature
        with at most ``MAX_DISTINCT`` distinct values gets a bin per value, and a value holding more
        than a tenth of the rows gets a bin of its own (else a feature that is mostly 0, say, would
        put nearly everything in one bin, and its PSI could not move)."""
        values = np.asarray(values, dtype=np.float64)
        finite = np.sort(values[np.isfinite(values)])
        if not len(finite):
            raise BinsError("no finite values to make bins from")
        distinct = np.unique(finite)
        edges = distinct if len(distinct) <= MAX_DISTINCT else _split_spikes(finite, np.unique(
            np.quantile(finite, DECILES)))
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        return cls(edges, counts / counts.sum())


def _split_spikes(ordered: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Adds, after each edge holding more than a tenth of the (sorted) values, the next value above it."""
    extra = []
    for edge in edges:
        start, end = np.searchsorted(ordered, edge, side="left"), np.searchsorted(ordered, edge, side="right")
        if end - start > 0.1 * len(ordered) and end < len(ordered):
            extra.append(ordered[end])
    return np.unique(np.concatenate([edges, extra])) if extra else edges


def psi(counts: np.ndarray, shares: np.ndarray, floor: float = FLOOR) -> float:
    """PSI of observed ``counts`` per bin against the reference ``shares``; NaN with no counts."""
    total = counts.sum()
    if total <= 0:
        return float("nan")
    actual = np.maximum(counts / total, floor)
    expected = np.maximum(shares, floor)
    return float(np.sum((actual - expected) * np.log(actual / expected)))
