"""The latency benchmark's diagnostic that lowers a busy librdkafka network thread: it must pick the
thread that is busy, by its name, and leave the others alone (real threads of this process)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator

import pytest

from bench.threads import busiest_thread, lower_busiest_network_thread

PR_SET_NAME = 15


def named_thread(name: str, busy: bool, stop: threading.Event, ids: list[int]) -> threading.Thread:
    """A thread that names itself ``name`` (as librdkafka does its own) and spins or sleeps until ``stop``."""
    def run() -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode(), 0, 0, 0)
        ids.append(threading.get_native_id())
        while not stop.is_set():
            if not busy:
                stop.wait(0.05)

    return threading.Thread(target=run, daemon=True)


@pytest.fixture
def threads() -> Iterator[dict[str, int]]:
    """Three threads: a busy librdkafka-named one, an idle one, and a busy one of another name."""
    stop = threading.Event()
    spec = {"rdk:broker7": True, "rdk:broker1": False, "other:busy": True}
    ids: dict[str, list[int]] = {name: [] for name in spec}
    started = [named_thread(name, busy, stop, ids[name]) for name, busy in spec.items()]
    for thread in started:
        thread.start()
    while not all(ids.values()):
        stop.wait(0.01)
    yield {name: found[0] for name, found in ids.items()}
    stop.set()
    for thread in started:
        thread.join()


def test_the_busy_librdkafka_thread_is_found_by_name_not_a_busier_one_of_another_name(
        threads: dict[str, int]) -> None:
    found = busiest_thread(os.getpid(), over_s=0.5)

    assert found is not None
    tid, name, share = found
    assert (tid, name) == (threads["rdk:broker7"], "rdk:broker7")
    assert share > 0.05


def test_only_the_busy_librdkafka_thread_is_lowered(threads: dict[str, int]) -> None:
    lowered = lower_busiest_network_thread(os.getpid(), niceness=19)

    assert lowered is not None and lowered["thread"] == "rdk:broker7"
    assert os.getpriority(os.PRIO_PROCESS, threads["rdk:broker7"]) == 19
    assert os.getpriority(os.PRIO_PROCESS, threads["rdk:broker1"]) == os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, threads["other:busy"]) == os.getpriority(os.PRIO_PROCESS, 0)


def test_a_process_without_librdkafka_threads_lowers_nothing() -> None:
    assert lower_busiest_network_thread(os.getpid()) is None


def test_idle_librdkafka_threads_are_left_alone() -> None:
    stop, ids = threading.Event(), []
    idle = named_thread("rdk:broker2", False, stop, ids)
    idle.start()
    while not ids:
        stop.wait(0.01)
    try:
        assert lower_busiest_network_thread(os.getpid()) is None
        assert os.getpriority(os.PRIO_PROCESS, ids[0]) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        stop.set()
        idle.join()
