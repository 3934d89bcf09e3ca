"""Timing a broker's acknowledgements: records produced at a fixed rate with the worker's producer
settings, each timed from ``produce`` to its delivery report (the latency benchmark's broker-only
floor, and ``bench.broker_quirks autosave``)."""

from __future__ import annotations

import threading
import time

from confluent_kafka import Producer

from worker.kafka.config import producer_config


def timed_acknowledgements(bootstrap: str, topic: str, rate: float, seconds: float,
                           size: int) -> list[tuple[float, float]]:
    """(seconds from the start when it was sent, milliseconds to its acknowledgement) of each record
    of ``size`` bytes sent to ``topic`` at ``rate`` a second for ``seconds``, in the order acknowledged."""
    producer = Producer(producer_config(bootstrap, {}, {}))
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    threading.Thread(target=_serve_reports, args=(producer, stop), daemon=True).start()
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        sent = time.perf_counter()
        producer.produce(topic, b"x" * size, b"%d" % (i % 1000), on_delivery=lambda err, msg, sent=sent: samples.append(
            (sent - start, (time.perf_counter() - sent) * 1e3)))
        if (ahead := (i + 1) / rate - (time.perf_counter() - start)) > 0:
            time.sleep(ahead)
    producer.flush(30)
    stop.set()
    return samples


def _serve_reports(producer: Producer, stop: threading.Event) -> None:
    while not stop.is_set():
        producer.poll(0.01)
