"""``deploy/ci/model-release.sh`` end to end: a worker serving v1 with a control topic, the script run
as CI runs it (a process, connection details in WORKER_* variables), a labelled holdout.

- v2 is good (nearly v1's weights): it passes validation and the evaluation gates, serves as a canary
  under live traffic until the script has counted enough of its predictions, and is promoted.
- v3 is bad (the risk feature's weight reversed, so its AUC drops and labels flip): the evaluation gate
  stops the script before any canary, with its exit code, and the control topic is untouched.
- A canary that the canary guard rolls back (a latency bound no model meets) fails the script, and so
  does one that sees too little traffic to judge, which the script then ends itself.

The workflow file (``deploy/ci/model-release.yml``) is checked for its structure, and with actionlint
and shellcheck when they are installed."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.infra import repo_root
from tests.support.kafka_io import TopicReader, Topics, make_producer, produce
from tests.support.lifecycle import MODEL, WEIGHTS, load_risks, payments, to_send, write_lifecycle_config
from tests.support.model_repo import add_version, logistic
from tests.support.worker_process import StartWorker, WorkerProcess

SCRIPT = repo_root() / "deploy" / "ci" / "model-release.sh"
WORKFLOW = repo_root() / "deploy" / "ci" / "model-release.yml"
GATES = ("--max-auc-drop", "0.02", "--max-label-flip", "0.05")
EXIT_GATE_FAILED = 11  # the script's exit codes (its header)


@pytest.fixture
def features(redis_db_url: str) -> dict[str, float]:
    return load_risks(redis_db_url)


class Release:
    """One test's repository (v1 serving, v2 good, v3 bad), holdout, worker and script."""

    def __init__(self, directory: Path, bootstrap: str, redis_url: str, topics: Topics,
                 features: dict[str, float], **canary: float) -> None:
        self.directory, self.bootstrap, self.redis_url, self.topics = directory, bootstrap, redis_url, topics
        self.control_topic = f"models-{topics.group}"
        self.config = write_lifecycle_config(directory, {"control_topic": self.control_topic,
                                                         "canary": {"min_events": 100, **canary}})
        repository = directory / "models"
        add_version(repository, MODEL, "2", logistic([0.0041, 1.45]))  # replaces the lifecycle helpers' v2
        add_version(repository, MODEL, "3", logistic([WEIGHTS[0], -WEIGHTS[1]]))
        self.holdout = write_holdout(directory / "holdout.jsonl", features)

    def start_worker(self, start_worker: StartWorker) -> WorkerProcess:
        worker = start_worker(self.config, self.topics, self.redis_url)
        worker.wait_for_log(f"assigned {self.topics.input}[", 60)
        return worker

    def env(self) -> dict[str, str]:
        """As CI gives them: connection details in WORKER_* variables, the script's options in RELEASE_*."""
        env = {**os.environ,
               "WORKER_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap, "WORKER_REDIS__URL": self.redis_url,
               "WORKER_KAFKA__OUTPUT_TOPIC": self.topics.output,
               "WORKER_KAFKA__SASL_USERNAME": "",  # an unset CI secret: the script must drop it
               "RELEASE_WORKER": f"{sys.executable} -m worker", "RELEASE_PYTHON": sys.executable,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root()), os.environ.get("PYTHONPATH")]))}
        env.pop("GITHUB_STEP_SUMMARY", None)
        return env

    def run_script(self, version: str, *options: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["bash", str(SCRIPT), "--config", str(self.config), "--version", version,
                                 "--holdout", str(self.holdout), *options], env=self.env(), cwd=self.directory,
                                check=False, capture_output=True, text=True, timeout=150)
        print(f"--- model-release.sh v{version}: exit {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def status(self) -> dict[str, Any]:
        """``worker models status --json``."""
        env = {k: v for k, v in self.env().items() if v}
        result = subprocess.run([sys.executable, "-m", "worker", "models", "status", "--json", "-c", str(self.config)],
                                env=env, check=False, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def control_records(self) -> list[tuple[bytes | None, bytes | None]]:
        """Every record of the control topic, in order."""
        with TopicReader(self.bootstrap, [self.control_topic]) as reader:
            reader.settle(1.0)
            return [(m.key, m.value) for m in reader.messages]


def write_holdout(path: Path, features: dict[str, float], n: int = 3000) -> Path:
    """Payments with a label the features predict (noisily): rows in the input schema plus ``label``."""
    rng = random.Random(11)
    rows = []
    for record in payments([f"a{i % 300}" for i in range(n)], seed=7, prefix="h"):
        z = WEIGHTS[0] * record["amount"] + WEIGHTS[1] * features.get(record["account"], 0.0) + rng.gauss(0, 0.3)
        rows.append({**record, "label": z > 1.2})
    assert 0.2 < sum(r["label"] for r in rows) / n < 0.8
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Traffic(threading.Thread):
    """Payments at about ``rate`` a second until stopped, so that a canary has events to score."""

    def __init__(self, bootstrap: str, topic: str, rate: float = 400) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.stopped = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        producer = make_producer(self.bootstrap, **{"linger.ms": 1})
        chunk = max(1, int(self.rate / 10))
        try:
            while not self.stopped.is_set():
                keys = [f"a{(self.sent + i) % 300}" for i in range(chunk)]
                produce(self.bootstrap, self.topic, to_send(payments(keys, seed=self.sent, prefix=f"t{self.sent}-")),
                        producer)
                self.sent += chunk
                self.stopped.wait(0.1)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def stop(self) -> None:
        self.stopped.set()
        self.join(30)


def steps(output: str) -> list[str]:
    return re.findall(r"^==> \[(\d)/4\]", output, flags=re.M)


@pytest.mark.integration
@pytest.mark.slow
def test_a_good_version_passes_the_gates_holds_as_a_canary_and_is_promoted(
        tmp_path: Path, kafka_bootstrap: str, kafka_topics: Callable[..., Topics], redis_db_url: str,
        features: dict[str, float], start_worker: StartWorker) -> None:
    topics = kafka_topics(partitions=2)
    release = Release(tmp_path, kafka_bootstrap, redis_db_url, topics, features)
    worker = release.start_worker(start_worker)
    traffic = Traffic(kafka_bootstrap, topics.input)
    traffic.start()
    try:
        result = release.run_script("2", *GATES, "--canary-share", "0.5", "--canary-duration", "3",
                                    "--canary-events", "300", "--canary-timeout", "60", "--poll", "1",
                                    "--settle", "2", "--wait", "30", "--report-dir", str(tmp_path / "report"))
    finally:
        traffic.stop()
    assert traffic.error is None

    assert result.returncode == 0, result.stderr
    assert steps(result.stdout) == ["0", "1", "2", "3", "4"]
    assert "risk v2: servable" in result.stdout
    assert "PASS  --max-auc-drop 0.02" in result.stdout and "PASS  --max-label-flip 0.05" in result.stdout
    held = re.search(r"held: (\d+)s on every replica, (\d+) predictions, not rolled back", result.stdout)
    assert held and int(held[1]) >= 3 and int(held[2]) >= 300, result.stdout
    assert "v2 released: active on all 1 replica(s) (revision 2), replacing v1" in result.stdout
    assert (tmp_path / "report" / "evaluate.txt").is_file()

    status = release.status()
    desired = status["desired"]
    assert (desired["active"], desired["revision"], desired["command"], desired["canary"]) == ("2", 2, "promote", None)
    assert desired["history"] == ["1"]
    assert [(r["active"], r["revision"], r["canary"]) for r in status["replicas"]] == [("2", 2, None)]
    assert "canary v2 rolled back" not in worker.log()
    assert worker.alive()


@pytest.mark.integration
@pytest.mark.slow
def test_a_version_failing_an_evaluation_gate_stops_before_any_canary(
        tmp_path: Path, kafka_bootstrap: str, kafka_topics: Callable[..., Topics], redis_db_url: str,
        features: dict[str, float], start_worker: StartWorker) -> None:
    topics = kafka_topics(partitions=1)
    release = Release(tmp_path, kafka_bootstrap, redis_db_url, topics, features)
    release.start_worker(start_worker)
    before, records_before = release.status(), release.control_records()

    result = release.run_script("3", *GATES)

    assert result.returncode == EXIT_GATE_FAILED, result.stderr
    assert steps(result.stdout) == ["0", "1", "2"], "the script went past the evaluation"
    assert "risk v3: servable" in result.stdout  # validation passed: the gate is what stopped it
    assert re.search(r"^  FAIL  --max-auc-drop 0.02: ", result.stdout, flags=re.M)
    assert "FAILED at step 2/4: v3 failed its evaluation gate(s): --max-auc-drop 0.02" in result.stderr
    assert release.control_records() == records_before, "the script wrote to the control topic"
    after = release.status()
    assert after["desired"] == before["desired"] and after["desired"]["revision"] == 0
    assert [(r["replica"], r["revision"], r["active"], r["canary"]) for r in after["replicas"]] == \
        [(r["replica"], r["revision"], r["active"], r["canary"]) for r in before["replicas"]]


def test_the_script_is_valid_shell_and_refuses_bad_options(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        checked = subprocess.run(["shellcheck", str(SCRIPT)], check=False, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout
    config, holdout = tmp_path / "c.yaml", tmp_path / "h.jsonl"
    config.touch()
    holdout.touch()
    for options, message in (
            ([], "--config (RELEASE_CONFIG) is required"),
            (["--config", str(config), "--version", "2", "--holdout", str(holdout)], "no evaluation gate"),
            (["--config", str(config), "--version", "2", "--holdout", str(holdout), "--min-auc", "high"],
             "--min-auc must be a non-negative number"),
            (["--config", str(config), "--version", "2", "--holdout", str(holdout), "--min-auc", "0.8",
              "--canary-events", "1.5"], "--canary-events must be a whole number"),
            (["--bogus", "1"], "unknown option --bogus")):
        result = subprocess.run(["bash", str(SCRIPT), *options], check=False, capture_output=True, text=True,
                                env={**os.environ, "RELEASE_WORKER": f"{sys.executable} -m worker"})
        assert result.returncode == 2 and message in result.stderr, (options, result.stderr)


def test_the_workflow_runs_the_script_with_the_inputs_and_secrets() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    inputs = trigger["workflow_dispatch"]["inputs"]
    assert {"version", "holdout", "min_auc", "max_auc_drop", "max_label_flip"} <= set(inputs)
    assert inputs["version"]["required"] and inputs["holdout"]["required"]
    assert len(inputs) <= 10  # GitHub's limit for workflow_dispatch inputs
    (job,) = workflow["jobs"].values()
    assert job["env"]["WORKER_KAFKA__BOOTSTRAP_SERVERS"].startswith("${{ secrets.")
    assert job["env"]["WORKER_REDIS__URL"].startswith("${{ secrets.")
    uses = [s.get("uses", "").split("@")[0] for s in job["steps"]]
    assert uses[:2] == ["actions/checkout", "actions/setup-python"]
    runs = [s for s in job["steps"] if "run" in s]
    assert "pip install" in runs[0]["run"]
    release = next(s for s in runs if "deploy/ci/model-release.sh" in s["run"])
    for name in inputs:
        assert f"${{{{ inputs.{name} }}}}" in release["env"].values(), f"input {name} does not reach the script"
        assert "inputs." not in release["run"], "inputs must reach the shell as variables, not pasted text"
    script_variables = set(re.findall(r"\bRELEASE_[A-Z_]+", SCRIPT.read_text()))
    assert set(release["env"]) <= script_variables, set(release["env"]) - script_variables
    actionlint = shutil.which("actionlint") or shutil.which("actionlint", path=str(Path(sys.executable).parent))
    if actionlint:
        linted = subprocess.run([actionlint, str(WORKFLOW)], check=False, capture_output=True, text=True)
        assert linted.returncode == 0, linted.stdout + linted.stderr



@pytest.mark.integration
@pytest.mark.slow
def test_a_canary_without_traffic_is_ended_and_one_the_guard_rolls_back_fails_the_release(
        tmp_path: Path, kafka_bootstrap: str, kafka_topics: Callable[..., Topics], redis_db_url: str,
        features: dict[str, float], start_worker: StartWorker) -> None:
    topics = kafka_topics(partitions=1)
    release = Release(tmp_path, kafka_bootstrap, redis_db_url, topics, features, max_latency_ms=0.000001)
    worker = release.start_worker(start_worker)
    canary = ("--canary-share", "0.5", "--canary-duration", "1", "--canary-events", "300", "--poll", "1",
              "--settle", "1", "--wait", "30")

    quiet = release.run_script("2", *GATES, *canary, "--canary-timeout", "4")

    assert quiet.returncode == 15, quiet.stderr
    assert steps(quiet.stdout) == ["0", "1", "2", "3"]
    assert "not enough traffic to judge it" in quiet.stderr
    assert "ending the canary of v2 (revision 1)" in quiet.stderr
    desired = release.status()["desired"]
    # `worker models canary --off` records itself as a canary-rollback, as the guard's rollback does
    assert (desired["revision"], desired["command"], desired["active"], desired["canary"]) == \
        (2, "canary-rollback", "1", None)
    assert desired["reason"].startswith("model-release.sh: release stopped (FAILED at step 3/4")

    traffic = Traffic(kafka_bootstrap, topics.input)
    traffic.start()
    try:
        breached = release.run_script("2", *GATES, *canary, "--canary-timeout", "60")
    finally:
        traffic.stop()

    assert breached.returncode == 14, breached.stderr
    assert steps(breached.stdout) == ["0", "1", "2", "3"]
    assert "the canary of v2 was rolled back: revision 4 (canary-rollback by " in breached.stderr
    assert "p99 inference time" in breached.stderr
    assert "ending the canary" not in breached.stderr  # the guard did: nothing left to end
    status = release.status()
    assert (status["desired"]["command"], status["desired"]["active"], status["desired"]["canary"]) == \
        ("canary-rollback", "1", None)
    assert [(r["active"], r["canary"]) for r in status["replicas"]] == [("1", None)]
    assert "canary v2 rolled back: p99 inference time" in worker.log()
