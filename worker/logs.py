"""Log formatting for the CLI (the only place that configures logging).

Text lines are ``time level logger: message key=value ...``; JSON lines carry the same
fields. Values passed with ``extra=`` become fields; secrets never reach a log call. While a
batch is processed, lines also carry its context (partitions, offsets, trace id) from the
current ``LogScope``, computed only when a line is actually written.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Protocol


class LogScope(Protocol):
    def fields(self) -> dict[str, object]:
        """Fields for a line logged inside this scope."""


_scope: ContextVar[LogScope | None] = ContextVar("worker_log_scope", default=None)


def set_scope(scope: LogScope | None) -> None:
    """Lines logged from now on (in this thread or task) carry ``scope``'s fields; None ends it."""
    _scope.set(scope)


def current_scope() -> LogScope | None:
    return _scope.get()


class ScopeFilter(logging.Filter):
    """Adds the current scope's fields to a record, never overriding fields it already has."""

    def filter(self, record: logging.LogRecord) -> bool:
        scope = _scope.get()
        if scope is not None:
            for key, value in scope.fields().items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}" + (f" {extras}" if extras else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {"time": record.created, "level": record.levelname, "logger": record.name,
                                    "message": record.getMessage(), **_extras(record)}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ScopeFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("worker").setLevel(level)
