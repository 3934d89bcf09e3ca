"""What every command shares: the config file and its overrides, item sources, exit codes."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from worker.config.settings import WorkerSettings, load_settings
from worker.devtools.sources import Item, generated, json_lines

EXIT_CONFIG = 2
EXIT_STARTUP = 3
EXIT_FENCED = 4
EXIT_INTERRUPTED = 130
EXIT_CODES = """exit codes:
  0    done (run: stopped by a signal after finishing its work)
  1    a command failed: undelivered events, a refused model; batch: some rows dead-lettered;
       models evaluate: a gate failed
  2    the configuration is invalid (every problem is printed with its key), or the command was
       invoked wrongly (an input that is not there or of an unknown format, nothing to resume)
  3    could not start: Kafka, Redis, the model or the Schema Registry not ready in time
  4    fenced: another instance took over this replica's transactional id
  130  interrupted (Ctrl-C) before finishing"""

Command = Callable[[argparse.Namespace], int]

KAFKA = ("bootstrap_servers",)
TOPICS = ("input_topic", "output_topic", "dlq_topic")
_OVERRIDES = {  # option → nested settings key
    "bootstrap_servers": ("kafka", "bootstrap_servers"), "group_id": ("kafka", "group_id"),
    "input_topic": ("kafka", "input_topics"), "output_topic": ("kafka", "output_topic"),
    "dlq_topic": ("kafka", "dlq_topic"), "redis_url": ("redis", "url"),
    "guarantee": ("processing_guarantee",),
}


def config_options(parser: argparse.ArgumentParser, default_config: Path | None = None,
                   only: Collection[str] | None = None) -> None:
    """``--config`` and the overrides of settings. With ``only``, the others are still accepted (one
    list of options serves every command in a script) but left out of ``--help``."""
    parser.add_argument("--config", "-c", type=Path, required=default_config is None, default=default_config,
                        help="YAML or TOML config file" + (f" (default: {default_config})" if default_config else ""))
    options: dict[str, tuple[str, dict[str, Any]]] = {
        "bootstrap_servers": ("--bootstrap-servers", {"help": "overrides kafka.bootstrap_servers"}),
        "redis_url": ("--redis-url", {"help": "overrides redis.url"}),
        "input_topic": ("--input-topic", {"action": "append", "help": "overrides kafka.input_topics (repeatable)"}),
        "output_topic": ("--output-topic", {"help": "overrides kafka.output_topic"}),
        "dlq_topic": ("--dlq-topic", {"help": "overrides kafka.dlq_topic"}),
        "group_id": ("--group-id", {"help": "overrides kafka.group_id"}),
        "guarantee": ("--guarantee", {"choices": ["at-least-once", "exactly-once"],
                                      "help": "overrides processing_guarantee"}),
    }
    for name, (flag, kwargs) in options.items():
        shown = only is None or name in only
        parser.add_argument(flag, **{**kwargs, **({} if shown else {"help": argparse.SUPPRESS})})


def command(sub: Any, name: str, help_text: str, fn: Command,
            only: Collection[str] | None = None) -> argparse.ArgumentParser:
    """A subcommand reading the config file (with the overrides ``only`` names, else all) that runs ``fn``."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    config_options(parser, only=only)
    parser.set_defaults(fn=fn)
    return parser


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


def source_options(parser: argparse.ArgumentParser, file_help: str) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help=file_help)
    source.add_argument("--generator", metavar="FILE.py:FUNCTION",
                        help="a Python function yielding the same items (may take n= and seed=)")
    parser.add_argument("--seed", type=int, help="passed to a generator that takes seed=")


def items_from(args: argparse.Namespace, n: int | None = None) -> Iterator[Item]:
    """The items of ``--file`` or ``--generator``, at most ``n``."""
    if args.file is not None:
        source = json_lines(args.file, getattr(args, "loop", False))
    else:
        source = generated(args.generator, n=n, seed=args.seed)
    return itertools.islice(source, n) if n is not None else source
