"""The hooks through which telemetry, the model lifecycle and benchmarks listen to the loop."""

from __future__ import annotations

from collections.abc import Sequence

from worker.records import TP, BatchResult, Delivery, Headers, Message, StageTiming
from worker.runner.stall import Stall


class Observer:
    """Listens to the loop's units of work (metrics, traces, progress logs); override what you need.

    ``batch_acked`` runs on the delivery-report thread; the others on the loop's thread."""

    def started(self) -> None:
        """The worker subscribed and is about to consume."""

    def batch_started(self, batch: Sequence[Message], received_ns: int) -> Headers | None:
        """A batch was consumed and is about to be processed; headers returned here are added to
        every output and dead letter it produces (a trace context, for instance)."""
        return None

    def idle(self) -> None:
        """A poll found no events: the loop is alive and has caught up with what was fetched."""

    def batch_done(self, batch: Sequence[Message], result: BatchResult, delivery: Delivery) -> None:
        """A batch was processed and its outputs handed to the producer (``result.timings`` has every
        stage); ``delivery.acked_ns`` is set later, when the broker acknowledges them all."""

    def batch_acked(self, delivery: Delivery) -> None:
        """The broker acknowledged every output of a batch."""

    def checkpoint_done(self, timing: StageTiming, committed: bool) -> None:
        """A checkpoint finished; ``committed`` is False if offsets could not be committed safely."""

    def dependency_down(self, what: str, error: Exception) -> None:
        """A batch is held because a dependency failed: ``what`` is ``redis``, ``schema_registry``
        or ``kafka`` (outputs unacknowledged)."""

    def partitions_changed(self, assigned: list[TP], revoked: list[TP]) -> None:
        """Partitions were assigned to, or taken from, this worker."""

    def rejoined(self, waited_s: float) -> None:
        """The worker left and joined the group again: no assignment came ``waited_s`` after joining."""

    def stalled(self, stalls: Sequence[Stall]) -> None:
        """Once per ``stall_report_s``: the assigned partitions that had events waiting and handed out none
        for that long, each with what its reading waits for (empty: none)."""

    def outputs_held(self, held: Sequence[Stall]) -> None:
        """Once per ``stall_report_s`` in exactly-once mode: the output partitions whose last stable offset
        stayed put all period with records after it (a transaction left open; empty: none)."""

    def stopped(self) -> None:
        """The worker has committed its last offsets and left the group."""
