"""``worker features load``: feature hashes into Redis."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from worker.app.tools import acl_setuser, entity_matcher, redis_client
from worker.cli.options import command, items_from, settings_from, source_options
from worker.config.settings import WorkerSettings
from worker.devtools.console import ProgressLine, count
from worker.devtools.loader import LoadTally, load_hashes
from worker.errors import ToolError


def register(sub: Any) -> None:
    features = sub.add_parser("features", help="manage the feature store").add_subparsers(dest="action", required=True)
    p = command(features, "load", "write feature hashes to Redis (HSET, pipelined)", cmd_features_load,
                only=("redis_url",))
    source_options(p, "JSON lines like {\"key\": \"card:c1\", \"fields\": {\"f\": 1.5}}")
    p.add_argument("--chunk", type=int, default=1000, help="hashes per pipelined round trip (default 1000)")
    p.add_argument("--replace", action="store_true", help="delete each hash before writing it")
    p = command(features, "acl", "print the ACL SETUSER line of a least-privilege Redis user for this config",
                cmd_features_acl, only=("redis_url",))
    p.add_argument("--user", default="worker", help="the user's name (default worker)")
    p.add_argument("--writer", action="store_true", help="the user `features load` needs (HSET, DEL) instead of "
                                                         "the worker's (HMGET)")


def cmd_features_load(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.chunk < 1:
        raise ToolError("--chunk must be at least 1")
    client = redis_client(settings)
    progress = ProgressLine()
    try:
        tally = load_hashes(client, items_from(args), entity_matcher(settings), args.chunk, args.replace,
                            lambda t: progress.update(t.line()))
    except KeyboardInterrupt:
        progress.done("interrupted")
        return 130
    progress.done(tally.line() + "".join(f"; {name} {count(n)}" for name, n in sorted(tally.per_entity.items())))
    for line in _load_notes(tally, settings):
        print(f"  {line}", file=sys.stderr)
    return 0 if not (tally.rejected or tally.failed) else 1


def cmd_features_acl(args: argparse.Namespace) -> int:
    print(acl_setuser(settings_from(args), args.user, args.writer))
    print(f"then give {args.user} a password: ACL SETUSER {args.user} '>the-password' (and ACL SAVE, with an ACL "
          "file); until then nobody can log in as it", file=sys.stderr)
    return 0


def _load_notes(tally: LoadTally, settings: WorkerSettings) -> list[str]:
    notes = list(tally.problems)
    if tally.per_entity.get("(no entity)"):
        templates = ", ".join(e.key for e in settings.features.values() if e.key) or "none configured"
        notes.append(f"note: {tally.per_entity['(no entity)']} keys match no entity of the config ({templates})")
    if tally.unknown_fields:
        notes.append("note: fields the config does not read: " + ", ".join(sorted(tally.unknown_fields)))
    return notes
