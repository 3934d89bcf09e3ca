"""The deploy files agree with the worker: the dashboard and alerts query metrics it exports, and
the collector reads the traces topic in the format it writes."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from tests.support.infra import repo_root
from worker.config.settings import TracingSettings
from worker.lifecycle import metrics as lifecycle_metrics
from worker.monitoring.metrics import MonitorMetrics
from worker.telemetry.drift import DriftMonitor
from worker.telemetry.metrics import Metrics

DEPLOY = repo_root() / "deploy"
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    families = [*registry.collect(), *DriftMonitor([], lambda *_: None, 1000, 1000, {}).describe(),
                *MonitorMetrics(None, 0.5, lambda *_: None).describe(),  # type: ignore[arg-type]  # never read
                *(family for metric in vars(lifecycle_metrics).values() if isinstance(metric, MetricWrapperBase)
                  for family in metric.describe())]  # worker_model_*: module-level, on the default registry
    return {family.name + suffix for family in families for suffix in SUFFIXES}


def queried(text: str) -> set[str]:
    return set(re.findall(r"\b(worker_[a-z_]+|process_[a-z_]+)\b", text))


def test_the_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    names = queried("\n".join(expressions))
    assert names and names <= exported_names(), names - exported_names()


def test_the_alerts_query_only_exported_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    expressions = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    names = queried("\n".join(expressions))
    assert names and names <= exported_names(), names - exported_names()


def test_the_collector_reads_the_default_traces_topic_as_otlp_protobuf() -> None:
    config = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    traces = config["receivers"]["kafka"]["traces"]
    assert traces == {"topics": [TracingSettings().topic], "encoding": "otlp_proto"}
    assert config["service"]["pipelines"]["traces"]["receivers"] == ["kafka"]


def test_the_feast_example_differs_from_the_example_only_in_its_features() -> None:
    configs = repo_root() / "deploy" / "config"
    plain = yaml.safe_load((configs / "fraud-example.yaml").read_text())
    feast = yaml.safe_load((configs / "fraud-feast.yaml").read_text())

    assert feast.pop("features").keys() == plain.pop("features").keys()
    assert feast["kafka"].pop("group_id") != plain["kafka"].pop("group_id")
    assert feast == plain
