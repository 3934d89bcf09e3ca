"""``worker topics create``: the configured topics."""

from __future__ import annotations

import argparse
from typing import Any

from worker.app.tools import create_topics
from worker.cli.options import KAFKA, TOPICS, command, settings_from
from worker.errors import ToolError


def register(sub: Any) -> None:
    topics = sub.add_parser("topics", help="manage the configured topics").add_subparsers(dest="action", required=True)
    p = command(topics, "create", "create the input, output and dead-letter topics, and the monitor's labels and "
                "joined topics (existing ones are kept)", cmd_topics_create, only=(*KAFKA, *TOPICS))
    p.add_argument("--partitions", type=int, default=3, help="partitions of each new topic (default 3)")
    p.add_argument("--replication-factor", type=int, default=1, help="replicas of each new topic (default 1)")


def cmd_topics_create(args: argparse.Namespace) -> int:
    if args.partitions < 1 or args.replication_factor < 1:
        raise ToolError("--partitions and --replication-factor must be at least 1")
    settings = settings_from(args)
    for line in create_topics(settings, args.partitions, args.replication_factor):
        print(line)
    return 0
