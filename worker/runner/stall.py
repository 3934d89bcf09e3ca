"""Why assigned partitions make no progress while events wait on them.

A worker that owns partitions with events waiting and receives nothing must say why, not sit
silent: on noida-db a read_committed consumer can wait minutes behind a transaction nobody ends
(README, broker notes). ``StallWatch`` notes which partitions handed out events; every ``every_s``
it asks the consumer where the quiet ones stand and names, per partition, what reading waits for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from worker.kafka.port import Consumer, PartitionProgress
from worker.records import TP, Message

NO_POSITION = "no_fetch_position"
OPEN_TRANSACTION = "open_transaction"
NOT_FETCHED = "not_fetched"
STALL_REASONS = (NO_POSITION, OPEN_TRANSACTION, NOT_FETCHED)
_ASK_TIMEOUT_S = 1.0  # per partition, at most once per period: the loop polls again soon enough
_MOST_ASKED = 8  # partitions asked about per period: a broker that answers nothing holds the loop ~8 s at most


@dataclass(frozen=True)
class Stall:
    partition: TP
    reason: str  # one of STALL_REASONS
    detail: str


def stall_of(tp: TP, p: PartitionProgress) -> Stall | None:
    """What reading ``tp`` waits for, if events wait on it; None if it is caught up (or nothing is known)."""
    end = p.end if p.end is not None else p.stable_end
    if p.offsets_unanswered and (end or 0) > 0:
        return Stall(tp, NO_POSITION, f"no fetch position: the group's committed offset does not come (the log "
                     f"ends at {end}; the coordinator does not answer, or holds the request behind a join in "
                     "progress, or a transaction committing offsets to the group is still open)")
    if p.position is None:
        return None  # where reading stands is not known: nothing to say
    if p.stable_end is not None and p.position < p.stable_end:
        return Stall(tp, NOT_FETCHED, f"{p.stable_end - p.position} readable events from offset {p.position} "
                     "are not fetched (the broker returns nothing)")
    if end is not None and p.position < end:
        return Stall(tp, OPEN_TRANSACTION, f"waiting for an open transaction: read_committed stops at the last "
                     f"stable offset {p.stable_end}, the log ends at {end}")
    return None


class StallWatch:
    """Tracks which assigned partitions handed out events; ``check`` names the stalls once per period."""

    def __init__(self, consumer: Consumer, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.consumer, self.every_s, self.clock = consumer, every_s, clock
        self._quiet: set[TP] = set()  # assigned, nothing received since the last check
        self._assigned: set[TP] = set()
        self._last = clock()

    def assigned(self, partitions: Iterable[TP]) -> None:
        """Watched from the next period on: a partition just assigned has had no time to fetch."""
        self._assigned.update(partitions)

    def restart(self) -> None:
        """A new period from now: the loop held every partition paused meanwhile, on purpose."""
        self._last, self._quiet = self.clock(), set(self._assigned)

    def revoked(self, partitions: Iterable[TP]) -> None:
        self._assigned.difference_update(partitions)
        self._quiet.difference_update(partitions)

    def received(self, batch: Sequence[Message]) -> None:
        if self._quiet:
            self._quiet.difference_update((m.topic(), m.partition()) for m in batch)

    def check(self) -> list[Stall] | None:
        """None until a period has passed; then the stalls of partitions quiet all period (maybe none)."""
        if self.clock() - self._last < self.every_s:
            return None
        quiet = sorted(self._quiet)[:_MOST_ASKED]
        self._last, self._quiet = self.clock(), set(self._assigned)
        if not quiet:
            return []
        progress = self.consumer.progress(quiet, _ASK_TIMEOUT_S)
        return [s for tp, p in progress.items() if (s := stall_of(tp, p)) is not None]
