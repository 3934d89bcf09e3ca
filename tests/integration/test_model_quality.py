"""Model quality on the shared fraud workload, with a real broker and a real Redis: feature drift
measured by ``worker run``, and ground truth joined to predictions by ``worker monitor``.

Every figure the processes export is compared with the same figure computed here, offline, from
the workload's own model inputs and labels (gen.py), so a wrong window, bin or join shows.
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import fastavro
import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from tests.support.configs import changed, fraud_config, fraud_workload_dir, write_config
from tests.support.fraud import FraudEvents, decode_prediction, fraud_events, population
from tests.support.infra import DEAD_MEMBER, free_port, skip_on_noida
from tests.support.kafka_io import RateProducer, TopicReader, Topics, ToSend, create_topic, produce
from tests.support.telemetry import metric_samples, wait_http
from tests.support.worker_process import StartWorker, WorkerProcess
from worker.cli.main import main
from worker.monitoring import report
from worker.quality.bins import psi
from worker.quality.reference import Reference, from_card, from_file

pytestmark = pytest.mark.integration

WINDOW = 10_000
EVENT_FEATURES = ("mcc", "distance_from_home_km")
MERCHANT_FEATURES = ("merchant.fraud_rate_30d", "merchant.txn_count_24h", "merchant.avg_amount_30d",
                     "merchant.risk_score")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def drift_workload(gen: ModuleType, redis_url: str, n: int, seed: int, drift: bool) -> tuple[argparse.Namespace,
                                                                                                FraudEvents]:
    args = population(n=n, seed=seed)
    gen.cmd_features(argparse.Namespace(**{**vars(args), "redis": redis_url}))
    if drift:  # as `gen.py events --drift-from 0.5 --amount-scale 4 --card-present-rate 0.1`
        args.drift_from, args.amount_scale, args.card_present_rate = 0.5, 4.0, 0.1
    return args, fraud_events(gen, args)


def offline_psi(gen: ModuleType, args: argparse.Namespace, records: list[dict[str, Any]],
                reference: Reference | None = None) -> dict[str, float]:
    """PSI of these events' model inputs against the card's bins (or ``reference``'s), computed here."""
    x = gen.feature_matrix(records, args)
    card = json.loads((fraud_workload_dir() / "model-card.json").read_text())
    reference = reference or from_card(card)
    assert reference is not None
    out = {}
    for j, name in enumerate(card["feature_order"]):
        bins = reference.features[name]
        counts = np.bincount(np.searchsorted(bins.edges, x[:, j], side="right"), minlength=bins.size)
        out[name] = psi(counts, bins.shares)
    return out


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for (metric, labels), value in samples.items() if metric == name}


def scrape(port: int, ready: Callable[[Samples], bool], alive: Callable[[], bool], timeout_s: float = 90) -> Samples:
    found: list[Samples] = []

    def want(status: int, body: str) -> bool:
        found[:] = [metric_samples(body)] if status == 200 else []
        return bool(found) and ready(found[0])

    wait_http(f"http://127.0.0.1:{port}/metrics", want, timeout_s=timeout_s, alive=alive)
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("drift", [True, False], ids=["drifted", "undrifted"])
def test_feature_psi_follows_the_drifted_window_and_equals_offline_psi(
        gen: ModuleType, kafka_bootstrap: str, redis_db_url: str, kafka_topics: Callable[..., Topics],
        topic_reader: Callable[..., TopicReader], start_worker: StartWorker, tmp_path: Path, drift: bool) -> None:
    args, events = drift_workload(gen, redis_db_url, n=40_000, seed=21, drift=drift)
    topics = kafka_topics(partitions=1, prefix="drift")  # one partition: the window is the stream's last events
    port = free_port()
    config = write_config(tmp_path / "fraud.yaml", changed(fraud_config(), **{
        "telemetry": {"port": port, "host": "127.0.0.1"}, "monitoring.window_events": WINDOW}))
    worker = start_worker(config, topics, redis_db_url)
    produce(kafka_bootstrap, topics.input, events.messages)
    reader = topic_reader(topics.output)
    assert reader.read_until(lambda r: r.count(topics.output) >= len(events.good), 120, worker.alive)

    samples = scrape(port, lambda s: sum(by_label(s, "worker_drift_window_events", "model_version").values())
                     >= WINDOW, worker.alive)
    live = by_label(samples, "worker_feature_psi", "feature")
    offline = offline_psi(gen, args, events.good[-WINDOW:])
    assert set(live) == set(offline), "a PSI per feature of the card's feature_order"
    for name, value in offline.items():
        assert live[name] == pytest.approx(value, abs=0.02), name
    quiet = [*EVENT_FEATURES, *MERCHANT_FEATURES]
    assert all(live[name] < 0.1 for name in quiet), {name: live[name] for name in quiet}
    moved = {name: live[name] for name in ("amount", "card_present")}
    assert all((v > 0.2) if drift else (v < 0.1) for v in moved.values()), moved
    nulls = by_label(samples, "worker_event_field_null_share", "field")
    assert nulls["distance_from_home_km"] == pytest.approx(0.1, abs=0.02)  # gen.py leaves 10% of them null
    defaults = by_label(samples, "worker_feature_default_share", "entity")
    assert defaults["merchant"] == 0 and 0 < defaults["card"] < 0.1  # ~2% of cards have no hash


def labels_of(gen: ModuleType, args: argparse.Namespace, records: list[dict[str, Any]]) -> np.ndarray:
    return np.asarray(gen.ground_truth(gen.feature_matrix(records, args), args.seed), dtype=bool)


def label_messages(gen: ModuleType, records: list[dict[str, Any]], truth: np.ndarray) -> list[ToSend]:
    now = int(time.time() * 1000)
    out = []
    for record, y in zip(records, truth.tolist(), strict=True):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, gen.LABEL, {"event_id": record["event_id"], "is_fraud": y,
                                                     "labelled_at": now})
        out.append(ToSend(record["event_id"].encode(), buf.getvalue()))
    return out


class Quality:
    """One test's worker and monitor on the fraud workload, with labels and joined topics."""

    def __init__(self, gen: ModuleType, bootstrap: str, redis_url: str, topics: Topics, start: StartWorker,
                 tmp_path: Path, create_joined: bool = True) -> None:
        self.gen, self.bootstrap, self.redis_url, self.topics, self.start = gen, bootstrap, redis_url, topics, start
        uid = uuid.uuid4().hex[:8]
        self.labels = create_topic(bootstrap, f"labels-{uid}", 2)
        self.joined = create_topic(bootstrap, f"joined-{uid}", 1) if create_joined else f"joined-{uid}"
        self.port = free_port()
        self.base = changed(fraud_config(), **{
            "monitoring.labels.topic": self.labels, "monitoring.joined_topic": self.joined,
            "monitoring.window_labels": 100_000, "monitoring.key_prefix": f"m{uid}:",
            "monitoring.snapshot_interval_s": 1})
        self.worker_config = write_config(tmp_path / "worker.yaml", self.base)
        self.monitor_config = self.monitor_config_on(self.port)

    def monitor_config_on(self, port: int) -> Path:
        """The monitor's config exporting metrics on ``port``: replicas differ only in that."""
        return write_config(self.worker_config.with_name(f"monitor-{port}.yaml"), changed(
            self.base, telemetry={"port": port, "host": "127.0.0.1"}))

    def worker(self) -> WorkerProcess:
        return self.start(self.worker_config, self.topics, self.redis_url)

    def monitor(self, port: int | None = None) -> WorkerProcess:
        config = self.monitor_config if port is None else self.monitor_config_on(port)
        return self.start(config, self.topics, self.redis_url, verb="monitor")

    def figures(self, monitor: WorkerProcess, matched: int, port: int | None = None) -> Samples:
        return scrape(port or self.port, lambda s: s.get(("worker_labels_matched_total", ()), -1) >= matched,
                      monitor.alive)


def predictions(gen: ModuleType, reader: TopicReader, topic: str) -> dict[str, float]:
    return {(r := decode_prediction(gen, m.value))["event_id"]: r["score"] for m in reader.on(topic)}


def assert_accuracy_as_offline(samples: Samples, scores: np.ndarray, truth: np.ndarray) -> None:
    version = (("model_name", "fraud-gbdt"), ("model_version", "1"))
    flagged = scores >= 0.5
    assert samples[("worker_model_labelled_events", version)] == len(scores)
    assert samples[("worker_model_auc", version)] == pytest.approx(roc_auc_score(truth, scores), abs=0.01)
    assert samples[("worker_model_precision", version)] == pytest.approx(
        (flagged & truth).sum() / flagged.sum(), abs=0.01)
    assert samples[("worker_model_recall", version)] == pytest.approx((flagged & truth).sum() / truth.sum(), abs=0.01)
    assert samples[("worker_model_log_loss", version)] == pytest.approx(log_loss(truth, scores), abs=0.01)


@pytest.mark.slow
@skip_on_noida(DEAD_MEMBER)
def test_online_accuracy_equals_offline_and_a_killed_monitor_loses_and_repeats_nothing(
        gen: ModuleType, kafka_bootstrap: str, redis_db_url: str, kafka_topics: Callable[..., Topics],
        topic_reader: Callable[..., TopicReader], start_worker: StartWorker, tmp_path: Path) -> None:
    args = population(n=12_000, seed=31)
    gen.cmd_features(argparse.Namespace(**{**vars(args), "redis": redis_db_url}))
    events = fraud_events(gen, args)
    q = Quality(gen, kafka_bootstrap, redis_db_url, kafka_topics(partitions=2, prefix="acc"), start_worker, tmp_path)
    worker = q.worker()
    produce(kafka_bootstrap, q.topics.input, events.messages)
    reader = topic_reader(q.topics.output, q.joined)
    assert reader.read_until(lambda r: r.count(q.topics.output) >= len(events.good), 120, worker.alive)
    truth = labels_of(gen, args, events.good)

    monitor = q.monitor()
    labels = RateProducer(kafka_bootstrap, q.labels, label_messages(gen, events.good, truth), rate=3000)
    labels.start()
    q.figures(monitor, matched=len(events.good) // 4)
    monitor.signal(signal.SIGKILL)  # mid-stream: some labels joined and not committed, some not read yet
    monitor.wait()
    labels.join(60)
    monitor = q.monitor()
    samples = q.figures(monitor, matched=len(events.good))
    counters = {name: samples[(f"worker_labels_{name}_total", ())] for name in ("received", "matched", "late")}
    assert counters == {"received": len(events.good), "matched": len(events.good), "late": 0}
    scored = predictions(gen, reader, q.topics.output)
    scores = np.array([scored[r["event_id"]] for r in events.good])
    assert_accuracy_as_offline(samples, scores, truth)
    assert reader.read_until(lambda r: len({json.loads(m.value or b"")["event_id"] for m in r.on(q.joined)})
                             >= len(events.good), 60), "every join published (at least once)"
    assert_the_report_draws_what_the_worker_and_monitor_kept(q)


def assert_the_report_draws_what_the_worker_and_monitor_kept(q: Quality) -> None:
    out = q.worker_config.parent / "report.html"
    code = main(["monitor", "report", "--config", str(q.monitor_config), "--redis-url", q.redis_url,
                 "--out", str(out), "--from", "1h"])
    html = out.read_text()
    assert code == 0 and report.NO_DRIFT not in html and report.NO_LABELS not in html
    assert report.NO_ACCURACY not in html and "merchant.risk_score" in html and html.count("<img") >= 4


@pytest.mark.slow
def test_labels_that_come_before_their_predictions_are_all_matched(
        gen: ModuleType, kafka_bootstrap: str, redis_db_url: str, kafka_topics: Callable[..., Topics],
        start_worker: StartWorker, tmp_path: Path) -> None:
    args = population(n=3000, seed=37)
    gen.cmd_features(argparse.Namespace(**{**vars(args), "redis": redis_db_url}))
    events = fraud_events(gen, args)
    q = Quality(gen, kafka_bootstrap, redis_db_url, kafka_topics(partitions=1, prefix="early"), start_worker,
                tmp_path, create_joined=False)
    produce(kafka_bootstrap, q.labels, label_messages(gen, events.good, labels_of(gen, args, events.good)))
    monitor = q.monitor()
    q.figures(monitor, matched=0)
    monitor.wait_for_log(f"created  {q.joined}")  # its own output topic: made when missing
    _, body = wait_http(f"http://127.0.0.1:{q.port}/readyz", lambda code, _: code == 200, alive=monitor.alive)
    assert json.loads(body)["checks"]["join_state"] is True, "ready: no model to load, its Redis answers"
    q.worker()
    produce(kafka_bootstrap, q.topics.input, events.messages)
    samples = q.figures(monitor, matched=len(events.good))
    assert samples[("worker_labels_unmatched_total", ())] == 0
    assert samples[("worker_labels_received_total", ())] == len(events.good)


@pytest.mark.slow
def test_two_monitor_replicas_share_the_join_and_match_each_label_once(
        gen: ModuleType, kafka_bootstrap: str, redis_db_url: str, kafka_topics: Callable[..., Topics],
        start_worker: StartWorker, tmp_path: Path) -> None:
    args = population(n=4000, seed=41)
    gen.cmd_features(argparse.Namespace(**{**vars(args), "redis": redis_db_url}))
    events = fraud_events(gen, args)
    q = Quality(gen, kafka_bootstrap, redis_db_url, kafka_topics(partitions=2, prefix="pair"), start_worker, tmp_path)
    ports = [q.port, free_port()]
    monitors = [q.monitor(port) for port in ports]
    for port, monitor in zip(ports, monitors, strict=True):  # one group: each holds a share before anything flows
        scrape(port, lambda s: s.get(("worker_assigned_partitions", ()), 0) > 0, monitor.alive)
    worker = q.worker()
    produce(kafka_bootstrap, q.topics.input, events.messages)
    produce(kafka_bootstrap, q.labels, label_messages(gen, events.good, labels_of(gen, args, events.good)))
    n = len(events.good)
    figures = [q.figures(monitor, n, port) for port, monitor in zip(ports, monitors, strict=True)]
    assert worker.alive()
    consumed = [f[("worker_events_consumed_total", ())] for f in figures]
    # One group: each replica read a share of the predictions and labels (2n in all), neither all of them.
    assert all(0 < c < 2 * n for c in consumed) and sum(consumed) >= 2 * n, consumed
    version = (("model_name", "fraud-gbdt"), ("model_version", "1"))
    shared = [{name: f[(name, ())] for name in ("worker_labels_received_total", "worker_labels_matched_total",
                                                "worker_labels_late_total")} | {"auc": f[("worker_model_auc", version)]}
              for f in figures]
    assert shared[0] == shared[1], "the figures come from the shared store, whichever replica is asked"
    assert shared[0]["worker_labels_matched_total"] == n == shared[0]["worker_labels_received_total"]


def write_reference(gen: ModuleType, tmp_path: Path, rows: int) -> Path:
    """``worker monitor reference --data`` on ``rows`` drifted events (amounts 4x, 10% card present)."""
    drifted = population(n=rows, seed=43)
    drifted.drift_from, drifted.amount_scale, drifted.card_present_rate = 0.0, 4.0, 0.1
    data, out = tmp_path / "train.npz", tmp_path / "reference.json"
    np.savez(data, features=gen.feature_matrix(fraud_events(gen, drifted).good, drifted))
    config = write_config(tmp_path / "reference.yaml", fraud_config())
    assert main(["monitor", "reference", "--config", str(config), "--data", str(data), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_a_reference_made_from_a_data_file_is_what_the_worker_measures_drift_against(
        gen: ModuleType, kafka_bootstrap: str, redis_db_url: str, kafka_topics: Callable[..., Topics],
        topic_reader: Callable[..., TopicReader], start_worker: StartWorker, tmp_path: Path) -> None:
    path = write_reference(gen, tmp_path, rows=5000)
    written = json.loads(path.read_text())
    card = json.loads((fraud_workload_dir() / "model-card.json").read_text())
    assert list(written["features"]) == card["feature_order"] and written["rows"] == 5000
    assert written["score"]["bins"]["edges"], "the score's bins too"

    window = 2000
    args, events = drift_workload(gen, redis_db_url, n=3000, seed=47, drift=False)
    topics = kafka_topics(partitions=1, prefix="ref")  # one partition: the window is the stream's last events
    port = free_port()
    config = write_config(tmp_path / "fraud.yaml", changed(fraud_config(), **{
        "telemetry": {"port": port, "host": "127.0.0.1"}, "monitoring.window_events": window,
        "monitoring.reference": str(path)}))
    worker = start_worker(config, topics, redis_db_url)
    produce(kafka_bootstrap, topics.input, events.messages)
    reader = topic_reader(topics.output)
    assert reader.read_until(lambda r: r.count(topics.output) >= len(events.good), 120, worker.alive)
    samples = scrape(port, lambda s: sum(by_label(s, "worker_drift_window_events", "model_version").values())
                     >= window, worker.alive)

    reference = from_file(path)
    live = by_label(samples, "worker_feature_psi", "feature")
    offline = offline_psi(gen, args, events.good[-window:], reference)
    assert live == pytest.approx(offline, abs=0.02)
    assert live["amount"] > 0.2, "undrifted events against the drifted reference (the card's bins give < 0.1)"
    assert reference.score is not None
    scores = np.array(list(predictions(gen, reader, topics.output).values())[-window:])
    counts = np.bincount(np.searchsorted(reference.score.edges, scores, side="right"), minlength=reference.score.size)
    (score_psi,) = by_label(samples, "worker_score_psi", "model_version").values()
    assert score_psi == pytest.approx(psi(counts, reference.score.shares), abs=0.02)
