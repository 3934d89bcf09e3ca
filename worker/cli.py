"""The ``worker`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from worker import __version__
from worker.errors import ConfigError, ProducerFenced, StartupError, WorkerError
from worker.logs import configure
from worker.settings import WorkerSettings, load_settings

logger = logging.getLogger("worker.cli")

EXIT_CONFIG = 2
EXIT_STARTUP = 3
EXIT_FENCED = 4

_OVERRIDES = {  # option → nested settings key
    "bootstrap_servers": ("kafka", "bootstrap_servers"), "group_id": ("kafka", "group_id"),
    "input_topic": ("kafka", "input_topics"), "output_topic": ("kafka", "output_topic"),
    "dlq_topic": ("kafka", "dlq_topic"), "redis_url": ("redis", "url"),
    "guarantee": ("processing_guarantee",),
}


def _config_options(parser: argparse.ArgumentParser, default_config: Path | None = None) -> None:
    parser.add_argument("--config", "-c", type=Path, required=default_config is None, default=default_config,
                        help="YAML or TOML config file" + (f" (default: {default_config})" if default_config else ""))
    parser.add_argument("--bootstrap-servers", help="overrides kafka.bootstrap_servers")
    parser.add_argument("--redis-url", help="overrides redis.url")
    parser.add_argument("--input-topic", action="append", help="overrides kafka.input_topics (repeatable)")
    parser.add_argument("--output-topic", help="overrides kafka.output_topic")
    parser.add_argument("--dlq-topic", help="overrides kafka.dlq_topic")
    parser.add_argument("--group-id", help="overrides kafka.group_id")
    parser.add_argument("--guarantee", choices=["at-least-once", "exactly-once"],
                        help="overrides processing_guarantee")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for option, path in _OVERRIDES.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def settings_from(args: argparse.Namespace) -> WorkerSettings:
    return load_settings(args.config, overrides(args))


def cmd_run(args: argparse.Namespace) -> int:
    launched_at = time.time()
    from worker.app import run

    settings = settings_from(args)
    configure(settings.log_level, settings.log_format)
    logger.info("worker %s starting with %s", __version__, args.config)
    run(settings, args.stats_file, launched_at)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from worker.compile import compile_settings

    settings = settings_from(args)
    compiled = compile_settings(settings)
    k = settings.kafka
    tensors = ", ".join(f"{t.name}[N{'' if t.rank == 1 else f',{len(t.columns)}'}] {t.dtype}" for t in compiled.tensors)
    print(f"config OK: {args.config}")
    print(f"  kafka   {k.bootstrap_servers}: {', '.join(k.input_topics)} -> {k.output_topic} (dead letters: "
          f"{k.dlq_topic}), group {k.group_id}, {settings.processing_guarantee}")
    print(f"  model   {compiled.model.name} v{compiled.model.version}: {tensors}")
    entities = ", ".join(f"{e.name} ({e.template.template}, {len(e.fields)} fields)" for e in compiled.entities)
    print(f"  features {entities or 'none'}")
    print(f"  output  {', '.join(compiled.builder.fields)} keyed by {settings.output.key or 'the input key'}")
    print(f"  telemetry {describe_telemetry(settings)}")
    return 0


def describe_telemetry(settings: WorkerSettings) -> str:
    t, tr = settings.telemetry, settings.telemetry.tracing
    served = f"/metrics /livez /readyz on {t.host}:{t.port}" if t.port else "metrics and health off (telemetry.port 0)"
    if not tr.enabled:
        return f"{served}; tracing off"
    where = {"kafka": f"Kafka topic {tr.topic}", "none": "nowhere (exporter none)"}.get(tr.exporter, tr.exporter)
    upstream = " and batches with a sampled upstream event" if tr.follow_upstream else ""
    return f"{served}; tracing {tr.sample_ratio:g} of batches{upstream} to {where}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worker", description=__doc__)
    parser.add_argument("--version", action="version", version=f"worker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
        "run": ("consume, score and publish until stopped", cmd_run),
        "check-config": ("validate a config file without connecting anywhere", cmd_check_config),
    }
    parsers = {}
    for name, (help_text, fn) in commands.items():
        parsers[name] = p = sub.add_parser(name, help=help_text, description=help_text)
        _config_options(p)
        p.set_defaults(fn=fn)
    parsers["run"].add_argument("--stats-file", type=Path, help="write run statistics (throughput, latency "
                                "percentiles, stage times, batch sizes, peak RSS) as JSON here on exit")
    from worker import devtools
    from worker.models import cli as models

    devtools.add_commands(sub, _config_options)
    models.add_commands(sub, _config_options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        if logging.getLogger().handlers:  # for a log collector; a bare terminal gets the line below only
            logger.error("cannot start: %s", exc)
        print(f"startup error: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except ProducerFenced as exc:  # another instance took over: stop, and let the orchestrator decide
        logger.error("stopped: %s", exc)
        print(f"fenced: {exc}", file=sys.stderr)
        return EXIT_FENCED
    except WorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, and quiet the final flush too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
