"""An exact sliding window of binned rows: counts per bin of the last ``capacity`` rows, for
several columns at once.

Each row's bins are kept in a ring (one small integer per column), so when a row leaves the
window its counts are taken back exactly: PSI over "the last 10,000 events" is over exactly
those events, not over whole batches around them. A batch costs two ``bincount`` calls over
all columns together (flat bin numbers: each column's bins are offset past the previous
column's), whatever the number of columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from worker.quality.bins import FLOOR


class SlidingBins:
    def __init__(self, sizes: Sequence[int], capacity: int) -> None:
        """``sizes``: the number of bins of each column; ``capacity``: rows in the window."""
        if capacity < 1 or not sizes:
            raise ValueError("a window needs at least one row and one column")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.capacity = capacity
        self.counts = np.zeros(int(self.sizes.sum()), dtype=np.int64)
        self.filled = 0
        self._ring = np.zeros((capacity, len(self.sizes)), dtype=np.int32)
        self._next = 0

    def add(self, bins: np.ndarray) -> None:
        """Adds rows (``[n, columns]`` bin numbers per column), dropping the oldest beyond capacity."""
        flat = (bins[-self.capacity:] + self.offsets).astype(np.int32, copy=False)
        n = len(flat)
        if not n:
            return
        slots = (self._next + np.arange(n)) % self.capacity
        leaving = self._ring[slots[slots < self.filled]]
        minlength = len(self.counts)
        if len(leaving):
            self.counts -= np.bincount(leaving.ravel(), minlength=minlength)
        self._ring[slots] = flat
        self.counts += np.bincount(flat.ravel(), minlength=minlength)
        self._next = int((self._next + n) % self.capacity)
        self.filled = min(self.capacity, self.filled + n)

    def column_counts(self) -> list[np.ndarray]:
        """Counts per bin, one array per column."""
        return np.split(self.counts.copy(), self.offsets[1:])

    def psi(self, shares: np.ndarray, floor: float = FLOOR) -> np.ndarray:
        """PSI of every column against ``shares`` (the reference shares of all columns, laid end
        to end like the counts); NaN while the window is empty."""
        if not self.filled:
            return np.full(len(self.sizes), np.nan)
        actual = np.maximum(self.counts / self.filled, floor)
        expected = np.maximum(shares, floor)
        return np.add.reduceat((actual - expected) * np.log(actual / expected), self.offsets)
