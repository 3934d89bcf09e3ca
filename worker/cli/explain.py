"""``worker explain``: why the model scores one event as it does, for people debugging a model.

    worker explain --config C --event event.json            # a bar chart in the terminal
    worker explain --config C --event event.json --out why.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from worker.cli.options import command, settings_from
from worker.errors import ToolError

BAR = 40  # characters of the longest bar


def register(sub: Any) -> None:
    p = command(sub, "explain", "explain one event's score: each feature's contribution (its features come from "
                "Redis, as for worker run)", cmd_explain, only=("redis_url",))
    p.add_argument("--event", type=Path, required=True, help="a JSON file holding one event in the input schema")
    p.add_argument("--out", type=Path, help="also draw the contributions as a PNG here")
    p.add_argument("--all", action="store_true", help="show every feature (default: the 12 largest)")


def cmd_explain(args: argparse.Namespace) -> int:
    from worker.app.tools import explain_event

    try:
        record = json.loads(args.event.read_text())
    except (OSError, ValueError) as exc:
        raise ToolError(f"cannot read the event from {args.event}: {exc}") from exc
    explained = explain_event(settings_from(args), record)
    shown = explained.contributions if args.all else explained.contributions[:12]
    print(f"score {explained.score:.4f} ({'flagged' if explained.flagged else 'not flagged'}); "
          f"reasons: {', '.join(explained.reasons) or 'none'}; contributions by {explained.method}:")
    for line in bars(shown):
        print(line)
    if args.out is not None:
        draw(shown, explained.score, args.out)
        print(f"chart written to {args.out}")
    return 0


def bars(contributions: list[tuple[str, float]]) -> list[str]:
    """One line per feature: name, signed value, a bar to the right (up) or left (down) of the axis."""
    if not contributions:
        return []
    width = max(len(name) for name, _ in contributions)
    largest = max(abs(v) for _, v in contributions) or 1.0
    lines = []
    for name, value in contributions:
        n = round(abs(value) / largest * BAR)
        left, right = ("█" * n).rjust(BAR) if value < 0 else " " * BAR, "█" * n if value > 0 else ""
        lines.append(f"  {name:<{width}} {value:+.4f} {left}│{right}")
    return lines


def draw(contributions: list[tuple[str, float]], score: float, out: Path) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ToolError("--out needs matplotlib: pip install 'inference-worker[report]'") from exc
    names = [name for name, _ in reversed(contributions)]
    values = [value for _, value in reversed(contributions)]
    fig = Figure(figsize=(7, 0.35 * len(names) + 1.2))
    ax = fig.add_subplot()
    ax.barh(names, values, color=["#c0392b" if v > 0 else "#2471a3" for v in values])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("contribution to the score (up: red)")
    ax.set_title(f"score {score:.4f}")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=120)
    except OSError as exc:
        raise ToolError(f"cannot write {out}: {exc}") from exc
