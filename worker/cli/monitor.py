"""``worker monitor``: join ground truth to predictions (run), draw the report, make a drift reference.

    worker monitor --config C                                  # the label join, until stopped
    worker monitor report --config C --out report.html [--from 24h] [--to 2026-11-29T12:00]
    worker monitor reference --config C --out ref.json --data train.npz    # or --from-topic [--events N]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from worker import __version__
from worker.cli.options import command, settings_from
from worker.errors import ToolError
from worker.logs import configure
from worker.startup import check_stop, request_stop

logger = logging.getLogger(__name__)

ACTIONS = ("run", "report", "reference")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def register(sub: Any) -> None:
    p = command(sub, "monitor", "model quality: join labels to predictions for online accuracy (run, the default), "
                "draw a report, or make a drift reference", cmd_monitor)
    p.add_argument("action", nargs="?", choices=ACTIONS, default="run",
                   help="run: the label join until stopped; report: draw the quality report; reference: write "
                        "drift reference bins from a data file or the input topic")
    p.add_argument("--out", type=Path, help="report: .html or .png; reference: the .json file to write")
    p.add_argument("--from", dest="since", metavar="WHEN", help="report: start (ISO time, or 30m/24h/7d ago; "
                   "default: everything kept)")
    p.add_argument("--to", dest="until", metavar="WHEN", help="report: end (ISO time or 30m/24h/7d ago; default now)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, help="reference: a .npz (arrays named as the model inputs, or "
                        "'features') or a .csv (a column per feature, named as in the card's feature_order)")
    source.add_argument("--from-topic", action="store_true", help="reference: score the oldest --events events of "
                        "the input topics through the pipeline (Redis features, the model); nothing is published")
    p.add_argument("--events", type=int, default=10_000, help="reference --from-topic: how many (default 10000)")


def cmd_monitor(args: argparse.Namespace) -> int:
    if args.action == "run":
        return _run(args)
    if args.out is None:
        raise ToolError(f"worker monitor {args.action} needs --out")
    return _report(args) if args.action == "report" else _reference(args)


def _run(args: argparse.Namespace) -> int:
    from worker.app.monitoring import build_monitor, monitor_settings
    from worker.app.telemetry import make_telemetry

    settings = settings_from(args)
    configure(settings.log_level, settings.log_format)
    logger.info("worker monitor %s starting with %s", __version__, args.config)
    for sig in (signal.SIGTERM, signal.SIGINT):  # until the loop runs and takes the signals over
        signal.signal(sig, _stop_starting)
    telemetry = make_telemetry(monitor_settings(settings))
    try:
        runner = build_monitor(settings, telemetry.observers, telemetry.health)
        runner.install_signal_handlers()
        check_stop()
        runner.run(ready=lambda: logger.info("monitor ready"))
    finally:
        telemetry.close()
    return 0


def _stop_starting(signum: int, frame: FrameType | None) -> None:
    request_stop(signal.Signals(signum).name)


def _report(args: argparse.Namespace) -> int:
    from worker.app.monitoring import draw_report

    settings = settings_from(args)
    now = datetime.now(UTC)
    out = draw_report(settings, args.out, parse_when(args.since, now), parse_when(args.until, now))
    print(f"report written to {out}")
    return 0


def parse_when(text: str | None, now: datetime) -> int | None:
    """Epoch ms of an ISO time (UTC unless it says) or of a span ago (``30m``, ``24h``, ``7d``)."""
    if text is None:
        return None
    relative = _RELATIVE.match(text.strip())
    if relative:
        when = now - timedelta(**{_UNITS[relative.group(2)]: float(relative.group(1))})
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ToolError(f"{text!r} is neither an ISO time (2026-11-29T12:00) nor a span ago (30m, 24h, 7d)") \
                from exc
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _reference(args: argparse.Namespace) -> int:
    from worker.app.monitoring import reference_from_data, reference_from_topic

    settings = settings_from(args)
    if args.data is not None:
        reference, rows = reference_from_data(settings, args.data)
        source = str(args.data)
    elif args.from_topic:
        reference, rows = reference_from_topic(settings, args.events, _progress(args.events))
        source = f"topics {', '.join(settings.kafka.input_topics)}"
    else:
        raise ToolError("worker monitor reference needs --data FILE or --from-topic")
    data = reference.to_json(source=source, rows=rows, made_at=datetime.now(UTC).isoformat(timespec="seconds"))
    try:
        args.out.write_text(json.dumps(data, indent=1) + "\n")
    except OSError as exc:
        raise ToolError(f"cannot write {args.out}: {exc}") from exc
    print(f"reference of {len(reference.features)} features and the score from {rows} rows of {source} written to "
          f"{args.out}; point monitoring.reference at it")
    return 0


def _progress(total: int) -> Any:
    def show(seen: int) -> None:
        print(f"\r  {seen}/{total} events read", end="", file=sys.stderr, flush=True)
        if seen >= total:
            print(file=sys.stderr)

    return show
