"""Baseline: a hand-written batched loop, as a careful engineer would write it in an afternoon.

consume up to 1000 → decode all → one redis-py pipeline of HMGETs → one model run →
encode → produce → flush → commit. At-least-once, like the worker.
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
                         "session.timeout.ms": 6000, "enable.auto.commit": False})
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5})
    store = redis.Redis.from_url(args.redis)
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    consumer.subscribe([args.input])
    seen, first = 0, 0.0
    while seen < args.n:
        messages = [m for m in consumer.consume(1000, 0.1) if not m.error()]
        if not messages:
            continue
        first = first or now()
        seen += len(messages)
        events = []
        for m in messages:
            try:
                events.append(fastavro.schemaless_reader(io.BytesIO(m.value()), TXN))
            except Exception:
                continue
        pipe = store.pipeline(transaction=False)
        for e in events:
            pipe.hmget(f"card:{e['card_id']}", CARD)
            pipe.hmget(f"merchant:{e['merchant_id']}", MERCHANT)
        found = pipe.execute()
        x = np.array([row(e, found[2 * i], found[2 * i + 1]) for i, e in enumerate(events)], dtype=np.float32)
        scores = session.run(["probabilities"], {"features": x})[0][:, 1] if events else []
        scored_at = int(time.time() * 1000)
        for e, score in zip(events, scores, strict=True):
            out = io.BytesIO()
            fastavro.schemaless_writer(out, PRED, {"event_id": e["event_id"], "card_id": e["card_id"],
                                                   "score": float(score), "is_fraud": bool(score >= 0.5),
                                                   "model_version": "1", "scored_at": scored_at})
            producer.produce(args.output, out.getvalue(), e["card_id"].encode())
        producer.flush()
        consumer.commit(asynchronous=False)
    last = now()
    consumer.close()
    report(seen, first, last)


if __name__ == "__main__":
    main()
