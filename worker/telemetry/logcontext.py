"""Log context of the batch in hand: lines logged while a batch is processed (a retry while Redis
is down, a model failure being isolated) carry its partitions and offsets, and its trace id when
it is traced. The fields are worked out only when such a line is written, so the hot path pays
one context-variable update per batch."""

from __future__ import annotations

from collections.abc import Sequence

from worker.logs import current_scope, set_scope
from worker.records import BatchResult, Delivery, Headers, Message
from worker.runner.observer import Observer
from worker.telemetry.context import describe_ranges, offset_ranges


class BatchScope:
    __slots__ = ("messages", "trace_id")

    def __init__(self, messages: Sequence[Message]) -> None:
        self.messages = messages
        self.trace_id = ""

    def fields(self) -> dict[str, object]:
        out: dict[str, object] = {"batch": " ".join(describe_ranges(offset_ranges(self.messages))),
                                  "batch_size": len(self.messages)}
        if self.trace_id:
            out["trace_id"] = self.trace_id
        return out


def annotate_trace(trace_id: str) -> None:
    """Adds the trace id to the current batch's log context (if there is one)."""
    scope = current_scope()
    if isinstance(scope, BatchScope):
        scope.trace_id = trace_id


class BatchLogContext(Observer):
    """Sets the log scope from ``batch_started`` until the batch is done (or the loop idles)."""

    def batch_started(self, batch: Sequence[Message], received_ns: int) -> Headers | None:
        set_scope(BatchScope(batch))
        return None

    def batch_done(self, batch: Sequence[Message], result: BatchResult, delivery: Delivery) -> None:
        set_scope(None)

    def idle(self) -> None:
        set_scope(None)

    def stopped(self) -> None:
        set_scope(None)
