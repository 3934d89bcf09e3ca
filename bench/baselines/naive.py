"""Baseline: the per-message loop of a typical tutorial.

poll one message → decode → two Redis lookups → run the model on one row → encode → produce,
with auto-committed offsets. Correct scores, no batching anywhere.
"""

from __future__ import annotations

import io
import time

import fastavro
import numpy as np
import onnxruntime as ort
import redis
from confluent_kafka import Consumer, Producer

from bench.baselines.common import CARD, MERCHANT, MODEL, PRED, TXN, arguments, now, report, row


def main() -> None:
    args = arguments(__doc__ or "")
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group, "auto.offset.reset": "earliest",
                         "session.timeout.ms": 6000})
    producer = Producer({"bootstrap.servers": args.bootstrap})
    store = redis.Redis.from_url(args.redis)
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    consumer.subscribe([args.input])
    seen, first, last = 0, 0.0, 0.0
    while seen < args.n:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        first = first or now()
        seen += 1
        try:
            event = fastavro.schemaless_reader(io.BytesIO(msg.value()), TXN)
        except Exception:
            continue
        card = store.hmget(f"card:{event['card_id']}", CARD)
        merchant = store.hmget(f"merchant:{event['merchant_id']}", MERCHANT)
        x = np.array([row(event, card, merchant)], dtype=np.float32)
        score = float(session.run(["probabilities"], {"features": x})[0][0, 1])
        out = io.BytesIO()
        fastavro.schemaless_writer(out, PRED, {"event_id": event["event_id"], "card_id": event["card_id"],
                                               "score": score, "is_fraud": score >= 0.5, "model_version": "1",
                                               "scored_at": int(time.time() * 1000)})
        producer.produce(args.output, out.getvalue(), event["card_id"].encode())
        producer.poll(0)
    producer.flush()
    last = now()
    consumer.close()
    report(seen, first, last)


if __name__ == "__main__":
    main()
