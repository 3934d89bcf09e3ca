"""What serves now, and which model scores which event of a batch.

``Serving`` is an immutable snapshot: the active model, optionally a canary that scores a
stable share of keys, and optionally a shadow that scores every event on the side. The
pipeline reads one snapshot per batch, so a batch is scored by exactly the models selected
at its start, and a swap (a new snapshot) lands on a batch boundary.

A key goes to the canary when its 64-bit BLAKE2b hash falls below ``share * 2**64``. The hash
is keyed by a fixed personalisation (not Python's per-process salted ``hash()``), so every
replica, every restart and every language that implements BLAKE2b splits alike; raising the
share keeps the keys already on the canary there.

``ModelSlot`` holds the ``Serving`` of a running worker: the pipeline reads it once per batch and
the model lifecycle swaps it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from worker.inference import Model

_SPACE = 2**64
_PERSON = b"worker-canary"


def key_point(key: bytes) -> int:
    """Where a key falls in ``[0, 2**64)``: the first 8 bytes of its BLAKE2b digest, big-endian."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, person=_PERSON).digest(), "big")


def canary_mask(keys: Sequence[bytes | None], share: float) -> np.ndarray:
    """True for the rows whose key goes to the canary. Rows without a key stay on the active model."""
    limit = int(share * _SPACE)
    blake = hashlib.blake2b
    person = _PERSON
    return np.fromiter((key is not None and int.from_bytes(blake(key, digest_size=8, person=person).digest(), "big")
                        < limit for key in keys), dtype=bool, count=len(keys))


@dataclass(frozen=True)
class Serving:
    """The models serving now; ``revision`` is the control revision that selected them."""

    active: Model
    canary: Model | None = None
    canary_share: float = 0.0
    shadow: Model | None = None
    revision: int = 0

    def __post_init__(self) -> None:
        if self.canary is not None and not 0 < self.canary_share <= 1:
            raise ValueError(f"canary share must be in (0, 1], not {self.canary_share}")

    def describe(self) -> str:
        parts = [f"{self.active.name} v{self.active.version}"]
        if self.canary is not None:
            parts.append(f"canary v{self.canary.version} on {self.canary_share:.1%} of keys")
        if self.shadow is not None:
            parts.append(f"shadow v{self.shadow.version}")
        return ", ".join(parts)


class ModelSlot:
    """The models serving now (a ``Serving``: active, optional canary and shadow). The pipeline
    reads ``serving`` once per batch, so a swap lands on a batch boundary."""

    def __init__(self, serving: Model | Serving) -> None:
        self.serving = serving if isinstance(serving, Serving) else Serving(serving)

    @property
    def model(self) -> Model:
        return self.serving.active

    def swap(self, model: Model) -> Model:
        """Serve ``model`` alone; returns the model that was active."""
        return self.set(Serving(model)).active

    def set(self, serving: Serving) -> Serving:
        """Serve ``serving`` from the next batch on; returns what was serving."""
        previous, self.serving = self.serving, serving
        return previous
