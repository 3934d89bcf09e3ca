"""How a topic range decides, message by message, what it takes: the broker's offsets for times are
a hint that is checked, and the messages' own timestamps decide (``worker.kafka.reader``)."""

from __future__ import annotations

from worker.kafka.reader import PartitionRange, Verdict

FROM, TO = 1_000, 2_000


def verdicts(limit: PartitionRange, messages: list[tuple[int, int]]) -> list[Verdict]:
    return [limit.admit(offset, timestamp) for offset, timestamp in messages]


def test_a_time_range_starts_at_the_first_message_at_or_after_from_and_ends_at_the_first_at_or_after_to() -> None:
    limit = PartitionRange(end_time=TO, from_time=FROM)
    found = verdicts(limit, [(0, 500), (1, 999), (2, 1_000), (3, 900), (4, 1_999), (5, 2_000)])
    # an older timestamp after the start is taken, as Kafka's offsets_for_times would place the start
    assert found == [Verdict.SKIP, Verdict.SKIP, Verdict.TAKE, Verdict.TAKE, Verdict.TAKE, Verdict.END]


def test_the_brokers_hint_is_trusted_only_when_the_message_before_it_is_older_than_from() -> None:
    trusted = PartitionRange(from_time=FROM, probe=41)
    assert verdicts(trusted, [(41, 999), (42, 1_000)]) == [Verdict.SKIP, Verdict.TAKE]
    assert PartitionRange(from_time=FROM, probe=41).admit(41, 1_000) is Verdict.REWIND, "the hint may be late"
    assert PartitionRange(from_time=FROM, probe=41).admit(43, 10) is Verdict.REWIND, "not the message asked for"


def test_offset_ends_and_the_unbounded_end() -> None:
    assert verdicts(PartitionRange(end_offset=3), [(1, 0), (2, 0), (3, 0)]) == [Verdict.TAKE, Verdict.TAKE,
                                                                                 Verdict.END]
    assert PartitionRange.ending(1, {0: 5}) == PartitionRange(), "a partition not named in --to: to its end"
    assert PartitionRange.ending(0, {-1: 7}).end_offset == 7
    assert PartitionRange.ending(0, 2_000).end_time == 2_000
    assert PartitionRange.ending(0, "earliest").end_offset == 0
