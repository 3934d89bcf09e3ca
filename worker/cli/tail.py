"""``worker tail``: predictions or dead letters as JSON lines."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from worker.app.tools import topic_decoder, topic_reader
from worker.cli.options import KAFKA, command, settings_from
from worker.codecs.avro import Decoder
from worker.errors import EventError


def register(sub: Any) -> None:
    p = command(sub, "tail", "print predictions (or dead letters) as JSON lines", cmd_tail,
                only=(*KAFKA, "input_topic", "output_topic", "dlq_topic"))
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest message, not the newest")
    p.add_argument("--n", type=int, help="stop after N messages")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--topic", help="read this topic instead of kafka.output_topic")
    which.add_argument("--dlq", action="store_true", help="read the dead-letter topic, with the dlq.* headers")
    p.add_argument("--meta", action="store_true", help="wrap each record with its partition, offset and key")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="stop after S seconds without a message")


def render(message: Any, decode: Decoder, dead_letter: bool, meta: bool) -> dict[str, Any]:
    """A message as a JSON-ready dict: the decoded record, or the raw bytes and why they did not decode."""
    try:
        record: dict[str, Any] = {"value": decode(message.value(), message)}
    except EventError as exc:
        raw = message.value() or b""
        record = {"value": None, "undecodable": exc.reason, "value_hex": raw[:64].hex(), "value_bytes": len(raw)}
    if not (meta or dead_letter or "undecodable" in record):
        return dict(record["value"])
    key = message.key()
    out = {"topic": message.topic(), "partition": message.partition(), "offset": message.offset(),
           "key": key.decode(errors="replace") if key is not None else None}
    if dead_letter:
        out["headers"] = {k: (v.decode(errors="replace") if isinstance(v, bytes) else v)
                          for k, v in (message.headers() or [])}
    return {**out, **record}


def cmd_tail(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    k = settings.kafka
    topic = args.topic or (k.dlq_topic if args.dlq else k.output_topic)
    decode = topic_decoder(settings, topic)
    reader = topic_reader(settings, [topic], args.from_beginning)
    print(f"reading {topic} at {k.bootstrap_servers} (Ctrl-C to stop)", file=sys.stderr)
    shown, last = 0, time.monotonic()
    try:
        while args.n is None or shown < args.n:
            if args.idle_timeout is not None and time.monotonic() - last > args.idle_timeout:
                break
            for message in reader.read()[: None if args.n is None else args.n - shown]:
                print(json.dumps(render(message, decode, topic == k.dlq_topic, args.meta), default=str), flush=True)
                shown, last = shown + 1, time.monotonic()
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        reader.close()
    return 0
