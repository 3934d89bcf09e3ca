"""Decode cost alone on the shared fraud workload's events: the compiled reader against fastavro.

    python -m bench.decode --n 100000 --repeat 5

Prints microseconds of CPU per event for each, through ``PlainAvroDecoder`` (the worker's own
decode call, size check and end check included), best of ``--repeat`` alternating rounds:
``fastavro``, ``compiled`` (every field), and ``projected``, the compiled reader with the fields
the fraud config reads (``event_fields`` of bench/fraud-contract.yaml, as the worker decodes them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.scenarios import gen_module, workload_args
from worker.codecs.avro import PlainAvroDecoder
from worker.codecs.schemas import load_schema, top_fields
from worker.config.compile import compile_settings, event_fields
from worker.config.settings import load_settings
from worker.records import InputMessage

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "workload" / "fraud" / "transaction.avsc"
CONFIG = ROOT / "bench" / "fraud-contract.yaml"


def fraud_fields() -> frozenset[str] | None:
    """The input fields the worker decodes with the fraud config."""
    settings = load_settings(CONFIG)
    return event_fields(settings, compile_settings(settings))


def run(n: int, repeat: int, fields: frozenset[str] | None) -> dict[str, float]:
    schema = load_schema(SCHEMA)
    events = gen_module().event_stream(workload_args(n, 1))
    messages = [InputMessage(value, key, "tx", 0, i) for i, (key, value, _) in enumerate(events)]
    decoders = {"fastavro": PlainAvroDecoder(schema, compiled=False), "compiled": PlainAvroDecoder(schema),
                "projected": PlainAvroDecoder(schema, fields=fields)}
    best = dict.fromkeys(decoders, float("inf"))
    for _ in range(repeat):
        for name, decode in decoders.items():
            start = time.process_time()
            for message in messages:
                decode(message.value(), message)
            best[name] = min(best[name], (time.process_time() - start) / n * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    fields = fraud_fields()
    result = run(args.n, args.repeat, fields)
    print(json.dumps({"us_per_event": {k: round(v, 3) for k, v in result.items()},
                      "speedup": {k: round(result["fastavro"] / result[k], 2) for k in ("compiled", "projected")},
                      "skipped": sorted(set(top_fields(load_schema(SCHEMA))) - (fields or set()))}))


if __name__ == "__main__":
    main()
