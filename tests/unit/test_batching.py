"""The batch policy: the latency budget on a healthy broker, lingering while the broker is slow.

The policy is pure: times are passed in (a fake clock), acknowledgement times reported as the
delivery thread would.
"""

from __future__ import annotations

import pytest

from worker.kafka.memory import MemoryBroker
from worker.runner.batching import FIXED, Adaptive, BatchConsumer, BatchPolicy

ADAPTIVE = Adaptive(slow_ack_s=0.02, linger_share=0.5, max_linger_s=0.1)


def policy(budget_s: float = 0.003, adaptive: Adaptive = ADAPTIVE, rate: float = 1000.0,
           max_events: int = 2000) -> BatchPolicy:
    """A policy that has seen ``rate`` events per second arrive for a while (10 per poll)."""
    p = BatchPolicy(max_events, budget_s, adaptive)
    for tick in range(100):
        p.arrived(10, tick * 10 / rate)
    return p


def acks(p: BatchPolicy, seconds: float, n: int = 30) -> None:
    for _ in range(n):
        p.acknowledged(seconds)


def test_on_a_fast_broker_a_partial_batch_waits_within_the_budget_only() -> None:
    p = policy()
    acks(p, 0.0005)

    assert not p.slow
    assert 0 < p.wait_s(5) <= 0.003 - p.cost(6) + 1e-9


def test_a_jittery_broker_leaves_less_to_wait_than_a_steady_one_with_the_same_mean() -> None:
    steady, jittery = policy(rate=10_000), policy(rate=10_000)
    acks(steady, 0.0012, n=60)
    for i in range(60):
        jittery.acknowledged(0.0008 if i % 2 else 0.0016)  # a mean of 1.2 ms too, half of them 1.6 ms

    assert steady.ack_s.value == pytest.approx(jittery.ack_s.value, abs=1e-4)
    assert steady.wait_s(5) > 0.0012  # the budget less a steady 1.2 ms and the processing
    assert 0 < jittery.wait_s(5) < steady.wait_s(5) - 0.0006  # planned for a 2 ms acknowledgement


def test_a_broker_whose_slow_acknowledgements_would_overrun_the_budget_leaves_nothing_to_wait() -> None:
    p = policy(rate=10_000)
    for i in range(60):
        p.acknowledged(0.0004 if i % 2 else 0.002)  # a mean of 1.2 ms, but half of them 2 ms

    assert p.wait_s(5) == 0.0


def test_a_broker_acknowledging_at_tansu_speed_is_not_slow_and_nothing_waits_past_the_budget() -> None:
    p = policy()
    acks(p, 0.0045)  # tansu's p50 when healthy: the budget is already spent on the broker

    assert not p.slow
    assert p.wait_s(5) == 0.0


def test_while_acknowledgements_are_slow_a_partial_batch_lingers_for_half_of_them() -> None:
    p = policy()
    acks(p, 0.06)

    assert p.slow
    assert p.wait_s(5) == pytest.approx(0.03, rel=0.01)


def test_lingering_is_capped() -> None:
    p = policy()
    acks(p, 0.4)  # the soak's worst: half of it would hold events 200 ms more

    assert p.wait_s(5) == pytest.approx(0.1)


def test_lingering_stops_when_the_batch_would_be_full_at_the_arrival_rate() -> None:
    p = policy(max_events=40)
    acks(p, 0.15)

    assert p.wait_s(10) == pytest.approx(30 / 1000, rel=0.01)  # 30 more events at 1000/s
    assert p.wait_s(40) == 0.0


def test_a_lone_event_is_not_held_for_company_that_is_not_coming() -> None:
    p = policy(rate=5.0)  # 5 events/s: fewer than one expected in the 50 ms it could linger
    acks(p, 0.1)

    assert p.slow
    assert p.wait_s(1) == 0.0


def test_back_to_the_budget_once_acknowledgements_are_fast_again_not_before() -> None:
    p = policy()
    acks(p, 0.15)
    acks(p, 0.015)  # under the threshold, above half of it: still slow (no flapping at the edge)
    assert p.slow and p.wait_s(5) > 0.003

    acks(p, 0.0045)
    assert not p.slow
    assert p.wait_s(5) == 0.0


def test_a_slow_verdict_without_fresh_acknowledgements_expires() -> None:
    """After an idle spell (nothing in flight, so no acknowledgements) the next batch keeps to the
    budget: the warm-up's slow acknowledgements once made the first measured second linger 100 ms."""
    now = [0.0]
    p = BatchPolicy(2000, 0.003, ADAPTIVE, clock=lambda: now[0])
    for tick in range(100):
        p.arrived(10, tick * 0.01)
    acks(p, 0.15)
    now[0] = 0.9
    assert p.wait_s(5) > 0.003  # still recent: lingering

    now[0] = 1.1
    assert p.wait_s(5) <= 0.003 and not p.slow
    acks(p, 0.15)  # slow again, freshly observed
    assert p.slow and p.wait_s(5) > 0.003


def test_a_backlogs_full_batches_do_not_make_the_broker_look_slow() -> None:
    p = policy(max_events=2000)
    for _ in range(30):
        p.acknowledged(0.05, 2000)
    assert not p.slow and p.wait_s(5) <= 0.003

    for _ in range(30):
        p.acknowledged(0.05, 20)
    assert p.slow


def test_one_slow_acknowledgement_is_a_hiccup_three_in_a_row_a_slow_broker() -> None:
    p = policy()
    acks(p, 0.001)
    p.acknowledged(0.5)  # the average jumps past the threshold on its own
    assert not p.slow and p.wait_s(5) <= 0.003
    acks(p, 0.001, 2)

    acks(p, 0.5, 3)
    assert p.slow


def test_fixed_batching_never_lingers_and_a_zero_budget_never_waits() -> None:
    fixed, zero = policy(adaptive=FIXED), policy(budget_s=0.0)
    acks(fixed, 0.15)
    acks(zero, 0.15)

    assert not fixed.slow and fixed.wait_s(5) == 0.0
    assert zero.wait_s(5) == 0.0


@pytest.mark.parametrize(("ack_s", "expected"), [(0.001, [2, 2]), (0.2, [4])])
def test_the_consumer_gathers_what_arrives_while_the_batch_lingers(ack_s: float, expected: list[int]) -> None:
    """Two events arrive before each fetch: a fast broker gets them batch by batch, a slow one's
    batch lingers for the next two."""
    broker = MemoryBroker()
    broker.create_topic("in", 1)
    consumer = broker.consumer("group")
    consumer.subscribe(["in"], _Ignore())
    consumer.poll(0)  # joins: the partition is assigned
    p = policy(budget_s=0.0005)
    acks(p, ack_s)
    batches = BatchConsumer(consumer, p)

    def two_arrive() -> None:
        broker.append("in", b"e")
        broker.append("in", b"e")
    consumer.on_poll = two_arrive

    sizes = [len(batches.next_batch()[0]) for _ in range(len(expected))]

    assert sizes == expected


class _Ignore:
    def assigned(self, partitions: list[tuple[str, int]]) -> None: ...

    def revoked(self, partitions: list[tuple[str, int]]) -> None: ...

    def lost(self, partitions: list[tuple[str, int]]) -> None: ...
