"""Synthetic payments for the fraud example: cards, merchants, devices and transactions.

One seeded "world" feeds everything, so the features the worker reads from Redis come
from the distribution the model was trained on:

- ``train.py`` fits the model on transactions of a training world;
- ``worker features load --generator models/fraud/data.py:features`` loads the example
  world's feature hashes into Redis, and
  ``worker produce --generator models/fraud/data.py:events`` produces its transactions
  (``worker demo`` does both);
- the tests compute the model input of an event with ``feature_vector`` and compare it
  with what the worker published.

The fraud mechanism: a few cards are compromised (their card details were stolen). A
compromised card shows it in its recent history (bursts of transactions, declines,
chargebacks) and about half of its transactions are fraud: mostly card-not-present,
several times the card's usual amount, at riskier merchants, from devices shared by many
cards (device farms) or never seen before. Brand-new cards (no history in Redis) are a
little riskier too. Every other transaction is fraud with a small base rate.

Only numpy and the standard library are used, so the generators run in the slim
container image too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

CHANNELS = ["POS", "CONTACTLESS", "ATM", "ECOM", "MOTO"]
"""The Channel enum of transaction.avsc; the model sees the index (the config's mapping)."""
CHANNEL_CODES = {name: i for i, name in enumerate(CHANNELS)}
CARD_PRESENT = {"POS", "CONTACTLESS", "ATM"}

CARD_FIELDS = ["txn_count_1h", "txn_count_24h", "amount_avg_30d", "account_age_days", "chargebacks_90d",
               "declines_24h"]
MERCHANT_FIELDS = ["fraud_rate_30d", "txn_count_24h", "avg_amount_30d", "age_days"]
DEVICE_FIELDS = ["cards_seen_24h", "age_days"]
EVENT_FEATURES = ["amount", "card.present", "channel", "merchant.category", "distance_from_home_km"]
FEATURE_ORDER = (EVENT_FEATURES + [f"card.{f}" for f in CARD_FIELDS] + [f"merchant.{f}" for f in MERCHANT_FIELDS]
                 + [f"device.{f}" for f in DEVICE_FIELDS])
"""The model's input columns, in order (the example config feeds them the same way)."""

CARD_DEFAULTS: dict[str, float] = {f: 0 for f in CARD_FIELDS}
MERCHANT_DEFAULTS: dict[str, float] = {"fraud_rate_30d": 0.01, "txn_count_24h": 0, "avg_amount_30d": 50.0,
                                       "age_days": 0}
DEVICE_DEFAULTS: dict[str, float] = {f: 0 for f in DEVICE_FIELDS}
DISTANCE_DEFAULT = -1.0
"""Model input when distance_from_home_km is null (card not present, or no location)."""

KEY_PREFIX = "fraud"
"""Redis keys are ``fraud:card:<id>``, ``fraud:merchant:<id>`` and ``fraud:device:<id>``."""

# merchant category code → (share of merchants, how much fraudsters like it, typical amount)
CATEGORIES = {
    5411: (0.22, 0.5, 45.0),   # grocery stores
    5812: (0.18, 0.4, 30.0),   # restaurants
    5541: (0.10, 0.6, 55.0),   # fuel
    5311: (0.10, 1.0, 70.0),   # department stores
    6011: (0.06, 1.5, 120.0),  # ATM cash
    5732: (0.10, 3.0, 250.0),  # electronics
    5944: (0.04, 3.5, 400.0),  # jewellery
    5816: (0.10, 4.0, 25.0),   # digital goods, games
    4829: (0.05, 5.0, 200.0),  # money transfer
    7995: (0.05, 4.5, 80.0),   # gambling
}
ONLINE_CATEGORIES = {5816, 4829, 7995}
COUNTRIES = {"DE": ("EUR", 0.70), "FR": ("EUR", 0.08), "NL": ("EUR", 0.06), "AT": ("EUR", 0.05),
             "GB": ("GBP", 0.06), "US": ("USD", 0.05)}

WORLD_SEED = 2024
"""The example world that the demo loads into Redis and produces events from."""


@dataclass
class World:
    """Entities as the feature store holds them (only those loaded), plus the hidden facts
    that drive fraud in generated transactions."""

    cards: dict[str, dict[str, float]]
    merchants: dict[str, dict[str, float]]
    devices: dict[str, dict[str, float]]
    card_ids: list[str]
    card_compromised: np.ndarray
    card_new: np.ndarray
    card_avg: np.ndarray
    card_activity: np.ndarray
    merchant_ids: list[str]
    merchant_category: np.ndarray
    merchant_country: list[str]
    merchant_risk: np.ndarray
    farm_devices: list[str]


def card_id(i: int) -> str:
    return f"c-{i:06d}"


def make_world(seed: int = WORLD_SEED, n_cards: int = 10_000, n_merchants: int = 1_000,
               n_farms: int = 150) -> World:
    """A deterministic population for ``seed``."""
    rng = np.random.default_rng(seed)
    cards, compromised, new, avg, activity = _cards(rng, n_cards)
    merchants, mcc, countries, risk = _merchants(rng, n_merchants)
    devices, farms = _devices(rng, n_cards, n_farms, new)
    ids = [card_id(i) for i in range(n_cards)]
    return World({ids[i]: cards[i] for i in range(n_cards) if not new[i]}, merchants, devices, ids, compromised,
                 new, avg, activity, list(merchants), mcc, countries, risk, farms)


def _cards(rng: np.random.Generator, n: int) -> tuple[list[dict[str, float]], np.ndarray, np.ndarray,
                                                       np.ndarray, np.ndarray]:
    compromised = rng.random(n) < 0.03
    new = rng.random(n) < 0.03  # no history in Redis yet
    c = compromised.astype(int)
    count_24h = rng.poisson(2.5, n) + c * rng.poisson(2.0, n)
    count_1h = np.minimum(rng.poisson(0.4, n) + c * rng.poisson(0.6, n), count_24h)
    avg = np.round(rng.lognormal(3.7, 0.6, n), 2)
    age = rng.integers(20, 4000, n)
    chargebacks = rng.poisson(0.05, n) + c * rng.poisson(0.2, n)
    declines = rng.poisson(0.2, n) + c * rng.poisson(0.6, n)
    rows = [{"txn_count_1h": int(count_1h[i]), "txn_count_24h": int(count_24h[i]), "amount_avg_30d": float(avg[i]),
             "account_age_days": int(age[i]), "chargebacks_90d": int(chargebacks[i]), "declines_24h": int(declines[i])}
            for i in range(n)]
    return rows, compromised, new, avg, rng.lognormal(0.0, 1.0, n)


def _merchants(rng: np.random.Generator, n: int) -> tuple[dict[str, dict[str, float]], np.ndarray, list[str],
                                                          np.ndarray]:
    codes = np.array(list(CATEGORIES))
    shares = np.array([v[0] for v in CATEGORIES.values()])
    mcc = rng.choice(codes, n, p=shares / shares.sum())
    bad = rng.random(n) < 0.05
    risk = np.where(bad, rng.beta(3.0, 60.0, n), rng.beta(1.0, 120.0, n))
    typical = np.array([CATEGORIES[int(m)][2] for m in mcc])
    names = list(COUNTRIES)
    weights = np.array([v[1] for v in COUNTRIES.values()])
    countries = [names[k] for k in rng.choice(len(names), n, p=weights / weights.sum())]
    fraud_rate = np.round(risk * rng.gamma(8.0, 1 / 8.0, n), 5)
    volume = rng.poisson(300, n)
    avg = np.round(typical * rng.lognormal(0.0, 0.3, n), 2)
    age = np.where(bad, rng.integers(5, 400, n), rng.integers(30, 6000, n))
    merchants = {f"m-{i:05d}": {"fraud_rate_30d": float(fraud_rate[i]), "txn_count_24h": int(volume[i]),
                                "avg_amount_30d": float(avg[i]), "age_days": int(age[i])} for i in range(n)}
    return merchants, mcc, countries, risk


def _devices(rng: np.random.Generator, n_cards: int, n_farms: int,
             new_cards: np.ndarray) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Each card's own device (``d-<card>``; a new card's is unknown too) and shared farm devices."""
    devices: dict[str, dict[str, float]] = {}
    shared = rng.random(n_cards) < 0.05  # a family tablet, say
    age = rng.integers(1, 1500, n_cards)
    for i in np.flatnonzero(~new_cards):
        devices[f"d-{i:06d}"] = {"cards_seen_24h": 2 if shared[i] else 1, "age_days": int(age[i])}
    farms = [f"d-farm-{j:04d}" for j in range(n_farms)]
    seen = rng.integers(4, 40, n_farms)
    farm_age = rng.integers(0, 30, n_farms)
    for j, device in enumerate(farms):
        devices[device] = {"cards_seen_24h": int(seen[j]), "age_days": int(farm_age[j])}
    return devices, farms


def transactions(world: World, n: int, seed: int) -> Iterator[tuple[dict[str, Any], bool]]:
    """``n`` transactions as Avro-shaped records, each with its hidden fraud label.

    Everything but ``event_time`` (the wall clock when the record is yielded) is
    deterministic for ``(world, seed)``.
    """
    rng = np.random.default_rng(seed)
    activity = world.card_activity / world.card_activity.sum()
    cards = rng.choice(len(world.card_ids), n, p=activity)
    p_fraud = np.where(world.card_compromised[cards], 0.5, np.where(world.card_new[cards], 0.04, 0.002))
    fraud = rng.random(n) < p_fraud
    merchants = _pick_merchants(world, rng, fraud)
    draws = rng.random((n, 4))
    spread = np.where(fraud, rng.lognormal(0.6, 0.9, n), rng.lognormal(0.0, 0.7, n))
    far = np.where(fraud, rng.exponential(150.0, n), rng.exponential(25.0, n))
    for k in range(n):
        record = _transaction(world, k, seed, int(cards[k]), int(merchants[k]), bool(fraud[k]), draws[k],
                              float(spread[k]), float(far[k]))
        yield record, bool(fraud[k])


def _pick_merchants(world: World, rng: np.random.Generator, fraud: np.ndarray) -> np.ndarray:
    appeal = np.array([CATEGORIES[int(m)][1] for m in world.merchant_category])
    bad_weight = appeal * (world.merchant_risk + 0.01)
    legit = rng.integers(0, len(world.merchant_ids), len(fraud))
    crooked = rng.choice(len(world.merchant_ids), len(fraud), p=bad_weight / bad_weight.sum())
    return np.where(fraud, crooked, legit)


_CHANNEL_MIX = {  # card-present and card-not-present shares, legit vs fraud
    False: (("POS", 0.45), ("CONTACTLESS", 0.40), ("ECOM", 0.13), ("MOTO", 0.02)),
    True: (("POS", 0.25), ("CONTACTLESS", 0.10), ("ECOM", 0.55), ("MOTO", 0.10)),
}


def _channel(category: int, fraud: bool, u: float) -> str:
    if category == 6011:
        return "ATM"
    if category in ONLINE_CATEGORIES:
        return "ECOM" if u < 0.9 else "MOTO"
    total = 0.0
    for name, share in _CHANNEL_MIX[fraud]:
        total += share
        if u < total:
            return name
    return "MOTO"


def _device(world: World, card: int, fraud: bool, u: np.ndarray, k: int, seed: int) -> dict[str, Any]:
    if fraud and u[1] < 0.35:
        return {"id": world.farm_devices[int(u[3] * len(world.farm_devices))], "ip_country": None}
    if (fraud and u[1] < 0.75) or (not fraud and u[1] > 0.85):
        return {"id": f"d-new-{seed}-{k}", "ip_country": "US" if fraud else "DE"}
    return {"id": f"d-{card:06d}", "ip_country": "DE"}


def _transaction(world: World, k: int, seed: int, card: int, merchant: int, fraud: bool, u: np.ndarray,
                 spread: float, far: float) -> dict[str, Any]:
    category = int(world.merchant_category[merchant])
    channel = _channel(category, fraud, float(u[0]))
    present = channel in CARD_PRESENT
    base = float(world.card_avg[card]) if category != 6011 else 100.0
    country = world.merchant_country[merchant]
    return {
        "event_id": f"tx-{seed}-{k:08d}",
        "event_time": int(time.time() * 1000),
        "amount": round(max(base * spread, 1.0), 2),
        "currency": COUNTRIES[country][0],
        "channel": channel,
        "card": {"id": world.card_ids[card], "present": present},
        "merchant": {"id": world.merchant_ids[merchant], "category": category, "country": country},
        "device": None if present else _device(world, card, fraud, u, k, seed),
        "distance_from_home_km": round(far, 1) if present and u[2] > 0.05 else None,
    }


def feature_vector(record: dict[str, Any], world: World) -> list[float]:
    """The model input for one event: what the example config makes the worker assemble."""
    card = world.cards.get(record["card"]["id"], CARD_DEFAULTS)
    merchant = world.merchants.get(record["merchant"]["id"], MERCHANT_DEFAULTS)
    device = world.devices.get(record["device"]["id"], DEVICE_DEFAULTS) if record["device"] else DEVICE_DEFAULTS
    distance = record["distance_from_home_km"]
    row = [record["amount"], 1.0 if record["card"]["present"] else 0.0, float(CHANNEL_CODES[record["channel"]]),
           float(record["merchant"]["category"]), DISTANCE_DEFAULT if distance is None else distance]
    row += [float(card.get(f, CARD_DEFAULTS[f])) for f in CARD_FIELDS]
    row += [float(merchant.get(f, MERCHANT_DEFAULTS[f])) for f in MERCHANT_FIELDS]
    row += [float(device.get(f, DEVICE_DEFAULTS[f])) for f in DEVICE_FIELDS]
    return row


def feature_matrix(records: list[dict[str, Any]], world: World) -> np.ndarray:
    """``float32 [N, len(FEATURE_ORDER)]``, rounded from float64 as the worker does."""
    return np.asarray([feature_vector(r, world) for r in records], dtype=np.float64).astype(np.float32)


def feature_hashes(world: World) -> Iterator[dict[str, Any]]:
    """Every loaded entity as ``{"key": ..., "fields": {...}}`` (the feature loader's format)."""
    for kind, table in (("card", world.cards), ("merchant", world.merchants), ("device", world.devices)):
        for entity_id, fields in table.items():
            yield {"key": f"{KEY_PREFIX}:{kind}:{entity_id}", "fields": fields}


# Generators for `worker produce --generator` and `worker features load --generator`.

def events(n: int = 1000, seed: int = 1) -> Iterator[dict[str, Any]]:
    """``n`` transactions of the example world (the stream varies with ``seed``)."""
    for record, _ in transactions(make_world(), n, seed):
        yield record


def features() -> Iterator[dict[str, Any]]:
    """The example world's feature hashes."""
    return feature_hashes(make_world())
