"""``worker config-reference``: every configuration key as Markdown."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from worker.config import reference
from worker.errors import ToolError


def register(sub: Any) -> None:
    p = sub.add_parser("config-reference", help="print every configuration key as Markdown")
    p.add_argument("--update", type=Path, metavar="FILE.md", help="rewrite the reference section of this file instead")
    p.set_defaults(fn=cmd_config_reference)


def cmd_config_reference(args: argparse.Namespace) -> int:
    if args.update is None:
        print(reference.markdown(), end="")
        return 0
    try:
        changed = reference.update(args.update)
    except (OSError, ValueError) as exc:
        raise ToolError(str(exc)) from exc
    print(f"{args.update}: {'updated' if changed else 'already up to date'}", file=sys.stderr)
    return 0
