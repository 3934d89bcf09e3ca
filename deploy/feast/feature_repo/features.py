"""Entities and feature views of the fraud example (models/fraud/data.py), for Feast.

One view per kind of hash that ``worker features load`` writes (``fraud:card:<id>``,
``fraud:merchant:<id>``, ``fraud:device:<id>``), with the same fields: CARD_FIELDS,
MERCHANT_FIELDS and DEVICE_FIELDS of data.py. deploy/feast/materialize.py checks that every
hash of the generator has exactly these fields, so the two cannot drift apart silently.

The Parquet files under ``data/`` are written by materialize.py (paths are relative to the
repository, which Feast resolves against its repo_path).
"""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

# Long enough that a world loaded for a demo is still served weeks later: the example's
# features are a snapshot, not a stream that keeps them fresh.
TTL = timedelta(days=30)

card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.STRING)
merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING)
device = Entity(name="device", join_keys=["device_id"], value_type=ValueType.STRING)


def _source(view: str) -> FileSource:
    return FileSource(name=f"{view}_source", path=f"data/{view}.parquet", timestamp_field="event_timestamp")


# Counts and ages are whole numbers in data.py's world; averages and rates are not.
card_stats = FeatureView(
    name="card_stats",
    entities=[card],
    ttl=TTL,
    online=True,
    source=_source("card_stats"),
    schema=[
        Field(name="txn_count_1h", dtype=Int64),
        Field(name="txn_count_24h", dtype=Int64),
        Field(name="amount_avg_30d", dtype=Float64),
        Field(name="account_age_days", dtype=Int64),
        Field(name="chargebacks_90d", dtype=Int64),
        Field(name="declines_24h", dtype=Int64),
    ],
)

merchant_stats = FeatureView(
    name="merchant_stats",
    entities=[merchant],
    ttl=TTL,
    online=True,
    source=_source("merchant_stats"),
    schema=[
        Field(name="fraud_rate_30d", dtype=Float64),
        Field(name="txn_count_24h", dtype=Int64),
        Field(name="avg_amount_30d", dtype=Float64),
        Field(name="age_days", dtype=Int64),
    ],
)

device_stats = FeatureView(
    name="device_stats",
    entities=[device],
    ttl=TTL,
    online=True,
    source=_source("device_stats"),
    schema=[
        Field(name="cards_seen_24h", dtype=Int64),
        Field(name="age_days", dtype=Int64),
    ],
)
