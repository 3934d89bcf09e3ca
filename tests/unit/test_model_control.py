"""Desired states and their commands, applying them to a replica, the control channels, and the
automatic canary rollback."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from tests.support.model_repo import add_version, logistic
from worker.lifecycle.control import ControlLoop, FileControlTable, MemoryControlTable
from worker.lifecycle.golden import FedInput
from worker.lifecycle.guard import CanaryBounds, CanaryGuard
from worker.lifecycle.manager import ModelManager
from worker.lifecycle.repository import ModelRepository
from worker.lifecycle.state import (
    CommandError,
    DesiredState,
    Refusal,
    ReplicaStatus,
    as_served,
    canary,
    model_key,
    promote,
    replica_key,
    restore,
    rollback,
    shadow,
)
from worker.lifecycle.validation import Policy, Signature, load_version
from worker.records import BatchResult, Delivery, ModelRun
from worker.serving import ModelSlot

SIGNATURE = Signature((FedInput("x", "float32", 2, 2),), ("probabilities",), "probabilities", 1)
START = DesiredState("risk", 0, "1")


def test_commands_move_the_desired_state_one_revision_at_a_time() -> None:
    s1 = canary(START, "2", 0.1, "ann")
    s2 = shadow(s1, "3", "ann")
    s3 = promote(s2, None, "bob")
    s4 = rollback(s3, None, "bob", "scores drifted")

    assert [s.revision for s in (s1, s2, s3, s4)] == [1, 2, 3, 4]
    assert (s1.canary, s1.canary_share, s1.command) == ("2", 0.1, "canary")
    assert (s3.active, s3.history, s3.canary, s3.shadow) == ("2", ("1",), None, "3")
    assert (s4.active, s4.history, s4.canary, s4.shadow, s4.reason) == ("1", (), None, None, "scores drifted")
    assert DesiredState.from_json(s3.to_json()) == s3


@pytest.mark.parametrize(("command", "message"), [
    (lambda: promote(START, "1", "x"), "version 1 is already active"),
    (lambda: promote(START, None, "x"), "nothing to promote"),
    (lambda: rollback(START, None, "x"), "nothing to roll back to"),
    (lambda: canary(START, "2", 1.5, "x"), "must be in (0, 1]"),
    (lambda: canary(START, None, 0.1, "x"), "no canary is running"),
    (lambda: shadow(START, "1", "x"), "a shadow needs another version"),
])
def test_commands_that_make_no_sense_are_refused(command: object, message: str) -> None:
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        command()  # type: ignore[operator]


def test_commands_build_on_what_the_replicas_serve_when_they_all_refused_the_desired_state() -> None:
    refused = promote(promote(START, "3", "ann"), "4", "ann")  # neither could be loaded
    replica = ReplicaStatus("a", "risk", 0, "1", refused=Refusal(2, "4", ["cannot load"]))

    base = as_served(refused, [replica, dataclasses.replace(replica, replica="b")])

    assert (base.revision, base.active, base.history) == (2, "1", ("3",))
    assert promote(base, "2", "ann").history == ("3", "1")
    assert restore(base, "ann").active == "1" and restore(base, "ann").revision == 3
    assert as_served(refused, []) is refused
    assert as_served(refused, [replica, ReplicaStatus("c", "risk", 2, "4")]) is refused, "one replica serves it"


def test_a_malformed_state_is_not_taken_for_a_command() -> None:
    with pytest.raises(ValueError, match="malformed"):
        DesiredState.from_json({"model": "risk", "active": "1"})
    with pytest.raises(ValueError, match="outside"):
        DesiredState.from_json({**START.to_json(), "canary": "2", "canary_share": 3})


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    add_version(tmp_path, "risk", "1", logistic([0.5, -0.25]))
    add_version(tmp_path, "risk", "2", logistic([0.1, 0.2], bias=1.0))
    add_version(tmp_path, "risk", "3", logistic([0.1, 0.2, 0.3]), width=3)  # does not fit
    return ModelRepository(tmp_path)


def manager_for(repo: ModelRepository, shadow_enabled: bool = True) -> ModelManager:
    policy = Policy(warmup_sizes=(1, 64))
    first = load_version(repo, "risk", "1", SIGNATURE, policy).model
    return ModelManager(ModelSlot(first), "replica-a", lambda v: load_version(repo, "risk", v, SIGNATURE, policy),
                        shadow_enabled)


def test_a_desired_state_is_applied_to_the_slot(repo: ModelRepository) -> None:
    manager = manager_for(repo)

    status = manager.apply(canary(START, "2", 0.25, "ann"))

    serving = manager.slot.serving
    assert (serving.active.version, serving.canary and serving.canary.version, serving.canary_share) == \
        ("1", "2", 0.25)
    assert (status.revision, status.canary, status.refused) == (1, "2", None)


def test_a_state_with_a_version_that_fails_is_refused_whole_and_serving_goes_on(repo: ModelRepository) -> None:
    manager = manager_for(repo)
    before = manager.slot.serving

    status = manager.apply(shadow(canary(START, "2", 0.25, "ann"), "3", "ann"))

    assert manager.slot.serving is before
    assert status.revision == 0 and status.refused is not None
    assert (status.refused.revision, status.refused.version) == (2, "3")
    assert status.refused.reasons == ["input 'x' is [N, 3] but the configuration feeds 2 columns"]
    assert manager.apply(promote(START, "2", "ann")).refused is None, "a later good state clears the refusal"


def test_a_shadow_needs_a_shadow_topic(repo: ModelRepository) -> None:
    status = manager_for(repo, shadow_enabled=False).apply(shadow(START, "2", "ann"))

    assert status.refused is not None and "no lifecycle.shadow_topic" in status.refused.reasons[0]


def test_only_serving_versions_and_the_previous_active_stay_loaded(repo: ModelRepository) -> None:
    manager = manager_for(repo)
    manager.apply(canary(START, "2", 0.5, "ann"))
    promoted = promote(manager.desired, None, "ann")
    manager.apply(promoted)

    assert sorted(manager._models) == ["1", "2"]
    rolled = manager.apply(rollback(promoted, None, "ann"))
    assert rolled.active == "1" and manager.slot.model.version == "1"


def test_the_guard_rolls_back_a_canary_that_fails_too_often(repo: ModelRepository) -> None:
    manager = manager_for(repo)
    manager.apply(canary(START, "2", 0.5, "ann"))
    published: list[DesiredState] = []

    def abort(version: str, reason: str) -> None:
        state = manager.abort_canary(version, reason)
        if state is not None:
            published.append(state)

    guard = CanaryGuard(CanaryBounds(max_error_rate=0.05, min_events=100), abort)
    for errors in (0, 3, 4):  # 7 of 150 events failed: 4.7%, then 11 of 200: 5.5%
        guard.batch_done([], batch_result(ModelRun("canary", "risk", "2", 50, errors, 0.001)), ticket())
    assert not published
    guard.batch_done([], batch_result(ModelRun("canary", "risk", "2", 50, 4, 0.001)), ticket())

    assert manager.slot.serving.canary is None
    (state,) = published
    assert (state.revision, state.command, state.canary) == (2, "canary-rollback", None)
    assert state.reason == "error rate 5.50% over its last 200 events exceeds 5.00%"
    assert manager.apply(canary(START, "2", 0.5, "ann")).canary is None, "an older state does not bring it back"


def test_the_guard_judges_latency_only_once_enough_events_were_seen() -> None:
    reasons: list[str] = []
    guard = CanaryGuard(CanaryBounds(max_latency_ms=5, min_events=100), lambda v, r: reasons.append(r))

    for seconds in (0.02, 0.001):
        guard.batch_done([], batch_result(ModelRun("canary", "risk", "2", 50, 0, seconds)), ticket())
    guard.batch_done([], batch_result(ModelRun("active", "risk", "1", 500, 0, 0.5)), ticket())

    (reason,) = reasons
    assert reason.startswith("p99 inference time 19.") and reason.endswith("over its last 2 batches exceeds 5 ms")


def batch_result(run: ModelRun) -> BatchResult:
    result = BatchResult()
    result.runs.append(run)
    return result


def ticket() -> Delivery:
    return Delivery(0)


def test_the_control_loop_applies_new_states_and_reports_them(repo: ModelRepository) -> None:
    log: list[tuple[str, object]] = []
    manager = manager_for(repo)
    loop = ControlLoop(MemoryControlTable(log), "risk", "replica-a", manager.apply, interval_s=0.01)
    cli = MemoryControlTable(log)
    loop.start()
    try:
        cli.put(model_key("risk"), promote(START, "2", "ann").to_json())
        status = wait_for_status(cli, "replica-a", revision=1)
        assert (status.active, status.refused) == ("2", None)
        assert manager.slot.model.version == "2"
        cli.put(model_key("risk"), promote(promote(START, "2", "ann"), "3", "ann").to_json())
        refused = wait_for_status(cli, "replica-a", revision=2)
        assert refused.revision == 1 and refused.refused is not None and refused.refused.version == "3"
    finally:
        loop.stop()
    assert replica_key("risk", "replica-a") not in cli.catch_up(), "a stopped replica removes its status"


def wait_for_status(table: MemoryControlTable, replica: str, revision: int) -> ReplicaStatus:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        raw = table.catch_up().get(replica_key("risk", replica))
        if raw is not None and ReplicaStatus.from_json(raw).settled(revision):
            return ReplicaStatus.from_json(raw)
        time.sleep(0.01)
    raise AssertionError(f"{replica} did not report revision {revision}")


def test_a_control_file_is_shared_by_its_readers(tmp_path: Path) -> None:
    path = tmp_path / "control.json"
    writer, reader = FileControlTable(path, 0.01), FileControlTable(path, 0.01)
    assert reader.catch_up() == {}

    writer.put("model/risk", {"revision": 1})
    writer.put("replica/risk/a", {"revision": 1})
    assert reader.poll(1.0) == {"model/risk": {"revision": 1}, "replica/risk/a": {"revision": 1}}
    writer.put("replica/risk/a", None)
    assert reader.poll(1.0) == {"replica/risk/a": None}
    assert reader.poll(0.05) == {}


def test_concurrent_writers_of_a_control_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "control.json"

    def write(prefix: str) -> None:
        table = FileControlTable(path)
        for i in range(30):
            table.put(f"{prefix}/{i}", {"i": i})

    threads = [threading.Thread(target=write, args=(p,)) for p in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(FileControlTable(path).catch_up()) == 90
