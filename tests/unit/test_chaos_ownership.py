"""The soak's check that no input partition had two live owners at once, read from replica logs."""

from __future__ import annotations

import time

from bench.chaos import owned_twice

T0 = time.mktime(time.strptime("2026-11-30T05:13:14", "%Y-%m-%dT%H:%M:%S"))


def line(seconds: float, what: str) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(T0 + seconds)) + f".{int(seconds * 1000) % 1000:03d}"
    return f"{stamp} INFO    worker.runner.loop: {what}"


def test_a_partition_held_by_two_live_processes_is_named_with_when_and_how_long() -> None:
    logs = {
        "slot0-4.log": "\n".join([line(0.3, "assigned chaos-in-1[0, 1]"), line(0.5, "dead-lettered something")]),
        "slot1-5.log": line(0.4, "assigned chaos-in-1[0, 1, 2]"),
    }
    found = owned_twice(logs, {"slot0-4.log": T0 + 6.0, "slot1-5.log": T0 + 10.0})  # slot0-4 killed at +6 s
    assert [(f["partition"], f["processes"], f["seconds"]) for f in found] == [
        (0, ["slot0-4.log", "slot1-5.log"], 5.6), (1, ["slot0-4.log", "slot1-5.log"], 5.6)]
    assert found[0]["from"] == time.strftime("%H:%M:%S", time.localtime(T0))


def test_handoffs_and_restarts_are_not_double_ownership() -> None:
    logs = {
        "slot0-1.log": "\n".join([line(0.0, "assigned chaos-in-1[0, 1]"), line(2.0, "revoked chaos-in-1[0, 1]")]),
        "slot1-2.log": "\n".join([line(2.1, "assigned chaos-in-1[0]"),
                                  line(3.0, "lost (not committed) chaos-in-1[0]")]),
        "slot0-3.log": line(3.2, "assigned chaos-in-1[0, 1]"),  # the killed slot's successor
        "slot1-4.log": line(5.0, "assigned chaos-in-1[2]"),
    }
    ended = {"slot0-1.log": T0 + 2.5, "slot1-2.log": T0 + 3.1, "slot0-3.log": T0 + 9.0, "slot1-4.log": T0 + 9.0}
    assert owned_twice(logs, ended) == []
