"""The ``worker`` command line: one parser with every command, and the exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from worker import __version__
from worker.cli import batch, demo, explain, features, models, monitor, produce, reference, run, tail, topics
from worker.cli.options import EXIT_CODES, EXIT_CONFIG, EXIT_FENCED, EXIT_INTERRUPTED, EXIT_STARTUP
from worker.errors import ConfigError, ProducerFenced, StartupError, UsageError, WorkerError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worker", description="The streaming inference worker and its tools.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"worker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (run, batch, monitor, explain, topics, features, produce, tail, demo, reference, models):
        module.register(sub)
    return parser


def _report(what: str, exc: Exception) -> None:
    """Once: through the log when ``worker run`` configured one (a collector reads it), else as a line."""
    if logging.getLogger().handlers:
        logger.error("%s: %s", what, exc)
    else:
        print(f"{what}: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        _report("cannot start", exc)
        return EXIT_STARTUP
    except ProducerFenced as exc:  # another instance took over: stop, and let the orchestrator decide
        _report("fenced", exc)
        return EXIT_FENCED
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except WorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, and quiet the final flush too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
