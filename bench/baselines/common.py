"""What both baselines share: the shared fraud workload's schemas, model and feature layout,
written out by hand as a user without the worker would."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fastavro

WORKLOAD = Path(__file__).resolve().parents[2].parent / "shared" / "workload" / "fraud"
TXN = fastavro.parse_schema(json.loads((WORKLOAD / "transaction.avsc").read_text()))
PRED = fastavro.parse_schema(json.loads((WORKLOAD / "prediction.avsc").read_text()))
MODEL = WORKLOAD / "model.onnx"
CARD = ["txn_count_1h", "txn_count_24h", "amount_sum_24h", "amount_avg_30d", "distinct_merchants_7d",
        "account_age_days", "chargebacks_90d"]
MERCHANT = ["fraud_rate_30d", "txn_count_24h", "avg_amount_30d", "risk_score"]
MERCHANT_DEFAULTS = [0.02, 0.0, 50.0, 0.5]


def arguments(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--redis", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--n", type=int, required=True, help="stop after this many events")
    return ap.parse_args()


def row(event: dict, card: list, merchant: list) -> list[float]:
    dist = event["distance_from_home_km"]
    return ([event["amount"], float(event["mcc"]), 1.0 if event["card_present"] else 0.0,
             -1.0 if dist is None else dist]
            + [0.0 if v is None else float(v) for v in card]
            + [d if v is None else float(v) for v, d in zip(merchant, MERCHANT_DEFAULTS, strict=True)])


def report(events: int, first: float, last: float) -> None:
    print(json.dumps({"events": events, "throughput_eps": round(events / max(last - first, 1e-9)),
                      "busy_s": round(last - first, 3)}), flush=True)


def now() -> float:
    return time.perf_counter()
