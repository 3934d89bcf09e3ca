"""``worker run`` and ``worker check-config``."""

from __future__ import annotations

import argparse
import logging
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

from worker import __version__
from worker.cli.options import command, settings_from
from worker.config.compile import compile_settings
from worker.config.settings import WorkerSettings
from worker.errors import ConfigError
from worker.logs import configure
from worker.startup import request_stop

logger = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = command(sub, "run", "consume, score and publish until stopped", cmd_run)
    p.add_argument("--stats-file", type=Path, help="write run statistics (throughput, latency percentiles, stage "
                   "times, batch sizes, peak RSS) as JSON here on exit")
    p.add_argument("--stats-every", type=float, metavar="SECONDS", help="also rewrite the --stats-file summary "
                   "this often while running (a killed worker leaves its figures up to then)")
    command(sub, "check-config", "validate a config file without connecting anywhere", cmd_check_config)


def cmd_run(args: argparse.Namespace) -> int:
    launched_at = time.time()
    from worker.app.worker import run as run_worker

    settings = settings_from(args)
    configure(settings.log_level, settings.log_format)
    logger.info("worker %s starting with %s", __version__, args.config)
    for sig in (signal.SIGTERM, signal.SIGINT):  # until the loop runs and takes the signals over
        signal.signal(sig, _stop_starting)
    run_worker(settings, args.stats_file, launched_at, args.stats_every)
    return 0


def _stop_starting(signum: int, frame: FrameType | None) -> None:
    """A signal while starting (waiting for Redis or Kafka, say): nothing to finish, stop at once."""
    request_stop(signal.Signals(signum).name)


def cmd_check_config(args: argparse.Namespace) -> int:
    from worker.app import explain, monitoring
    from worker.app.kafka import unstable_transactional_id

    settings = settings_from(args)
    compiled = compile_settings(settings)
    k = settings.kafka
    tensors = ", ".join(f"{t.name}[N{'' if t.rank == 1 else f',{len(t.columns)}'}] {t.dtype}" for t in compiled.tensors)
    redis = describe_redis(settings)
    print(f"config OK: {args.config}")
    print(f"  kafka   {k.bootstrap_servers}: {', '.join(k.input_topics)} -> {k.output_topic} (dead letters: "
          f"{k.dlq_topic}), group {k.group_id}, {settings.processing_guarantee}")
    warning = unstable_transactional_id(settings)
    if warning:
        print(f"  warning {warning}")
    print(f"  redis   {redis}")
    print(f"  model   {compiled.model.name} v{compiled.model.version} (version from {compiled.version_from}): "
          f"{tensors}")
    print(f"  features{' none' if not compiled.entities else ''}")
    for entity in compiled.entities:
        print(f"    {entity.describe()}")
    print(f"  output  {', '.join(compiled.builder.fields)} keyed by {settings.output.key or 'the input key'}")
    print(f"  telemetry {describe_telemetry(settings)}")
    print(f"  explain {explain.describe(settings, compiled)}")
    print(f"  monitoring {monitoring.describe(settings, compiled)}")
    return 0


def describe_redis(settings: WorkerSettings) -> str:
    from worker.app.components import redis_where

    r = settings.redis
    try:
        where = redis_where(settings)
    except ValueError as exc:
        raise ConfigError.at("redis.url", str(exc)) from exc
    if not r.cluster:
        return where
    reads = "replicas (READONLY), masters where a slot has none" if r.read_from_replicas else "masters"
    return (f"Redis Cluster, seed nodes {where}: slot map from CLUSTER SLOTS, one pipeline per node per batch, "
            f"reads from {reads}")


def describe_telemetry(settings: WorkerSettings) -> str:
    t, tr = settings.telemetry, settings.telemetry.tracing
    served = f"/metrics /livez /readyz on {t.host}:{t.port}" if t.port else "metrics and health off (telemetry.port 0)"
    if not tr.enabled:
        return f"{served}; tracing off"
    where = {"kafka": f"Kafka topic {tr.topic}", "none": "nowhere (exporter none)"}.get(tr.exporter, tr.exporter)
    upstream = " and batches with a sampled upstream event" if tr.follow_upstream else ""
    return f"{served}; tracing {tr.sample_ratio:g} of batches{upstream} to {where}"
