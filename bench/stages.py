"""Time each pipeline stage on the shared fraud workload, without Kafka.

Runs ``Pipeline.process`` over in-memory messages with the real Redis feature store and the
real ONNX model, and prints microseconds per event for decode, features, assemble,
inference and encode (and shadow). Used to profile the hot path in isolation from broker noise:

    python -m bench.stages --redis redis://127.0.0.1:6379/0 --n 100000 --batch 2000
    python -m bench.stages --redis ... --canary 0.1     # cost of a canary on 10% of keys
    python -m bench.stages --redis ... --shadow         # cost of a shadow scoring every event
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.scenarios import gen_module, workload_args
from worker.app.components import make_pipeline, make_store
from worker.config.compile import compile_settings
from worker.config.settings import load_settings
from worker.inference import OnnxModel
from worker.pipeline.pipeline import Pipeline
from worker.records import InputMessage
from worker.serving import Serving

ROOT = Path(__file__).resolve().parents[1]


def workload_messages(n: int, seed: int = 1) -> list[InputMessage]:
    events = gen_module().event_stream(workload_args(n, seed))
    return [InputMessage(value, key, "tx", 0, i) for i, (key, value, _) in enumerate(events)]


def fraud_pipeline(redis_url: str, cpu: bool = False, canary: float = 0.0, shadow: bool = False) -> Pipeline:
    """The worker's pipeline on the fraud contract config, with the real Redis store and model
    (and, for ``canary``/``shadow``, a second session of the same file as the candidate)."""
    overrides: dict[str, Any] = {"redis": {"url": redis_url}, "model": {"threads": 1} if cpu else {}}
    settings = load_settings(ROOT / "bench" / "fraud-contract.yaml", overrides)
    clock = time.thread_time_ns if cpu else time.perf_counter_ns
    compiled = compile_settings(settings)
    pipeline = make_pipeline(settings, compiled, make_store(settings), clock)
    if canary or shadow:
        candidate = OnnxModel(settings.model.onnx_path(), compiled.model.name, "candidate", settings.model.threads)
        pipeline.slot.set(Serving(compiled.model, candidate if canary else None, canary,
                                  candidate if shadow else None))
    return pipeline


def run(redis_url: str, n: int, batch: int, repeat: int, cpu: bool, canary: float = 0.0,
        shadow: bool = False) -> dict[str, float]:
    pipeline = fraud_pipeline(redis_url, cpu, canary, shadow)
    messages = workload_messages(n)
    best: dict[str, float] = defaultdict(lambda: float("inf"))
    for _ in range(repeat):
        totals: dict[str, float] = defaultdict(float)
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(0, len(messages), batch):
            for timing in pipeline.process(messages[i:i + batch]).timings:
                totals[timing.stage] += timing.seconds
        totals["total"] = time.perf_counter() - start
        totals["cpu"] = time.process_time() - cpu_start
        for stage, seconds in totals.items():
            best[stage] = min(best[stage], seconds / len(messages) * 1e6)
    return dict(best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", required=True, help="Redis URL with the workload's features loaded")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpu", action="store_true", help="time stages in this thread's CPU time (one ONNX thread): "
                    "steadier than wall time on a busy machine")
    ap.add_argument("--canary", type=float, default=0.0, help="share of keys scored by a canary (0: none)")
    ap.add_argument("--shadow", action="store_true", help="with a shadow model scoring every event")
    args = ap.parse_args()
    result = run(args.redis, args.n, args.batch, args.repeat, args.cpu, args.canary, args.shadow)
    print(json.dumps({"us_per_event": {k: round(v, 3) for k, v in result.items()},
                      "events_per_s": round(1e6 / result["total"])}))


if __name__ == "__main__":
    main()
