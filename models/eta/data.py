"""Synthetic food-delivery orders for the second example (``deploy/config/eta-example.yaml``).

The same seeded world feeds both generators, so the features in Redis belong to the restaurants
the orders come from:

- ``worker features load --generator models/eta/data.py:features`` writes each restaurant's
  kitchen features (``eta:restaurant:<id>``: average preparation minutes, open orders); a few
  restaurants are left out, so their orders take the configured defaults;
- ``worker produce --generator models/eta/data.py:events --key order_id`` produces orders
  (``worker demo --config deploy/config/eta-example.yaml`` does both).

Only the standard library is used.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

CUISINES = ["PIZZA", "SUSHI", "BURGER", "CURRY", "SALAD"]
RESTAURANTS = 200
UNKNOWN_SHARE = 0.05
"""Share of restaurants with no features in Redis (new on the platform)."""
NEW_COURIER_SHARE = 0.1
"""Share of orders whose courier has no rating yet (null)."""


def restaurant_id(i: int) -> str:
    return f"r-{i:03d}"


def _cuisine(i: int) -> str:
    return CUISINES[i % len(CUISINES)]


def features(seed: int = 1) -> Iterator[dict[str, Any]]:
    """One hash per known restaurant: ``{"key": ..., "fields": {...}}``."""
    rng = random.Random(seed)
    for i in range(RESTAURANTS):
        if i % round(1 / UNKNOWN_SHARE) == 0:
            continue  # new restaurants: the worker uses the configured defaults
        yield {"key": f"eta:restaurant:{restaurant_id(i)}",
               "fields": {"prep_minutes_avg": round(rng.uniform(8, 30), 1), "open_orders": rng.randint(0, 12)}}


def events(n: int = 1000, seed: int = 1) -> Iterator[dict[str, Any]]:
    """``n`` orders, placed now, one after the other."""
    rng = random.Random(seed)
    first_id = 10_000_000_000 + seed * 1_000_000  # a long key: larger than an int32
    for k in range(n):
        i = rng.randrange(RESTAURANTS)
        rating = None if rng.random() < NEW_COURIER_SHARE else round(rng.uniform(3.0, 5.0), 2)
        yield {
            "order_id": first_id + k,
            "placed_at": int(time.time() * 1000),
            "restaurant": {"id": restaurant_id(i), "cuisine": _cuisine(i)},
            "distance_km": round(rng.uniform(0.3, 9.0), 2),
            "items": rng.randint(1, 8),
            "courier": {"id": f"c-{rng.randrange(400):03d}", "rating": rating},
        }
