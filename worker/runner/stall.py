"""Why assigned partitions make no progress while events wait on them, and output partitions
whose records stay invisible to read_committed readers.

A worker that owns partitions with events waiting and receives nothing must say why, not sit
silent: on noida-db a read_committed consumer can wait minutes behind a transaction nobody ends
(README, broker notes). ``StallWatch`` notes which partitions handed out events; every ``every_s``
it asks the consumer where the quiet ones stand and names, per partition, what reading waits for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from worker.kafka.port import BrokerError, Consumer, Ends, PartitionEnds, PartitionProgress
from worker.records import TP, Message

NO_POSITION = "no_fetch_position"
OPEN_TRANSACTION = "open_transaction"
NOT_FETCHED = "not_fetched"
STALL_REASONS = (NO_POSITION, OPEN_TRANSACTION, NOT_FETCHED)
OUTPUT_HELD = "output_open_transaction"
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


def held_output(tp: TP, before: PartitionEnds | None, now: PartitionEnds, period_s: float) -> Stall | None:
    """A transaction open on ``tp`` all period: its last stable offset stayed put, with records after it
    at both looks.

    The looks are further apart than a healthy transaction lasts (``OutputWatch``), and a
    transaction's end moves the last stable offset past where it stood, so one that stays put is a
    transaction nobody ends: a crashed producer's, which the broker aborts after its
    ``transaction.timeout.ms`` or when a producer with its transactional id starts. A last stable
    offset of 0 tells nothing: tansu reports 0 while any transaction is open on a partition
    (``python -m bench.broker_quirks open-lso``). So a transaction left open on a partition's very
    first record goes unreported, on Kafka too."""
    if before is None or before.end is None or now.stable_end is None or now.end is None or not now.stable_end:
        return None
    # The same transaction both times: open at the first look too, and not ended since (an end moves it).
    if before.stable_end != now.stable_end or now.stable_end >= before.end:
        return None
    return Stall(tp, OUTPUT_HELD, f"records from offset {now.stable_end} on are invisible to read_committed readers "
                 f"(the log ends at {now.end}): the last stable offset has not moved for {period_s:.0f} s, so a "
                 "transaction has been open on it that long (a crashed producer's, which the broker aborts after its "
                 "transaction.timeout.ms or when a producer with its transactional id starts; or this worker's own, "
                 "if its commits fail)")


class OutputWatch:
    """Once per ``every_s``, the partitions of ``topics`` (the worker's outputs) whose records a
    read_committed reader cannot see because a transaction stays open on them: the worker's own
    outputs, scored and acknowledged, that consumers downstream wait for.

    Looks are never closer than ``longest_transaction_s`` (a healthy transaction of the worker's
    own, from its opening to its commit: the commit interval plus the commit timeout) and a quarter
    more, so that a transaction open at two looks has outlived any healthy one: a commit interval
    longer than the stall period would otherwise report the worker's own transactions."""

    def __init__(self, ends: Ends, topics: Sequence[str], every_s: float, longest_transaction_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ends, self.topics, self.clock = ends, list(topics), clock
        self.every_s = max(every_s, 1.25 * longest_transaction_s)
        self._last = clock()
        self._before: dict[TP, PartitionEnds] = {}

    def check(self) -> list[Stall] | None:
        """None until a period has passed (or if the broker does not answer); then the held partitions."""
        now_s = self.clock()
        period = now_s - self._last
        if period < self.every_s:
            return None
        self._last = now_s
        try:
            counts = self.ends.topics(_ASK_TIMEOUT_S)
            partitions = [(t, p) for t in self.topics for p in range(counts.get(t, 0))]
            now = self.ends.ends(partitions, _ASK_TIMEOUT_S)
        except BrokerError:
            return None
        answered = {tp: e for tp, e in now.items() if e.stable_end is not None and e.end is not None}
        if partitions and not answered:
            return None  # no answer in time: say nothing rather than "none held", and keep the last look
        before = self._before
        self._before = {**before, **answered}  # a partition the broker did not answer for keeps its last look
        return [s for tp, ends in answered.items() if (s := held_output(tp, before.get(tp), ends, period)) is not None]
