"""The alert rules load in Prometheus and behave as their unit tests say: promtool checks
``deploy/prometheus-alerts.yml`` and runs ``deploy/prometheus-alerts.test.yml``, which covers every
model-quality alert.

promtool comes with ``make setup`` (Debian's prometheus package). Without it these tests fail
rather than skip: CI runs on a machine set up by the Makefile, so a missing promtool is a broken
setup, not an optional extra."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.infra import repo_root

DEPLOY = repo_root() / "deploy"
RULES = "prometheus-alerts.yml"
RULE_TESTS = "prometheus-alerts.test.yml"
TESTED_GROUP = "model-quality"
INSTALL = ("promtool not found on PATH: run `make setup` (it installs Debian's prometheus package, "
           "which provides promtool), or put the promtool of a Prometheus release on PATH")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(INSTALL, pytrace=False)
    return path


def assert_promtool_succeeds(*args: str) -> None:
    result = subprocess.run([promtool(), *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120,
                            check=False)
    output = f"{result.stdout}{result.stderr}"
    assert result.returncode == 0, f"promtool {' '.join(args)} exited with {result.returncode}:\n{output}"


def load(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_the_alert_rules_are_valid() -> None:
    assert_promtool_succeeds("check", "rules", RULES)


def test_the_alerts_pass_their_unit_tests() -> None:
    assert_promtool_succeeds("test", "rules", RULE_TESTS)


def test_every_model_quality_alert_is_seen_firing_and_quiet() -> None:
    group = next(g for g in load(RULES)["groups"] if g["name"] == TESTED_GROUP)
    checks = [c for t in load(RULE_TESTS)["tests"] for c in t["alert_rule_test"]]
    firing = {c["alertname"] for c in checks if c["exp_alerts"]}
    quiet = {c["alertname"] for c in checks if not c["exp_alerts"]}
    alerts = {rule["alert"] for rule in group["rules"]}
    assert alerts - firing == set(), "no promtool test sees these alerts fire"
    assert alerts - quiet == set(), "no promtool test sees these alerts stay quiet"


def test_without_promtool_the_tests_fail_and_say_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.fail.Exception, match=r"make setup"):
        promtool()
