"""The monitor's state in Redis: the prediction ↔ label join, the totals, the accuracy windows and
the history the report draws.

Shared by every ``worker monitor`` replica and kept across restarts, so replicas need no
co-partitioning (predictions are keyed by card, labels by event) and a killed monitor picks
up where it was. Each prediction or label is one Lua script call, atomic and idempotent: a
record read twice (at-least-once delivery after a crash) is recognised and counted once.

Keys (``p`` is ``monitoring.key_prefix``):

- ``p e:<event id>``: hash of the prediction (``s`` score, ``m`` model, ``v`` version, ``t``
  scored at) and the label (``y`` 1/0, ``l`` labelled at), and ``j`` once joined (``matched`` or
  ``late``). Until joined it expires twice the wait after it was last written, so that a label
  after the wait is still recognised as late rather than unknown; once joined, ``KEPT_MS`` later
  (long enough to recognise a record read again after a crash).
- ``p pending``: sorted set of labels waiting for their prediction, by label time; one is counted
  unmatched and dropped (``sweep``) once predictions scored ``unmatched_after`` after it have been
  seen (``p watermark``, the latest ``scored_at`` read) and its own has not. Event time, not the
  clock: a monitor catching up on a backlog of predictions does not give up on labels too early.
- ``p n:received|matched|late|unmatched``: the group's totals.
- ``p w:<model>|<version>``: the last ``window`` joined (score, label) pairs of a version, newest first,
  expiring a wait after its last join (a retired version's figures go away); ``p versions`` lists
  the versions that had one.
- ``p h:drift``, ``p h:accuracy``: streams of JSON snapshots (capped), and ``p lock:<kind>``
  so that one replica per interval writes a snapshot.

The scripts touch keys they compute (one event's hash, the pending set, a version's window),
so they need a single Redis (or a cluster's single shard), not a Redis Cluster.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from redis.exceptions import RedisClusterException

logger = logging.getLogger(__name__)

TOTALS = ("received", "matched", "late", "unmatched")
KEPT_MS = 86_400_000

_RESULT = """
local function joined(key, state, replay)
  local h = redis.call('HMGET', key, 's', 'm', 'v', 't', 'y', 'l')
  return {state, h[1], h[2], h[3], h[4], h[5], h[6], replay}
end
"""

_JOIN = _RESULT + """
local p, kind, id = ARGV[1], ARGV[2], ARGV[3]
local at, ttl, wait, window = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local kept = tonumber(ARGV[8])
local key = p .. 'e:' .. id
local mine = (kind == 'p') and 's' or 'y'
if redis.call('HEXISTS', key, mine) == 1 then
  local state = redis.call('HGET', key, 'j')
  if state then return joined(key, state, 'again') end
  return {'duplicate'}
end
if kind == 'p' then
  redis.call('HSET', key, 's', ARGV[9], 'm', ARGV[10], 'v', ARGV[11], 't', at)
  local mark = tonumber(redis.call('GET', p .. 'watermark') or '0')
  if at > mark then redis.call('SET', p .. 'watermark', at) end
else
  redis.call('INCR', p .. 'n:received')
  redis.call('HSET', key, 'y', ARGV[9], 'l', at)
end
redis.call('PEXPIRE', key, ttl)
local h = redis.call('HMGET', key, 's', 'm', 'v', 't', 'y', 'l')
if not h[1] or not h[5] then
  if kind == 'l' then redis.call('ZADD', p .. 'pending', at, id) end
  return {'held'}
end
redis.call('ZREM', p .. 'pending', id)
local state = 'matched'
if tonumber(h[6]) - tonumber(h[4]) > wait then state = 'late' end
redis.call('HSET', key, 'j', state)
redis.call('PEXPIRE', key, kept)
redis.call('INCR', p .. 'n:' .. state)
if state == 'matched' then
  local version = h[2] .. '|' .. h[3]
  redis.call('LPUSH', p .. 'w:' .. version, h[1] .. ' ' .. h[5])
  redis.call('LTRIM', p .. 'w:' .. version, 0, window - 1)
  redis.call('PEXPIRE', p .. 'w:' .. version, wait)
  redis.call('SADD', p .. 'versions', version)
end
return joined(key, state, 'new')
"""

_SWEEP = """
local p, after, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local mark = tonumber(redis.call('GET', p .. 'watermark') or '0')
local ids = redis.call('ZRANGEBYSCORE', p .. 'pending', '-inf', mark - after, 'LIMIT', 0, limit)
local unmatched = 0
for _, id in ipairs(ids) do
  redis.call('ZREM', p .. 'pending', id)
  local key = p .. 'e:' .. id
  if redis.call('HEXISTS', key, 's') == 0 then
    redis.call('DEL', key)
    unmatched = unmatched + 1
  end
end
if unmatched > 0 then redis.call('INCRBY', p .. 'n:unmatched', unmatched) end
return unmatched
"""


@dataclass(frozen=True)
class Prediction:
    event_id: str
    model: str
    version: str
    score: float
    scored_at: int
    """Epoch milliseconds."""


@dataclass(frozen=True)
class Label:
    event_id: str
    positive: bool
    labelled_at: int
    """Epoch milliseconds."""


@dataclass(frozen=True)
class Joined:
    """A prediction with its label. ``state`` is ``matched`` or ``late``; ``replay`` is True when the
    join had been made before (a record read again after a crash): not counted again."""

    event_id: str
    state: str
    model: str
    version: str
    score: float
    label: bool
    scored_at: int
    labelled_at: int
    replay: bool

    def to_json(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "model_name": self.model, "model_version": self.version,
                "score": self.score, "label": self.label, "scored_at": self.scored_at,
                "labelled_at": self.labelled_at, "late": self.state == "late"}


@dataclass(frozen=True)
class JoinTimes:
    """How long records wait, in milliseconds."""

    wait_ms: int
    """After scoring, a label still counts; later ones are late."""
    unmatched_after_ms: int
    """A label waits this long for its prediction."""
    window: int
    """Joined pairs kept per version."""


class MonitorStore:
    def __init__(self, client: Any, prefix: str, times: JoinTimes | None = None, history_entries: int = 10_080) -> None:
        self.client = client
        self.prefix = prefix
        self.times = times or JoinTimes(7 * 86_400_000, 3_600_000, 10_000)
        self.history_entries = history_entries
        self._join = client.register_script(_JOIN)
        self._sweep = client.register_script(_SWEEP)

    def ping(self) -> None:
        self.client.ping()

    def add(self, predictions: Sequence[Prediction], labels: Sequence[Label]) -> list[Joined | None]:
        """Records predictions then labels (one round trip); per record, in that order, the join it
        completed, or None (held for its other half, or a duplicate)."""
        t = self.times
        timing = [2 * t.wait_ms, t.wait_ms, t.window, KEPT_MS]
        pipe = self.client.pipeline(transaction=False)
        for p in predictions:
            self._join(args=[self.prefix, "p", p.event_id, p.scored_at, *timing, repr(p.score), p.model, p.version],
                       client=pipe)
        for label in labels:
            self._join(args=[self.prefix, "l", label.event_id, label.labelled_at, *timing, int(label.positive)],
                       client=pipe)
        ids = [p.event_id for p in predictions] + [label.event_id for label in labels]
        return [_joined(event_id, reply) for event_id, reply in zip(ids, pipe.execute(), strict=True)]

    def sweep(self, limit: int = 10_000) -> int:
        """Counts as unmatched the labels whose prediction has not come in time; returns how many."""
        return int(self._sweep(args=[self.prefix, self.times.unmatched_after_ms, limit]))

    def totals(self) -> dict[str, int]:
        values = self.client.mget([f"{self.prefix}n:{name}" for name in TOTALS])
        return {name: int(v or 0) for name, v in zip(TOTALS, values, strict=True)}

    def versions(self) -> list[tuple[str, str]]:
        """The versions with a window (a retired version's expires a wait after its last join)."""
        members = sorted(m.decode() for m in self.client.smembers(f"{self.prefix}versions"))
        pipe = self.client.pipeline(transaction=False)
        for member in members:
            pipe.exists(f"{self.prefix}w:{member}")
        alive = pipe.execute() if members else []
        gone = [m for m, present in zip(members, alive, strict=True) if not present]
        if gone:
            self.client.srem(f"{self.prefix}versions", *gone)
        return [(m.rpartition("|")[0], m.rpartition("|")[2]) for m, present in zip(members, alive, strict=True)
                if present]

    def window(self, model: str, version: str) -> tuple[np.ndarray, np.ndarray]:
        """The version's last joined scores and labels (newest first)."""
        items = self.client.lrange(f"{self.prefix}w:{model}|{version}", 0, -1)
        if not items:
            return np.zeros(0), np.zeros(0, dtype=bool)
        pairs = np.array(b" ".join(items).split(), dtype=np.float64).reshape(-1, 2)
        return pairs[:, 0], pairs[:, 1] > 0

    def claim(self, kind: str, interval_ms: int) -> bool:
        """True for the one replica that takes this interval's ``kind`` snapshot."""
        return bool(self.client.set(f"{self.prefix}lock:{kind}", "1", nx=True, px=interval_ms))

    def append(self, kind: str, entry: dict[str, Any]) -> None:
        """Adds a snapshot to the ``kind`` history (capped at ``history_entries``)."""
        self.client.xadd(f"{self.prefix}h:{kind}", {"json": json.dumps(entry)}, maxlen=self.history_entries,
                         approximate=True)

    def history(self, kind: str, since_ms: int | None = None, until_ms: int | None = None) -> list[dict[str, Any]]:
        """Snapshots, oldest first, each with ``at`` (epoch ms) added."""
        start = "-" if since_ms is None else str(since_ms)
        end = "+" if until_ms is None else str(until_ms)
        rows = self.client.xrange(f"{self.prefix}h:{kind}", start, end)
        return [{"at": int(entry_id.decode().partition("-")[0]), **json.loads(fields[b"json"])}
                for entry_id, fields in rows]


def _joined(event_id: str, reply: list[Any]) -> Joined | None:
    state = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    if state not in ("matched", "late"):
        return None
    s, m, v, t, y, lab, replay = (x.decode() if isinstance(x, bytes) else x for x in reply[1:8])
    return Joined(event_id, state, m, v, float(s), y == "1", int(t), int(lab), replay == "again")


def redis_errors() -> tuple[type[Exception], ...]:
    """What the store raises while Redis is unreachable or refuses a command (a cluster's redis-py
    client raises ``RedisClusterException``, which is no ``RedisError``, when no node answers)."""
    return (redis.RedisError, RedisClusterException)
