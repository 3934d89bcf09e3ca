"""Decode cost alone on the shared fraud workload's events: the compiled reader against fastavro.

    python -m bench.decode --n 100000 --repeat 5

Prints microseconds of CPU per event for each, through ``PlainAvroDecoder`` (the worker's own
decode call, size check and end check included), best of ``--repeat`` alternating rounds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.scenarios import gen_module, workload_args
from worker.codecs.avro import PlainAvroDecoder
from worker.codecs.schemas import load_schema
from worker.records import InputMessage

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "workload" / "fraud" / "transaction.avsc"


def run(n: int, repeat: int) -> dict[str, float]:
    schema = load_schema(SCHEMA)
    events = gen_module().event_stream(workload_args(n, 1))
    messages = [InputMessage(value, key, "tx", 0, i) for i, (key, value, _) in enumerate(events)]
    decoders = {"fastavro": PlainAvroDecoder(schema, compiled=False), "compiled": PlainAvroDecoder(schema)}
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
    result = run(args.n, args.repeat)
    print(json.dumps({"us_per_event": {k: round(v, 3) for k, v in result.items()},
                      "speedup": round(result["fastavro"] / result["compiled"], 2)}))


if __name__ == "__main__":
    main()
