"""``worker produce``: events from JSON lines or a generator, encoded with the input schema."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from worker.app.tools import make_sender
from worker.cli.options import KAFKA, command, items_from, settings_from, source_options
from worker.devtools.console import ProgressLine
from worker.devtools.sender import send_all
from worker.errors import ToolError


def register(sub: Any) -> None:
    p = command(sub, "produce", "encode events (JSON lines) with the input schema and produce them", cmd_produce,
                only=(*KAFKA, "input_topic"))
    source_options(p, "one JSON object per line, shaped like the input schema's records")
    p.add_argument("--n", type=int, help="stop after N events (a generator's default: 1000)")
    p.add_argument("--rate", type=float, default=0, help="events per second (default: as fast as possible)")
    p.add_argument("--key", metavar="FIELD", help="event field (dotted path) to use as the message key")
    p.add_argument("--loop", action="store_true", help="start the file again at its end (until --n or Ctrl-C)")
    p.add_argument("--poison", type=float, default=0.0, metavar="SHARE",
                   help="replace this share of values by truncated Avro, to see dead letters")


def cmd_produce(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.poison and not 0 <= args.poison <= 1:
        raise ToolError("--poison is a share between 0 and 1")
    n = args.n if args.n is not None else (1000 if args.generator else None)
    sender = make_sender(settings, args.key, args.poison, args.seed or 0)
    progress = ProgressLine()
    print(f"producing to {sender.topic} at {settings.kafka.bootstrap_servers}", file=sys.stderr)
    try:
        tally = send_all(sender, items_from(args, n), args.rate, lambda t: progress.update(t.line()))
    except KeyboardInterrupt:
        progress.done(sender.tally.line() + " (interrupted)")
        return 130
    progress.done(tally.line())
    for problem in tally.problems:
        print(f"  {problem}", file=sys.stderr)
    if tally.rejected + tally.failed > len(tally.problems):
        print(f"  ({tally.rejected} rejected and {tally.failed} undelivered in all)", file=sys.stderr)
    return 0 if not (tally.rejected or tally.failed or tally.sent > tally.delivered) else 1
