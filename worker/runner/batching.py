"""When to close a batch: full, or when waiting longer would break the latency budget.

Batches amortise fixed costs (one Redis round trip, one model run) over many events, but an
event that waits for company is late by that long. The policy learns three things online:
the arrival rate, the processing cost of a batch (fixed + per event) and how long the broker
takes to acknowledge outputs. A partial batch waits only while the oldest event can still be
scored and acknowledged within the budget, and only if more events are actually expected in
that time: under low load a lone event is scored at once.

When the broker itself is slow (acknowledgements slower than ``Adaptive.slow_ack_s``), the budget
is lost anyway, and closing batches early only hurts: librdkafka sends a produce request per output
partition, so every tiny batch is up to one request per partition for a broker that is already
behind. Seen in the SIGKILL soak on tansu (issue 16): acknowledgements at p50 100-200 ms, batches of
3-6 events, tansu at 135 % CPU and 129k of 200k events unscored after 240 s. Measured on tansu
alone (3 idempotent producers, 4,000 msg/s over 6 partitions): bursts of 4 messages made 2,310
produce requests/s and cost tansu 56 % of a core; bursts of 65 (what 50 ms gathers at 1,333/s)
made 346 requests/s at 10 %. So while acknowledgements are slow, a partial batch lingers for a
share of the acknowledgement time (capped): the events were going to wait for the broker anyway,
and the broker gets fewer, larger requests. Once acknowledgements are fast again
(below half the threshold, so that the policy does not flap), the latency budget rules again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.kafka.port import Consumer
from worker.records import Message

_ALPHA = 0.2  # weight of the newest observation in the moving averages
# The wait is planned for a slow batch, not an average one: the acknowledgement and a small batch's
# processing are each counted at their moving mean plus two moving mean deviations (as TCP's
# retransmission timer plans for a round trip; Jacobson 1988, RFC 6298). Planned at the mean, a
# batch spent the whole budget waiting whenever the broker was at its average, so any slower
# acknowledgement overran it. On noida-db at 5,000 events/s with a 3 ms budget (python -m bench
# --broker noida --latency-only): p50 2.6-3.0 ms before, 2.0-2.3 ms after, batches of 9 events
# instead of 11-12, the same CPU per event. The p99 did not measurably move (5.1-10.2 ms in twelve
# runs before, 5.0-13.5 ms in seven after): on that 2-core machine it is set by the broker's
# acknowledgement stalls and the shared cores.
_BETA = 0.25  # weight of the newest deviation
_DEVIATIONS = 2.0
# Acknowledgements are the only evidence that the broker is slow. With none for this long (nothing was in
# flight: the worker idled), the verdict is stale: in the latency benchmark on noida-db, a warm-up backlog's
# slow acknowledgements kept batches lingering 100 ms into the measured run (p99 115 ms, 124 ms in its
# first 5 s, 6-17 ms after).
_STALE_ACK_S = 1.0
# One slow acknowledgement is a hiccup (the end of a backlog the broker is still writing, a pause), not a slow
# broker: a single 0.5 s one after the latency benchmark's warm-up made its first measured second linger.
_SLOW_IN_A_ROW = 3


@dataclass(frozen=True)
class Adaptive:
    """How batching adapts to a slow broker (``batch.adaptive*`` settings)."""

    enabled: bool = True
    slow_ack_s: float = 0.02
    """Acknowledgements slower than this (moving average) mean the broker is the bottleneck. 20 ms is
    four times a healthy tansu's median (3.7-4.7 ms measured), so that its p99 (~48 ms) does not tip it."""
    linger_share: float = 0.5
    """While the broker is slow, a partial batch waits up to this share of the acknowledgement time."""
    max_linger_s: float = 0.1
    """... and never longer than this."""


FIXED = Adaptive(enabled=False)
"""Batching by the latency budget alone, whatever the broker does."""


@dataclass
class _Ewma:
    value: float
    deviation: float = 0.0  # moving mean of |sample - value|, as TCP's retransmission timer keeps it

    def add(self, sample: float) -> None:
        error = sample - self.value
        self.value += _ALPHA * error
        self.deviation += _BETA * (abs(error) - self.deviation)

    def high(self) -> float:
        """A cost planned for most samples, not the average one."""
        return self.value + _DEVIATIONS * self.deviation


class BatchPolicy:
    def __init__(self, max_events: int, budget_s: float, adaptive: Adaptive | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_events = max_events
        self.budget_s = budget_s
        self.adaptive = adaptive or FIXED
        self.slow = False  # the broker is slow: batches linger (``linger_s``)
        self.rate = _Ewma(0.0)  # events per second arriving
        self.per_event_s = _Ewma(20e-6)
        self.fixed_s = _Ewma(300e-6)
        self.ack_s = _Ewma(1e-3)
        self._last_arrival: float | None = None
        self._clock = clock
        self._last_ack = 0.0
        self._slow_acks = 0  # acknowledgements in a row slower than ``slow_ack_s``

    def arrived(self, count: int, now: float) -> None:
        """``count`` events were just received (or none, after an idle poll)."""
        if self._last_arrival is not None and now > self._last_arrival:
            self.rate.add(count / (now - self._last_arrival))
        self._last_arrival = now

    def processed(self, count: int, seconds: float) -> None:
        """A batch of ``count`` took ``seconds`` from decode to handing outputs to the producer."""
        if count >= 50:
            self.per_event_s.add(max(seconds - self.fixed_s.value, 0.0) / count)
        else:
            self.fixed_s.add(max(seconds - self.per_event_s.value * count, 0.0))

    def acknowledged(self, seconds: float, size: int = 1) -> None:
        """The broker acknowledged the last of a batch's ``size`` outputs ``seconds`` after it was produced.
        Only partial batches count: a backlog's batches of thousands take the broker longer to write
        whatever its health (on noida-db, 2,000 outputs took over 20 ms), and those are never held anyway."""
        if size > self.max_events // 2:
            return
        self.ack_s.add(seconds)
        self._last_ack = self._clock()
        a = self.adaptive
        self._slow_acks = self._slow_acks + 1 if seconds > a.slow_ack_s else 0
        if not a.enabled:
            return
        # Hysteresis: slow above the threshold, fast again only below half of it.
        if self.slow:
            self.slow = self.ack_s.value > a.slow_ack_s / 2
        else:
            self.slow = self.ack_s.value > a.slow_ack_s and self._slow_acks >= _SLOW_IN_A_ROW

    def linger_s(self) -> float:
        """How long a partial batch may wait for more while the broker is slow (0 while it is not)."""
        if self.slow and self._clock() - self._last_ack > _STALE_ACK_S:
            self.slow = False
        if not self.slow:
            return 0.0
        return min(self.adaptive.linger_share * self.ack_s.value, self.adaptive.max_linger_s)

    def cost(self, count: int) -> float:
        """What a batch of ``count`` is planned to take, from decode to acknowledgement: a slow one
        (the fixed part and the acknowledgement at their mean plus deviations)."""
        return self.fixed_s.high() + self.per_event_s.value * count + self.ack_s.high()

    def wait_s(self, size: int) -> float:
        """How long a batch of ``size`` whose oldest event was just received may wait for more:
        within the latency budget, or longer while the broker is slow."""
        if size >= self.max_events or self.budget_s <= 0:
            return 0.0
        spare = max(self.budget_s - self.cost(size + 1), self.linger_s())
        if spare <= 0 or self.rate.value * spare < 1.0:
            return 0.0
        # Wait no longer than it takes for the batch to fill at the current rate.
        return min(spare, (self.max_events - size) / self.rate.value)


class BatchConsumer:
    """Hands out bounded batches: what is buffered at once, else the first event to arrive;
    then, if the policy's latency budget allows and more events are expected, a little more."""

    def __init__(self, consumer: Consumer, policy: BatchPolicy, idle_timeout_s: float = 0.1) -> None:
        self.consumer = consumer
        self.policy = policy
        self._idle = idle_timeout_s

    def next_batch(self) -> tuple[list[Message], int]:
        """The batch and when its first event was received (``perf_counter_ns``; 0 if empty)."""
        consumer, policy = self.consumer, self.policy
        messages = consumer.consume(policy.max_events, 0)
        if not messages:
            first = consumer.poll(self._idle)
            if first is None:
                policy.arrived(0, time.perf_counter())
                return [], 0
            messages = [first, *consumer.consume(policy.max_events - 1, 0)]
        received_ns = time.perf_counter_ns()
        policy.arrived(len(messages), received_ns / 1e9)
        wait = policy.wait_s(len(messages))
        if wait > 0:
            more = consumer.consume(policy.max_events - len(messages), wait)
            policy.arrived(len(more), time.perf_counter())
            messages += more
        return messages, received_ns
