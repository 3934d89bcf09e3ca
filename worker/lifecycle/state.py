"""Desired and applied model states, as carried by the control channel.

The control channel is a table of JSON values by key (a compacted topic, or a file):

- ``model/<name>``: the desired state of a model, the whole of it (active version, the
  versions it replaced, canary version and share, shadow version), with a revision that
  every command raises by one. Compaction keeps only the latest, which is all a replica
  needs, however long ago it started.
- ``replica/<name>/<replica id>``: what one replica applied: the revision it serves and, if it
  refused a newer one, why. A replica that stops cleanly deletes its key.

Commands are pure transitions from one desired state to the next; they refuse nonsense
(promoting the active version, rolling back with no history) with a ``CommandError``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from worker.errors import WorkerError

MODEL_PREFIX = "model/"
REPLICA_PREFIX = "replica/"


class CommandError(WorkerError):
    """A command that cannot apply to the current desired state."""


def model_key(name: str) -> str:
    return f"{MODEL_PREFIX}{name}"


def replica_key(name: str, replica: str) -> str:
    return f"{REPLICA_PREFIX}{name}/{replica}"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class DesiredState:
    model: str
    revision: int
    active: str
    history: tuple[str, ...] = ()
    """Versions that were active before, oldest first (``rollback`` returns to the last)."""
    canary: str | None = None
    canary_share: float = 0.0
    shadow: str | None = None
    command: str = "config"
    reason: str = ""
    issued_by: str = ""
    issued_at_ms: int = 0

    def versions(self) -> list[str]:
        """The versions this state serves: active, then canary and shadow if any."""
        return [v for v in (self.active, self.canary, self.shadow) if v is not None]

    def describe(self) -> str:
        parts = [f"active v{self.active}"]
        if self.canary:
            parts.append(f"canary v{self.canary} on {self.canary_share:.1%} of keys")
        if self.shadow:
            parts.append(f"shadow v{self.shadow}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["history"] = list(self.history)
        return data

    @classmethod
    def from_json(cls, data: Any) -> DesiredState:
        if not isinstance(data, dict):
            raise ValueError("a desired state must be a JSON object")
        try:
            state = cls(str(data["model"]), int(data["revision"]), str(data["active"]),
                        tuple(str(v) for v in data.get("history") or ()), _opt(data.get("canary")),
                        float(data.get("canary_share") or 0.0), _opt(data.get("shadow")),
                        str(data.get("command", "")), str(data.get("reason", "")), str(data.get("issued_by", "")),
                        int(data.get("issued_at_ms") or 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed desired state: {exc!r}") from exc
        if state.canary is not None and not 0 < state.canary_share <= 1:
            raise ValueError(f"canary share {state.canary_share} is outside (0, 1]")
        return state

    def _next(self, command: str, issued_by: str, reason: str = "", **changes: Any) -> DesiredState:
        return dataclasses.replace(self, revision=self.revision + 1, command=command, reason=reason,
                                   issued_by=issued_by, issued_at_ms=now_ms(), **changes)


def _opt(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def promote(state: DesiredState, version: str | None, issued_by: str) -> DesiredState:
    """``version`` (by default the canary, else the shadow) becomes active; a canary or shadow
    of that version ends with it."""
    target = version or state.canary or state.shadow
    if target is None:
        raise CommandError("nothing to promote: name a version (no canary or shadow is running)")
    if target == state.active:
        raise CommandError(f"version {target} is already active")
    return state._next("promote", issued_by, active=target, history=(*state.history, state.active),
                       canary=None if state.canary == target else state.canary,
                       canary_share=0.0 if state.canary == target else state.canary_share,
                       shadow=None if state.shadow == target else state.shadow)


def rollback(state: DesiredState, to: str | None, issued_by: str, reason: str = "") -> DesiredState:
    """Back to the previously active version (or ``to``); any canary and shadow end."""
    if to is None:
        if not state.history:
            raise CommandError(f"nothing to roll back to: version {state.active} has no predecessor "
                               "(give one with --to)")
        target, history = state.history[-1], state.history[:-1]
    else:
        if to == state.active:
            raise CommandError(f"version {to} is already active")
        target, history = to, tuple(v for v in state.history if v != to)
    return state._next("rollback", issued_by, reason, active=target, history=history, canary=None,
                       canary_share=0.0, shadow=None)


def as_served(state: DesiredState, replicas: list[ReplicaStatus]) -> DesiredState:
    """The state commands build on: ``state``, unless every replica refused it, in which case
    what they serve (so that history and rollback never point at a version nobody served)."""
    if not replicas or not all(r.refused is not None and r.refused.revision >= state.revision > r.revision
                               for r in replicas):
        return state
    served = replicas[0]
    return dataclasses.replace(state, active=served.active, canary=served.canary, canary_share=served.canary_share,
                               shadow=served.shadow, history=tuple(v for v in state.history if v != served.active))


def restore(state: DesiredState, issued_by: str, reason: str = "") -> DesiredState:
    """``state`` again, as a new revision (the desired state returns to what the replicas serve)."""
    return state._next("rollback", issued_by, reason or "back to what the replicas serve")


def canary(state: DesiredState, version: str | None, share: float, issued_by: str) -> DesiredState:
    """``version`` scores ``share`` of the keys; no version (or share 0) ends the canary."""
    if version is None or share == 0:
        if state.canary is None:
            raise CommandError("no canary is running")
        return state._next("canary-off", issued_by, canary=None, canary_share=0.0)
    if version == state.active:
        raise CommandError(f"version {version} is the active one; a canary needs another version")
    if not 0 < share <= 1:
        raise CommandError(f"the canary share must be in (0, 1], not {share}")
    return state._next("canary", issued_by, canary=version, canary_share=share)


def abort_canary(state: DesiredState, issued_by: str, reason: str) -> DesiredState:
    """The automatic rollback of a canary that breached its bounds."""
    return state._next("canary-rollback", issued_by, reason, canary=None, canary_share=0.0)


def shadow(state: DesiredState, version: str | None, issued_by: str) -> DesiredState:
    """``version`` also scores every event, for the shadow topic; no version ends the shadow."""
    if version is None:
        if state.shadow is None:
            raise CommandError("no shadow is running")
        return state._next("shadow-off", issued_by, shadow=None)
    if version == state.active:
        raise CommandError(f"version {version} is the active one; a shadow needs another version")
    return state._next("shadow", issued_by, shadow=version)


@dataclass(frozen=True)
class Refusal:
    revision: int
    version: str
    reasons: list[str]


@dataclass(frozen=True)
class ReplicaStatus:
    """What one replica serves: the revision it applied (and its versions), and the newer
    revision it refused, if any."""

    replica: str
    model: str
    revision: int
    active: str
    canary: str | None = None
    canary_share: float = 0.0
    shadow: str | None = None
    refused: Refusal | None = None
    updated_at_ms: int = field(default_factory=now_ms)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> ReplicaStatus:
        try:
            refused = data.get("refused")
            return cls(str(data["replica"]), str(data["model"]), int(data["revision"]), str(data["active"]),
                       _opt(data.get("canary")), float(data.get("canary_share") or 0.0), _opt(data.get("shadow")),
                       Refusal(int(refused["revision"]), str(refused["version"]), list(refused["reasons"]))
                       if refused else None, int(data.get("updated_at_ms") or 0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed replica status: {exc!r}") from exc

    def settled(self, revision: int) -> bool:
        """Has this replica applied, or refused, ``revision`` (or something newer)?"""
        return self.revision >= revision or (self.refused is not None and self.refused.revision >= revision)
