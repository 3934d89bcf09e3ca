"""``worker batch`` on the shared fraud workload, with a real Redis (and a real broker for topic
ranges): every score as gen.py expects it, bad rows in the dead-letter file, nothing missing or
repeated, also after an interrupted run resumed."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer

from tests.support.configs import FRAUD_CONFIG
from tests.support.fraud import avro_container, decode_prediction, fraud_events, population, random_poison, truncated
from tests.support.infra import repo_root
from tests.support.kafka_io import Sent, TopicReader, Topics, ToSend, produce
from worker.batch.files import JsonLinesReader
from worker.cli.main import main
from worker.kafka import reader as reader_module

pytestmark = pytest.mark.integration

Expected = dict[str, float]


def workload(gen: ModuleType, redis_url: str, n: int, seed: int = 11) -> tuple[list[dict[str, Any]], Expected]:
    args = population(n=n, seed=seed)
    gen.cmd_features(argparse.Namespace(**{**vars(args), "redis": redis_url}))
    records = [r for _, _, r in gen.event_stream(args)]
    scores = gen.expected_scores(records, args)
    return records, {r["event_id"]: float(s) for r, s in zip(records, scores.tolist(), strict=True)}


def batch(redis_url: str, *args: str) -> int:
    return main(["batch", "--config", str(FRAUD_CONFIG), "--redis-url", redis_url, *args])


def assert_scored(found: list[dict[str, Any]], expected: Expected) -> None:
    by_id = {r["event_id"]: r["score"] for r in found}
    assert len(by_id) == len(found), "a prediction twice"
    assert set(by_id) == set(expected), "missing or unexpected predictions"
    assert max((abs(by_id[e] - s) for e, s in expected.items()), default=0.0) < 1e-5


def test_an_avro_file_is_scored_as_gen_expects_into_each_format(gen: ModuleType, redis_db_url: str,
                                                                tmp_path: Path) -> None:
    records, expected = workload(gen, redis_db_url, 3000)
    with (tmp_path / "events.avro").open("wb") as f:
        fastavro.writer(f, gen.TXN, records)
    for out in ("out.avro", "out.jsonl", "out.parquet"):
        assert batch(redis_db_url, "--input", str(tmp_path / "events.avro"), "--output", str(tmp_path / out)) == 0
    with (tmp_path / "out.avro").open("rb") as f:
        container = fastavro.reader(f)
        assert container.writer_schema["name"] == "workload.fraud.Prediction"  # type: ignore[index]
        assert_scored(list(container), expected)  # type: ignore[arg-type]
    assert_scored([json.loads(line) for line in (tmp_path / "out.jsonl").open()], expected)
    assert_scored(pq.read_table(tmp_path / "out.parquet").to_pylist(), expected)
    assert_json_lines_are_records_of(gen.PRED, tmp_path / "out.jsonl", tmp_path / "out.avro")
    assert (tmp_path / "out.avro.dead-letters.jsonl").read_text() == ""
    assert not (tmp_path / "out.avro.progress.json").exists(), "a finished run leaves nothing to resume"


def assert_json_lines_are_records_of(schema: Any, jsonl: Path, container: Path) -> None:
    """Each line is the container's record (scored by another run: its own scored_at) in the
    schema's own representation, timestamp-millis as its long, and reads back as a record of it."""
    lines = [json.loads(line) for line in jsonl.open()]
    with container.open("rb") as f:
        records: list[dict[str, Any]] = list(fastavro.reader(f))  # type: ignore[arg-type]
    for line, record in zip(lines, records, strict=True):
        assert {**line, "scored_at": None} == {**record, "scored_at": None}
        assert type(line["scored_at"]) is int
        assert abs(line["scored_at"] - record["scored_at"]) < 120_000  # the worker's schemas keep times as longs
        fastavro.schemaless_writer(io.BytesIO(), schema, line, strict=True)  # a record of the schema as it is
    assert all(row.problem is None for row in JsonLinesReader(jsonl, schema).rows())


def test_bad_json_lines_become_dead_letters_and_the_exit_code_says_so(gen: ModuleType, redis_db_url: str,
                                                                      tmp_path: Path) -> None:
    records, expected = workload(gen, redis_db_url, 1000)
    lines = [json.dumps(r) for r in records]
    bad = {5: "{not json", 50: json.dumps({**records[50], "amount": "lots"}), 500: "[1, 2]"}
    for row, line in bad.items():
        lines[row] = line
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    code = batch(redis_db_url, "--input", str(tmp_path / "events.jsonl"), "--output", str(tmp_path / "out.jsonl"),
                 "--dead-letters", str(tmp_path / "dead.jsonl"))
    assert code == 1
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").open()]
    assert [d["row"] for d in dead] == sorted(bad) and all(d["stage"] == "decode" for d in dead)
    assert "amount" in dead[1]["reason"] and dead[0]["value"] is not None
    assert_scored([json.loads(line) for line in (tmp_path / "out.jsonl").open()],
                  {e: s for i, (e, s) in enumerate(expected.items()) if i not in bad})


def test_poison_inside_an_avro_container_is_dead_lettered_and_the_run_goes_on(gen: ModuleType, redis_db_url: str,
                                                                           tmp_path: Path) -> None:
    """Blocks of 50 encoded values as a writer that copies bytes would write them, with gen.py's
    poison put in: last in a block (truncated, random), a block of poison alone, and poison in the
    middle of a block, after which the block's records cannot be told apart."""
    args = population(n=1000, seed=23)
    gen.cmd_features(argparse.Namespace(**{**vars(args), "redis": redis_db_url}))
    stream = list(gen.event_stream(args))
    values, rng = [v for _, v, _ in stream], random.Random(23)
    poison = {149: truncated(values[149]), 249: random_poison(gen, values[249], rng), 349: truncated(values[349]),
              500: random_poison(gen, values[500], rng), 620: random_poison(gen, values[620], rng)}
    values = [poison.get(i, v) for i, v in enumerate(values)]
    blocks = [values[i:i + 50] for i in range(0, 500, 50)] + [[values[500]]] + [values[i:i + 50]
                                                                               for i in range(501, 1000, 50)]
    avro_container(tmp_path / "events.avro", gen.TXN, blocks)
    unread = set(range(621, 651))  # after 620, in its block (601-650)
    good = [r for i, (_, _, r) in enumerate(stream) if i not in poison and i not in unread]
    expected = {r["event_id"]: float(s) for r, s in zip(good, gen.expected_scores(good, args).tolist(), strict=True)}

    code = batch(redis_db_url, "--input", str(tmp_path / "events.avro"), "--output", str(tmp_path / "out.avro"),
                 "--dead-letters", str(tmp_path / "dead.jsonl"))

    assert code == 1, "dead letters, not a failed run"
    dead = {d["row"]: d for d in map(json.loads, (tmp_path / "dead.jsonl").open())}
    assert sorted(dead) == sorted({*poison, *unread})
    assert all(d["stage"] == "decode" for d in dead.values())
    for row in (149, 249, 349, 500):  # last of its block: its dead letter carries exactly its bytes
        assert base64.b64decode(dead[row]["value"]) == poison[row], row
    assert base64.b64decode(dead[620]["value"]).startswith(poison[620])
    assert {dead[row]["error_type"] for row in unread} == {"Unread"} and "not read" in dead[621]["reason"]
    with (tmp_path / "out.avro").open("rb") as f:
        assert_scored(list(fastavro.reader(f)), expected)  # type: ignore[arg-type]
    assert len(expected) + len(dead) == len(stream), "every row scored or dead-lettered: 0 missing"


def test_a_parquet_file_in(gen: ModuleType, redis_db_url: str, tmp_path: Path) -> None:
    records, expected = workload(gen, redis_db_url, 500)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "events.parquet")
    assert batch(redis_db_url, "--input", str(tmp_path / "events.parquet"), "--output", str(tmp_path / "o.jsonl")) == 0
    assert_scored([json.loads(line) for line in (tmp_path / "o.jsonl").open()], expected)


class SpiedConsumer(Consumer):
    """The range reader's consumer, recording how it reads. (The admin API cannot tell on tansu:
    list_consumer_groups is empty and describe shows no members even while a consumer is subscribed.)"""

    calls: ClassVar[list[str]] = []

    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("subscribe")
        super().subscribe(*args, **kwargs)

    def assign(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("assign")
        super().assign(*args, **kwargs)

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("commit")
        return super().commit(*args, **kwargs)


@pytest.fixture
def consumer_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the range reader's consumer was asked to do: it must assign, never subscribe or commit."""
    calls: ClassVar[list[str]] = []
    monkeypatch.setattr(SpiedConsumer, "calls", calls)
    monkeypatch.setattr(reader_module, "Consumer", SpiedConsumer)
    return calls


def test_a_topic_range_is_read_without_joining_a_group(gen: ModuleType, redis_db_url: str, kafka_bootstrap: str,
                                                       kafka_topics: Callable[..., Topics],
                                                       topic_reader: Callable[..., TopicReader],
                                                       consumer_calls: list[str], tmp_path: Path) -> None:
    args = population(n=2000, seed=13)
    gen.cmd_features(argparse.Namespace(**{**vars(args), "redis": redis_db_url}))
    events = fraud_events(gen, args, poison_every=100)
    topics = kafka_topics(partitions=3, prefix="batch")
    sent = produce(kafka_bootstrap, topics.input, events.messages)
    expected = {r["event_id"]: float(s) for r, s in zip(events.good, gen.expected_scores(events.good, args).tolist(),
                                                         strict=True)}
    code = main(["batch", "--config", str(FRAUD_CONFIG), "--redis-url", redis_db_url, "--bootstrap-servers",
                 kafka_bootstrap, "--input", f"kafka:{topics.input}", "--output", f"kafka:{topics.output}",
                 "--dead-letters", str(tmp_path / "dead.jsonl")])
    assert code == 1, "poison in the range"
    assert consumer_calls == ["assign"], "the range joined a consumer group or committed"
    reader = topic_reader(topics.output)
    assert reader.read_until(lambda r: r.count(topics.output) >= len(expected), 30)
    assert_scored([decode_prediction(gen, m.value) for m in reader.on(topics.output)], expected)
    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").open()]
    assert sorted((d["topic"], d["partition"], d["offset"]) for d in dead) == sorted(
        (topics.input, sent[i].partition, sent[i].offset) for i in events.poison), "each found where it was"
    assert {d["partition"] for d in dead} == {0, 1, 2}


BASE_MS = 1_795_000_000_000  # event i's Kafka timestamp: BASE_MS + i seconds


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


RANGES: dict[str, tuple[list[str], Callable[[int, Sent], bool]]] = {
    "an offset for every partition": (["--from", "20", "--to", "70"], lambda i, s: 20 <= s.offset < 70),
    "partition:offset pairs": (["--from", "0:10,1:30", "--to", "1:60"],  # partition 2 not named: not read
                               lambda i, s: (s.partition, s.offset >= 10) == (0, True) or
                               (s.partition == 1 and 30 <= s.offset < 60)),
    "an ISO time range": (["--from", iso(BASE_MS + 200_000), "--to", iso(BASE_MS + 450_000)],
                          lambda i, s: 200 <= i < 450),
    "an ISO start only": (["--from", iso(BASE_MS + 590_500)], lambda i, s: i >= 591),
    "latest as the start": (["--from", "latest"], lambda i, s: False),
}


@pytest.mark.parametrize("bounds", list(RANGES), ids=list(RANGES))
def test_topic_range_bounds_select_exactly_their_events(bounds: str, gen: ModuleType, redis_db_url: str,
                                                        kafka_bootstrap: str, kafka_topics: Callable[..., Topics],
                                                        consumer_calls: list[str], tmp_path: Path) -> None:
    """Right on tansu too, which answers offsets_for_times with 0 for every time and a wrong high
    watermark (python -m bench.broker_quirks list-offsets)."""
    args = population(n=600, seed=29)
    gen.cmd_features(argparse.Namespace(**{**vars(args), "redis": redis_db_url}))
    stream = list(gen.event_stream(args))
    topic = kafka_topics(partitions=3, prefix="range").input
    sent = produce(kafka_bootstrap, topic, [ToSend(k, v, timestamp_ms=BASE_MS + i * 1000)
                                            for i, (k, v, _) in enumerate(stream)])
    options, chosen = RANGES[bounds]
    picked = [r for i, ((_, _, r), s) in enumerate(zip(stream, sent, strict=True)) if chosen(i, s)]
    assert len(picked) > 0 or bounds == "latest as the start"

    code = main(["batch", "--config", str(FRAUD_CONFIG), "--redis-url", redis_db_url, "--bootstrap-servers",
                 kafka_bootstrap, "--input", f"kafka:{topic}", "--output", str(tmp_path / "out.jsonl"), *options])

    assert code == 0
    found = [json.loads(line) for line in (tmp_path / "out.jsonl").open()]
    scores = gen.expected_scores(picked, args).tolist() if picked else []
    assert_scored(found, {r["event_id"]: float(s) for r, s in zip(picked, scores, strict=True)})
    assert consumer_calls == ["assign"], "the range joined a consumer group or committed"


def test_an_interrupted_run_resumed_gives_every_row_exactly_once(gen: ModuleType, redis_db_url: str,
                                                                  tmp_path: Path) -> None:
    records, expected = workload(gen, redis_db_url, 60_000, seed=17)
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    command = [sys.executable, "-m", "worker", "batch", "--config", str(FRAUD_CONFIG), "--redis-url", redis_db_url,
               "--input", str(tmp_path / "events.jsonl"), "--output", str(tmp_path / "out.avro")]
    env = {**os.environ, "PYTHONPATH": str(repo_root()), "WORKER_BATCH__MAX_EVENTS": "500"}  # small chunks
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    progress = tmp_path / "out.avro.progress.json"
    deadline = time.monotonic() + 60
    while not (progress.exists() and json.loads(progress.read_text())["rows"] >= 10_000):
        assert first.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_before = json.loads(progress.read_text())["rows"]
    assert 0 < done_before < len(records)
    resumed = subprocess.run([*command, "--resume"], check=False, env=env, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    with (tmp_path / "out.avro").open("rb") as f:
        assert_scored(list(fastavro.reader(f)), expected)  # type: ignore[arg-type]


def test_bad_invocations_are_one_clear_line_and_exit_2_not_1_which_means_dead_letters(
        gen: ModuleType, redis_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "events.csv").write_text("a,b\n")
    assert batch(redis_db_url, "--input", str(tmp_path / "events.csv"), "--output", str(tmp_path / "o.avro")) == 2
    assert "format follows the extension" in capsys.readouterr().err
    assert batch(redis_db_url, "--input", str(tmp_path / "none.avro"), "--output", str(tmp_path / "o.avro")) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "e.jsonl").write_text("{}\n")
    assert batch(redis_db_url, "--input", str(tmp_path / "e.jsonl"), "--output", str(tmp_path / "o.avro"),
                 "--resume") == 2
    assert "cannot resume: no usable progress file" in capsys.readouterr().err
    (tmp_path / "o.avro.progress.json").write_text(json.dumps({"input": "other.jsonl", "input_size": 9}))
    assert batch(redis_db_url, "--input", str(tmp_path / "e.jsonl"), "--output", str(tmp_path / "o.avro"),
                 "--resume") == 2
    assert "is the progress of other.jsonl" in capsys.readouterr().err
    assert batch(redis_db_url, "--input", str(tmp_path / "e.jsonl"), "--output", str(tmp_path / "o.avro"),
                 "--from", "earliest") == 2
    assert "bound a topic range" in capsys.readouterr().err
    assert batch(redis_db_url, "--input", str(tmp_path / "e.jsonl"), "--output", str(tmp_path / "o.avro"),
                 "--model-version", "2") == 2, "a model file, not a repository: a configuration error"



def test_a_file_written_with_another_compatible_schema_is_read_through_resolution(gen: ModuleType, redis_db_url: str,
                                                                                   tmp_path: Path) -> None:
    records, expected = workload(gen, redis_db_url, 300)
    wider = json.loads((Path(gen.HERE) / "transaction.avsc").read_text())
    wider["fields"].append({"name": "note", "type": "string", "default": ""})
    with (tmp_path / "events.avro").open("wb") as f:
        fastavro.writer(f, fastavro.parse_schema(wider), [{**r, "note": "x"} for r in records])
    assert batch(redis_db_url, "--input", str(tmp_path / "events.avro"), "--output", str(tmp_path / "o.jsonl")) == 0
    assert_scored([json.loads(line) for line in (tmp_path / "o.jsonl").open()], expected)
