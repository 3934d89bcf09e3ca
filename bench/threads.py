"""Lowering the scheduling priority of a process's busiest librdkafka network thread (Linux).

A diagnostic for the latency benchmark (``python -m bench --lower-fetch-priority``): noida-db
answers every fetch at once, however long the consumer asks it to wait (the idle-fetch quirk in the
README's broker notes), so a consumer's librdkafka thread for that broker sends ~35,000 fetch
requests a second and takes ~45 % of a core. No consumer setting restrains it; at nice 19 it gets
what the other threads leave, which shows how much of a latency measurement that quirk costs on a
machine with two cores. Not a worker feature: on Kafka and tansu, which hold a waiting fetch, the
thread is idle between fetches.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

NETWORK_THREAD_PREFIX = "rdk:broker"  # librdkafka names each broker connection's thread so


def thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """Each thread of ``pid``: its name and the CPU it has used so far (clock ticks, user + system)."""
    ticks: dict[int, tuple[str, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended while we looked
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[int(task.name)] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def busiest_thread(pid: int, prefix: str = NETWORK_THREAD_PREFIX, over_s: float = 1.0) -> tuple[int, str, float] | None:
    """The thread of ``pid`` named ``prefix...`` that used the most CPU over ``over_s``: its id, its
    name and its share of a core (None: no such thread)."""
    before = thread_ticks(pid)
    time.sleep(over_s)
    after = thread_ticks(pid)
    used = {tid: ticks - before[tid][1] for tid, (name, ticks) in after.items()
            if name.startswith(prefix) and tid in before}
    if not used:
        return None
    tid = max(used, key=lambda t: used[t])
    return tid, after[tid][0], round(used[tid] / os.sysconf("SC_CLK_TCK") / over_s, 2)


def lower_busiest_network_thread(pid: int, niceness: int = 19, min_share: float = 0.05) -> dict[str, Any] | None:
    """Run the busiest librdkafka network thread of ``pid`` at ``niceness``, if it used at least
    ``min_share`` of a core (on a broker that holds waiting fetches none does: nothing is lowered);
    what was lowered, for the results."""
    found = busiest_thread(pid)
    if found is None or found[2] < min_share:
        return None
    tid, name, share = found
    os.setpriority(os.PRIO_PROCESS, tid, niceness)
    return {"thread": name, "cpu_share_before": share, "niceness": niceness}
