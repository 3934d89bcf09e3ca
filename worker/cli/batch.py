"""``worker batch``: score a bounded input (a file, or a topic range) with the worker's own pipeline.

    worker batch --config C --input events.avro --output predictions.avro
    worker batch --config C --input events.jsonl --output scores.parquet --dead-letters bad.jsonl
    worker batch --config C --input kafka:transactions --from 2026-11-28T00:00 --to 2026-11-29T00:00 \\
                 --output kafka:backfill --model-version 2
    worker batch --config C --input events.avro --output predictions.avro --resume   # after an interruption
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from worker.cli.options import EXIT_INTERRUPTED, command, settings_from
from worker.devtools.console import ProgressLine, count
from worker.logs import configure

logger = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = command(sub, "batch", "score a file or a topic range with the worker's pipeline, config and feature store, "
                "and exit (0: every row scored, 1: some dead-lettered, 2: a configuration or usage error such as "
                "an input that is not there, an unknown extension or nothing to resume)", cmd_batch)
    p.add_argument("--input", required=True, metavar="SRC", help="events: .avro (container file), .jsonl, .parquet, "
                   "or kafka:TOPIC (read without joining a group)")
    p.add_argument("--output", required=True, metavar="DST", help="predictions, in the output schema: .avro, .jsonl, "
                   ".parquet or kafka:TOPIC")
    p.add_argument("--dead-letters", type=Path, metavar="PATH",
                   help="rows that could not be scored, as JSON lines (default: DST.dead-letters.jsonl)")
    p.add_argument("--from", dest="start", metavar="WHEN", help="kafka input: earliest (default), latest, an ISO time, "
                   "an offset, or partition:offset pairs (0:100,1:250)")
    p.add_argument("--to", dest="end", metavar="WHEN", help="kafka input: where to stop (excluded); default latest")
    p.add_argument("--model-version", help="score with this version of the model repository")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run after its last completed chunk")


def cmd_batch(args: argparse.Namespace) -> int:
    from worker.app.batch import BatchJob, run_batch, summary

    settings = settings_from(args)
    configure("WARNING", settings.log_format)
    job = BatchJob(args.input, args.output, args.dead_letters, args.start, args.end, args.model_version, args.resume)
    line = ProgressLine()
    started = time.monotonic()

    def report(progress: Any, share: float | None) -> None:
        line.update(_progress(progress.rows, progress.dead, share, time.monotonic() - started))

    try:
        progress = run_batch(settings, job, report)
    except KeyboardInterrupt:
        line.done("interrupted: rerun with --resume to continue after the last completed chunk")
        return EXIT_INTERRUPTED
    line.done(summary(progress))
    return 1 if progress.dead else 0


def _progress(rows: int, dead: int, share: float | None, seconds: float) -> str:
    speed = rows / seconds if seconds > 0 else 0.0
    text = f"{count(rows)} rows, {count(speed)} rows/s, {count(dead)} dead letters"
    if share:
        left = seconds * (1 - share) / share
        text += f", {share:.0%} (ETA {left:,.0f} s)"
    return text
