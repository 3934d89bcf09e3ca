"""Reproductions of the test brokers' quirks (README, "Delivery guarantees and faults").

    python -m bench.broker_quirks leave-during-rebalance [--trials 6]
    python -m bench.broker_quirks list-offsets
    python -m bench.broker_quirks dead-member --broker noida
    python -m bench.broker_quirks transaction-timeout --broker noida
    python -m bench.broker_quirks restart-aborts --broker noida
    python -m bench.broker_quirks cooperative-join --broker noida
    python -m bench.broker_quirks unstable-offsets --broker noida
    python -m bench.broker_quirks static-restart --broker noida
    python -m bench.broker_quirks open-lso
    python -m bench.broker_quirks fetch-wait [--messages 400000]
    python -m bench.broker_quirks idle-fetch --broker noida
    python -m bench.broker_quirks autosave --broker noida

Each starts a local broker (``--broker``, tansu by default) unless given ``--bootstrap``.

``leave-during-rebalance`` (tansu 0.6): consumer A holds both partitions of a topic; B joins A's
group, and A leaves (closes) while the rebalance B started is still in progress. Tansu removes A
but keeps A's member id as the group's leader, and nothing ever replaces it: B's JoinGroup names
the departed A as leader, its SyncGroup answers REBALANCE_IN_PROGRESS, forever (seen for 360 s;
leaving and joining again, a new consumer, a short max.poll.interval.ms: none help). Kafka clears
the leader when it leaves. The control closes A before B joins: B gets both partitions in ~3 s.
Each trial uses a group of its own; trials run in parallel. Prints one JSON line.

``list-offsets`` (tansu 0.6): 10 messages with timestamps one second apart go to a topic of two
partitions (5 each); the broker is asked for each partition's watermarks and, with
``offsets_for_times``, for the offset of the first message at or after three times (before all,
the middle, after all). Kafka answers the true end (5) and 0, the middle offset, -1; tansu answers
a high watermark of 1 and offset 0 for every time. Prints what it answered beside the truth (from
the producer's delivery reports).

``dead-member`` (noida-db 0.2.3): a consumer (session.timeout.ms 6000, dynamic membership) holds
both partitions of a topic and is SIGKILLed; a new member joins the group. Kafka (and tansu, in
~11 s) expires the dead member after its session timeout and gives the new one both partitions;
noida-db never does (nothing in 30 s). The control: a static member (``group.instance.id``)
killed and restarted with the same id gets both partitions back at once on both brokers. So on
noida-db a worker's partitions stay with a crashed replica until it comes back under its own id.

``transaction-timeout`` (noida-db 0.2.3 and tansu 0.6): a producer (transaction.timeout.ms 5000)
writes one record in a transaction and is SIGKILLed; another producer then writes a plain record.
Kafka aborts the open transaction after 5 s, and a read_committed consumer then reads the plain
record; both brokers never abort it, so read_committed reads nothing (for 30 s here: the last
stable offset stays at the open transaction). A worker reading such a partition reports it
(``worker_stalled_partitions{reason="open_transaction"}``).

``cooperative-join`` (noida-db 0.2.3): consumer A (cooperative-sticky, the worker's assignor) holds
the 4 partitions of a topic; B joins the group. A gives up half (revoked [0, 1], then an empty
incremental assignment), but the second round never completes for B: no assignment in 30 s, 3 of 3
trials (60 s and more in the fault tests; B gets partitions only once A leaves). tansu gives B its half
in ~11 s; with the eager ``range`` assignor noida-db gives B its half in 3.1 s (the control, measured
by the same command). So on noida-db a
worker group cannot grow (scale out, or a replica restarting without static membership).

``unstable-offsets`` (noida-db 0.2.3 and tansu 0.6): a transactional producer sends offset 7 of a partition to
its open transaction for group G (as the worker does in exactly-once mode) and holds it open; a
read_committed member of G asks for G's committed offset. Kafka (KIP-447) answers
UNSTABLE_OFFSET_COMMIT until the transaction ends, which librdkafka retries, so the member cannot
start from an offset that is about to change (not checked against Kafka here: no Kafka on this
machine); both brokers answer the old offset (none) at once. Then the transaction commits and the
offset is 7. So there a partition that moves while its old
owner's transaction is committing can be read again from the older offset: duplicates in
exactly-once mode (not seen in the soak, where static members get their own partitions back).

``open-lso`` (tansu 0.6): a transactional producer commits one record to partition 0 of a topic,
then opens a second transaction there and writes two records, and the broker is asked (ListOffsets)
for the partition's latest offset at both isolation levels; then the second transaction commits
and a third opens. Kafka answers the last stable offset, the first record of the open transaction
(2: the committed record and its marker come first), then 5, as noida-db does; tansu answers 0
whenever a transaction is open, whatever came before (and its end is one short, 3 for 4). So on
tansu the worker's watch on its output partitions (``worker_held_output_partitions``) cannot tell
a transaction left open, and stays quiet.

``static-restart`` (noida-db 0.2.3): three static members (``group.instance.id`` a, b, c; 6
partitions) share a topic; in turn each is SIGKILLed and restarted with its id, 4 s apart, as the
soak does. Kafka gives a static member that comes back its own partitions and moves nothing; noida-db
can hand the restarted member partitions another live member still holds, revoking nothing, so two
members own them at once (and neither is fenced: in the soak both committed their transactions,
5,161 duplicates for a read_committed reader), while the partitions the restarted member had are
owned by nobody. First run: after b's restart a and b both held [2, 5] and nobody [0, 3]; after c's,
nobody held [1, 4]. tansu (the control) never gave a partition to two members. Prints, after each
restart, what every member holds and every partition held by two.

``fetch-wait`` (tansu 0.6): a topic of 4 partitions holds ``--messages`` records in batches of 6 (as
a producer writing about 20k events/s with ``linger.ms`` 1 leaves them: the contract check's
backlog), and a consumer reads it from the start, once with ``fetch.wait.max.ms`` 10 and once with
100 (the control), for up to 30 s each. noida-db serves both at once (0.7 s each: a fetch returns as
soon as it has data, as Kafka's does; not run against Kafka here). On tansu a fetch's work grows
with the number of record batches in the partition, and a fetch that cannot finish within its wait
returns nothing, so the consumer asks again and again: with 400,000 records (66,667 batches) the
consumer at 10 ms read nothing in 30 s, tansu at 99 % of a core; at 100 ms it read all 400,000 in
2.3 s. The worker's ``fetch.wait.max.ms`` is therefore 100: it costs no latency where the broker
answers a waiting fetch as data arrives (Kafka, Redpanda, noida-db); on tansu, which answers at the
end of the wait, it does (``kafka.consumer: {fetch_wait_max_ms: 10}`` for a latency test on a short
log).

``idle-fetch`` (noida-db 0.2.3): a consumer of an idle topic (4 partitions) polls for 10 s, with
``fetch.wait.max.ms`` 100, then also with ``fetch.min.bytes`` 100000; librdkafka's statistics count
the fetch requests it sent. Kafka holds a fetch with nothing to return until the wait ends (about
10 requests/s per broker at 100 ms), as tansu does (9.9/s); noida-db answers every fetch at once,
whatever the wait and the minimum: 24,000-32,000 requests/s, the consumer at 59 % of a core, the
broker about as busy. In the latency benchmark on noida-db (2 cores) the worker's consumer thread
took 44 % of a core and noida-db 55 % at 5,000 events/s, so the worker, the broker and the load
generator together wanted ~1.8 of the 2 cores: tails there measure a busy machine more than the
worker. Nothing on the consumer's side restrains it (librdkafka backs off only after errors or
with its queue full); the benchmark's broker-only floor has a reader too, so it pays the same.

``autosave`` (noida-db 0.2.3): a producer sends 300-byte records at 5,000 a second for 30 s (the
worker's producer settings: ``linger.ms`` 1, idempotent) and times each acknowledgement, while the
broker's data directory is watched. Acknowledgements stall about once a second (median gap 1.0 s),
and the stalls grow with what the broker holds: the worst 16.6 ms in the first 10 s, 23.6 ms in the
last (28 stalls over 5 ms in a run). Meanwhile noida-db rewrites its whole Kafka state as one JSON
file (``kafka.json``) every 1-2 s, 172 MB of it after the 150,000 records: its autosave thread took
18 % of a core in the latency benchmark. Blocking that file's write (a directory where its temporary
file goes) does not remove the stalls, so the write itself is not the pause; a copy of the state
made under a lock would be, but that is a guess from outside. tansu, the same run: one stall over 5
ms in 30 s; another noida-db run: 35, the worst 19.4 and 36.5 ms. These pauses, with the idle
fetches, set the worker's p99 on noida-db: at 5,000 events/s about 5 % of the events were in a batch
whose latency passed 5 ms, almost all in clusters around them. Nothing a client does changes it.

``restart-aborts`` (the control): the same kill, then a producer with the same transactional id
initialises (as a replica restarted with its identity does) and commits a record. On Kafka and
noida-db that aborts the predecessor's transaction: read_committed reads only the new record, at
once. Tansu aborts it too but still hands the aborted record to read_committed consumers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.acks import timed_acknowledgements
from worker.devtools.local import BROKER_KINDS, local_broker
from worker.kafka.confluent import ConfluentAdmin

WAIT_S = 30.0
BATCH = 6  # records per batch in fetch-wait: a producer at 20k events/s, linger.ms 1, 4 partitions


def trial(bootstrap: str, topic: str, overlap: bool) -> float | None:
    """Seconds from B's subscribe to its first assignment (None: none within WAIT_S)."""
    group = f"quirk-{uuid.uuid4().hex[:8]}"
    seen: dict[str, list[int]] = {"a": [], "b": []}
    a = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000,
                  "partition.assignment.strategy": "cooperative-sticky"})
    a.subscribe([topic], on_assign=lambda _, ps: seen["a"].extend(p.partition for p in ps))
    while len(seen["a"]) < 2:
        a.poll(0.1)
    if not overlap:
        a.close()
        time.sleep(0.2)
    got: list[float] = []
    b = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000,
                  "partition.assignment.strategy": "cooperative-sticky"})
    started = time.monotonic()
    b.subscribe([topic], on_assign=lambda _, ps: got.append(time.monotonic() - started))
    if overlap:
        deadline = started + 0.2
        while time.monotonic() < deadline:
            a.poll(0.05)
        a.close()  # LeaveGroup while B's rebalance is in progress
    while not got and time.monotonic() - started < WAIT_S:
        b.poll(0.1)
    b.close()
    return got[0] if got else None


def run(bootstrap: str, trials: int, overlap: bool) -> list[float | None]:
    topic = f"quirk-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: the future needs its client
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(10)
    results: list[float | None] = [None] * trials

    def one(i: int) -> None:
        results[i] = trial(bootstrap, topic, overlap)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(trials)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def list_offsets(bootstrap: str) -> dict[str, object]:
    """The broker's watermarks and offsets for times against the truth, per partition."""
    topic, base = f"quirk-{uuid.uuid4().hex[:8]}", 1_700_000_000_000
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        producer.produce(topic, b"%d" % i, partition=i % 2, timestamp=base + i * 1000)
    producer.flush(10)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic})  # asks only: joins nothing
    times = {"before_all": base - 1, "middle": base + 4_500, "after_all": base + 60_000}
    out: dict[str, object] = {"quirk": "list-offsets", "messages_per_partition": 5}
    for p in (0, 1):
        stamps = [base + i * 1000 for i in range(p, 10, 2)]  # the partition's messages, in offset order
        truth = {name: next((o for o, ts in enumerate(stamps) if ts >= t), -1) for name, t in times.items()}
        answered = {name: consumer.offsets_for_times([TopicPartition(topic, p, t)], timeout=10)[0].offset
                    for name, t in times.items()}
        out[f"partition_{p}"] = {"watermarks": consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10),
                                 "true_watermarks": [0, len(stamps)], "offsets_for_times": answered,
                                 "true_offsets_for_times": truth}
    consumer.close()
    return out


# A client that does its part and waits to be killed (SIGKILL: no goodbye to the broker).
_OPEN_TRANSACTION = """
import sys, time
from confluent_kafka import Producer
bootstrap, txid, topic = sys.argv[1:4]
p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txid, "transaction.timeout.ms": 5000})
p.init_transactions(10)
p.begin_transaction()
p.produce(topic, b"left-open", partition=0)
p.flush(10)
print("ready", flush=True)
time.sleep(600)
"""
_MEMBER = """
import sys
from confluent_kafka import Consumer
bootstrap, topic, group, instance = sys.argv[1:5]
config = {"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000}
if instance:
    config["group.instance.id"] = instance
c, got = Consumer(config), []
c.subscribe([topic], on_assign=lambda _, ps: got.extend(ps))
while len(got) < 2:
    c.poll(0.1)
print("ready", flush=True)
while True:
    c.poll(0.1)
"""


def killed(script: str, *args: str) -> None:
    """Run ``script`` until it prints ready, then SIGKILL it."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    ready = proc.stdout.readline().strip() == b"ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not ready:
        raise RuntimeError(f"the client to kill failed before it was ready: {args}")


def new_topic(bootstrap: str, partitions: int = 1) -> str:
    topic = f"quirk-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: the future needs its client
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(10)
    return topic


def first_assignment(bootstrap: str, topic: str, group: str, instance: str = "") -> float | None:
    """Seconds until a new member of ``group`` holds both partitions (None: not within WAIT_S)."""
    config = {"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000,
              **({"group.instance.id": instance} if instance else {})}
    consumer, got, started = Consumer(config), set(), time.monotonic()
    consumer.subscribe([topic], on_assign=lambda _, ps: got.update(p.partition for p in ps))
    while len(got) < 2 and time.monotonic() - started < WAIT_S:
        consumer.poll(0.1)
    consumer.close()
    return round(time.monotonic() - started, 1) if len(got) == 2 else None


def second_member(bootstrap: str, strategy: str) -> tuple[list[int], float | None]:
    """A holds a 4-partition topic, B joins: A's partitions then, and seconds until B has some (None: not
    within WAIT_S)."""
    topic, group = new_topic(bootstrap, 4), f"quirk-{uuid.uuid4().hex[:8]}"
    config = {"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000,
              "partition.assignment.strategy": strategy}
    a, held, b, got = Consumer(config), set(), Consumer(config), []
    a.subscribe([topic], on_assign=lambda _, ps: held.update(p.partition for p in ps),
                on_revoke=lambda _, ps: held.difference_update(p.partition for p in ps))
    while len(held) < 4:
        a.poll(0.1)
    b.subscribe([topic], on_assign=lambda _, ps: got.extend(p.partition for p in ps))
    started = time.monotonic()
    while not got and time.monotonic() - started < WAIT_S:
        a.poll(0.05)
        b.poll(0.05)
    seconds, kept = (round(time.monotonic() - started, 1) if got else None), sorted(held)
    a.close()
    b.close()
    return kept, seconds


def cooperative_join(bootstrap: str, trials: int) -> dict[str, object]:
    out: dict[str, object] = {"quirk": "cooperative-join", "waited_s": WAIT_S}
    for strategy in ("cooperative-sticky", "range"):
        runs = [second_member(bootstrap, strategy) for _ in range(trials)]
        out[strategy] = {"first_member_keeps": [k for k, _ in runs],
                         "seconds_until_the_second_member_gets_partitions": [s for _, s in runs]}
    return out


def unstable_offsets(bootstrap: str) -> dict[str, object]:
    topic, group = new_topic(bootstrap), f"quirk-{uuid.uuid4().hex[:8]}"
    member = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "isolation.level": "read_committed"})
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{group}-tx"})
    producer.init_transactions(10)
    producer.begin_transaction()
    producer.produce(topic, b"x", partition=0)
    producer.send_offsets_to_transaction([TopicPartition(topic, 0, 7)], member.consumer_group_metadata(), 10)
    started = time.monotonic()
    try:
        during: object = member.committed([TopicPartition(topic, 0)], timeout=5)[0].offset
    except KafkaException as exc:  # Kafka: UNSTABLE_OFFSET_COMMIT retried until the timeout
        during = str(exc.args[0])
    seconds = round(time.monotonic() - started, 1)
    producer.commit_transaction(10)
    after = member.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    member.close()
    return {"quirk": "unstable-offsets", "committed_while_the_transaction_is_open": during,
            "answered_in_s": seconds, "committed_after_it_commits": after}


_STATIC = """
import sys
from confluent_kafka import Consumer
bootstrap, topic, group, instance = sys.argv[1:5]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "session.timeout.ms": 6000,
              "group.instance.id": instance, "partition.assignment.strategy": "cooperative-sticky"})
show = lambda kind: lambda _, ps: print(kind, *[p.partition for p in ps], flush=True)
c.subscribe([topic], on_assign=show("assign"), on_revoke=show("revoke"), on_lost=show("revoke"))
while True:
    c.poll(0.1)
"""


class StaticMember:
    """A static member in a child process; ``held`` follows what its callbacks print."""

    def __init__(self, bootstrap: str, topic: str, group: str, instance: str) -> None:
        self.held: set[int] = set()
        self.proc = subprocess.Popen([sys.executable, "-c", _STATIC, bootstrap, topic, group, instance],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, *partitions = line.split()
            change = {int(p) for p in partitions}
            self.held = self.held | change if kind == "assign" else self.held - change

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def overlaps(members: dict[str, StaticMember]) -> dict[int, list[str]]:
    owners: dict[int, list[str]] = {}
    for name, member in members.items():
        for p in member.held:
            owners.setdefault(p, []).append(name)
    return {p: names for p, names in sorted(owners.items()) if len(names) > 1}


def static_restart(bootstrap: str) -> dict[str, object]:
    topic, group = new_topic(bootstrap, 6), f"quirk-{uuid.uuid4().hex[:8]}"
    members = {name: StaticMember(bootstrap, topic, group, name) for name in "abc"}
    time.sleep(8)
    found: list[dict[str, object]] = [{"at_start": {n: sorted(m.held) for n, m in members.items()}}]
    for name in "abc":
        members[name].kill()
        members[name] = StaticMember(bootstrap, topic, group, name)
        time.sleep(4)
        found.append({"restarted": name, "held": {n: sorted(m.held) for n, m in members.items()},
                      "held_by_two": overlaps(members)})
    for member in members.values():
        member.kill()
    return {"quirk": "static-restart", "rounds": found}


def dead_member(bootstrap: str) -> dict[str, object]:
    topic = new_topic(bootstrap, 2)
    killed(_MEMBER, bootstrap, topic, "dynamic", "")
    dynamic = first_assignment(bootstrap, topic, "dynamic")
    killed(_MEMBER, bootstrap, topic, "static", "replica-0")
    static = first_assignment(bootstrap, topic, "static", "replica-0")
    return {"quirk": "dead-member", "session_timeout_s": 6, "waited_s": WAIT_S,
            "seconds_until_a_new_member_gets_a_dead_dynamic_members_partitions": dynamic,
            "seconds_until_a_static_member_restarted_with_its_id_gets_them_back": static}


def committed_values(bootstrap: str, topic: str, until: bytes) -> tuple[list[str], float | None]:
    """What a plain read_committed consumer reads from ``topic`` (partition 0) until it reads ``until``
    (seconds it took) or WAIT_S passes (None)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got: list[bytes] = []
    started = time.monotonic()
    while until not in got and time.monotonic() - started < WAIT_S:
        got += [m.value() for m in consumer.consume(100, 0.5) if not m.error()]
    consumer.close()
    return [g.decode() for g in got], (round(time.monotonic() - started, 1) if until in got else None)


def transaction_timeout(bootstrap: str) -> dict[str, object]:
    topic = new_topic(bootstrap)
    killed(_OPEN_TRANSACTION, bootstrap, "quirk-timeout", topic)
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, b"plain", partition=0)
    producer.flush(10)
    read, seconds = committed_values(bootstrap, topic, b"plain")
    return {"quirk": "transaction-timeout", "transaction_timeout_s": 5, "waited_s": WAIT_S,
            "read_committed_read": read, "seconds_until_the_plain_record": seconds}


def restart_aborts(bootstrap: str) -> dict[str, object]:
    topic = new_topic(bootstrap)
    killed(_OPEN_TRANSACTION, bootstrap, "quirk-restart", topic)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": "quirk-restart"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"successor", partition=0)
    producer.commit_transaction(10)
    read, seconds = committed_values(bootstrap, topic, b"successor")
    return {"quirk": "restart-aborts", "read_committed_read": read, "seconds_until_the_successors_record": seconds,
            "aborted_record_shown": "left-open" in read}


def latest_offsets(bootstrap: str, topic: str) -> dict[str, int | None]:
    ends = ConfluentAdmin({"bootstrap.servers": bootstrap}).ends([(topic, 0)], 10.0)[(topic, 0)]
    return {"read_committed": ends.stable_end, "read_uncommitted": ends.end}


def open_lso(bootstrap: str) -> dict[str, object]:
    topic = new_topic(bootstrap)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{topic}-tx"})
    producer.init_transactions(10)
    answers = {}
    for step, values in (("first", [b"a"]), ("open_after_one_committed", [b"b", b"c"]), ("open_again", [b"d"])):
        producer.begin_transaction()
        for value in values:
            producer.produce(topic, value, partition=0)
        producer.flush(10)
        if step != "first":
            answers[step] = latest_offsets(bootstrap, topic)
        producer.commit_transaction(10)
        answers[f"{step}_committed"] = latest_offsets(bootstrap, topic)
    return {"quirk": "open-lso", "kafka_answers_read_committed": {"open_after_one_committed": 2, "open_again": 5},
            **answers}


def read_from_start(bootstrap: str, topic: str, fetch_wait_ms: int, expected: int) -> dict[str, float]:
    """Records a new consumer with this fetch wait reads within WAIT_S of its assignment, and how long."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-{fetch_wait_ms}",
                         "auto.offset.reset": "earliest", "fetch.wait.max.ms": fetch_wait_ms,
                         "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    joined_by = time.monotonic() + WAIT_S
    while not consumer.assignment() and time.monotonic() < joined_by:
        consumer.poll(0.1)
    read, started = 0, time.monotonic()
    while read < expected and time.monotonic() - started < WAIT_S:
        read += sum(1 for m in consumer.consume(2000, 0.5) if m.error() is None)
    consumer.close()
    return {"read": read, "seconds": round(time.monotonic() - started, 1)}


def fetch_wait(bootstrap: str, messages: int) -> dict[str, object]:
    topic = new_topic(bootstrap, 4)
    producer = Producer({"bootstrap.servers": bootstrap, "batch.num.messages": BATCH, "linger.ms": 5,
                         "queue.buffering.max.messages": 100_000})
    for i in range(messages):
        producer.produce(topic, b"x" * 60, partition=i % 4)
        if i % 10_000 == 0:
            producer.flush(30)
    producer.flush(60)
    return {"quirk": "fetch-wait", "messages": messages, "record_batches": -(-messages // BATCH),
            "fetch_wait_ms": {str(w): read_from_start(bootstrap, topic, w, messages) for w in (10, 100)}}


def idle_fetches(bootstrap: str, topic: str, extra: dict[str, object], seconds: float = 10.0) -> dict[str, float]:
    """Fetch requests per second, and the consumer's CPU, while reading an idle ``topic``."""
    stats: dict[str, object] = {}
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-{uuid.uuid4().hex[:6]}",
                         "session.timeout.ms": 6000, "statistics.interval.ms": 500, **extra,
                         "stats_cb": lambda raw: stats.update(json.loads(raw))})
    consumer.subscribe([topic])
    joined_by = time.monotonic() + WAIT_S
    while not consumer.assignment() and time.monotonic() < joined_by:
        consumer.poll(0.1)
    consumer.poll(1.5)  # fetching, and statistics to start from

    def fetches() -> int:
        brokers = stats.get("brokers", {})
        assert isinstance(brokers, dict)
        return sum(b["req"].get("Fetch", 0) for b in brokers.values())

    before, cpu, started = fetches(), time.process_time(), time.monotonic()
    while time.monotonic() - started < seconds:
        consumer.poll(0.1)
    elapsed = time.monotonic() - started
    used, sent = time.process_time() - cpu, fetches() - before  # statistics up to 0.5 s old: a slight undercount
    consumer.close()
    return {"fetch_requests_per_s": round(sent / elapsed, 1), "consumer_cpu_share": round(used / elapsed, 2)}


def idle_fetch(bootstrap: str) -> dict[str, object]:
    topic = new_topic(bootstrap, 4)
    wait = {"fetch.wait.max.ms": 100}
    return {"quirk": "idle-fetch", "kafka_expects_requests_per_s": "about 10 per broker (one per 100 ms wait)",
            "wait_100ms": idle_fetches(bootstrap, topic, wait),
            "wait_100ms_min_bytes_100000": idle_fetches(bootstrap, topic, {**wait, "fetch.min.bytes": 100_000})}


def stalls(samples: list[tuple[float, float]], over_ms: float = 5.0, gap_s: float = 0.1) -> list[tuple[float, float]]:
    """(start in seconds, worst milliseconds) of each cluster of acknowledgements slower than ``over_ms``."""
    found: list[list[float]] = []
    for at, ms in samples:
        if ms <= over_ms:
            continue
        if found and at - found[-1][2] < gap_s:
            found[-1][1], found[-1][2] = max(found[-1][1], ms), at
        else:
            found.append([at, ms, at])
    return [(round(start, 2), round(worst, 1)) for start, worst, _ in found]


def watch_saves(path: Path, stop: threading.Event, saves: list[float]) -> None:
    """Append the time of each rewrite of ``path`` until ``stop``."""
    last = None
    while not stop.wait(0.01):
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            continue
        if last is not None and stamp != last:
            saves.append(time.perf_counter())
        last = stamp


def autosave(bootstrap: str, data_dir: Path | None, seconds: float = 30.0) -> dict[str, object]:
    state, saves, stop = (data_dir or Path("/nonexistent")) / "kafka.json", [], threading.Event()
    threading.Thread(target=watch_saves, args=(state, stop, saves), daemon=True).start()
    samples = sorted(timed_acknowledgements(bootstrap, new_topic(bootstrap, 1), 5000, seconds, 300))
    stop.set()
    found = stalls([s for s in samples if s[0] >= 2.0])  # past the producer's first requests
    early, late = [s for s in found if s[0] < 12], [s for s in found if s[0] >= seconds - 10]
    gaps = sorted(b[0] - a[0] for a, b in itertools.pairwise(found))
    return {"quirk": "autosave", "records": len(samples), "record_bytes": 300, "rate": 5000,
            "stalls_over_5ms": len(found), "median_s_between_stalls": round(gaps[len(gaps) // 2], 2) if gaps else None,
            "worst_stall_ms_2_to_12_s": max((w for _, w in early), default=None),
            "worst_stall_ms_last_10_s": max((w for _, w in late), default=None),
            "state_file_saves": len(saves) if data_dir else None,
            "state_file_mb": round(state.stat().st_size / 1e6, 1) if state.exists() else None,
            "stalls": found}


def rebalance(bootstrap: str, trials: int) -> dict[str, object]:
    overlapping = run(bootstrap, trials, overlap=True)
    control = run(bootstrap, trials, overlap=False)
    return {"quirk": "leave-during-rebalance", "trials": trials,
            "stalled_when_a_leaves_during_the_rebalance": sum(r is None for r in overlapping),
            "stalled_when_a_left_before": sum(r is None for r in control),
            "seconds_to_first_assignment_control": [round(r, 2) for r in control if r is not None]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    quirks = {"leave-during-rebalance": lambda b: rebalance(b, args.trials), "list-offsets": list_offsets,
              "dead-member": dead_member, "transaction-timeout": transaction_timeout, "restart-aborts": restart_aborts,
              "cooperative-join": lambda b: cooperative_join(b, args.trials), "unstable-offsets": unstable_offsets,
              "static-restart": static_restart, "open-lso": open_lso,
              "fetch-wait": lambda b: fetch_wait(b, args.messages), "idle-fetch": idle_fetch,
              "autosave": lambda b: autosave(b, getattr(broker, "data_dir", None))}
    ap.add_argument("quirk", choices=list(quirks))
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--messages", type=int, default=400_000, help="fetch-wait: records in the topic")
    ap.add_argument("--broker", choices=BROKER_KINDS, default="tansu", help="the local broker to start")
    ap.add_argument("--bootstrap", help="ask this broker instead of starting one")
    args = ap.parse_args()
    with local_broker(args.broker) if args.bootstrap is None else nullcontext() as broker:
        bootstrap = args.bootstrap or broker.bootstrap_servers  # type: ignore[union-attr]
        found = {"broker": args.bootstrap or args.broker, **quirks[args.quirk](bootstrap)}
    print(json.dumps(found))


if __name__ == "__main__":
    main()
