"""The alert rules load in Prometheus and behave as their unit tests say: promtool checks
``deploy/prometheus-alerts.yml`` and runs ``deploy/prometheus-alerts.test.yml``, which sees every
alert of every group fire and stay quiet. Every alert links its section of ``deploy/runbooks.md``.

promtool comes with ``make setup`` (Debian's prometheus package). Without it these tests fail
rather than skip: CI runs on a machine set up by the Makefile, so a missing promtool is a broken
setup, not an optional extra."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.infra import repo_root

ROOT = repo_root()
DEPLOY = ROOT / "deploy"
RULES = "prometheus-alerts.yml"
RULE_TESTS = "prometheus-alerts.test.yml"
RUNBOOKS = "deploy/runbooks.md"  # runbook_url is this path, relative to the repository's root, and an anchor
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


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_alert_rules_are_valid() -> None:
    assert_promtool_succeeds("check", "rules", RULES)


def test_the_alerts_pass_their_unit_tests() -> None:
    assert_promtool_succeeds("test", "rules", RULE_TESTS)


def test_every_alert_is_seen_firing_and_quiet() -> None:
    checks = [c for t in load(RULE_TESTS)["tests"] for c in t.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in checks if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in checks if not c.get("exp_alerts")}
    alerts = {rule["alert"] for rule in alert_rules()}
    assert len(alerts) == len(alert_rules()), "two rules have the same alert name"
    assert {g["name"] for g in load(RULES)["groups"]} >= {"inference-worker", "model-quality", "model-lifecycle"}
    assert alerts - firing == set(), "no promtool test sees these alerts fire"
    assert alerts - quiet == set(), "no promtool test sees these alerts stay quiet"
    assert (firing | quiet) - alerts == set(), "promtool tests check alerts that no rule defines"


def test_every_alert_links_its_section_of_the_runbooks() -> None:
    sections = anchors((ROOT / RUNBOOKS).read_text())
    urls = {rule["alert"]: rule.get("annotations", {}).get("runbook_url", "") for rule in alert_rules()}
    assert {a for a, url in urls.items() if not url.startswith(f"{RUNBOOKS}#")} == set(), \
        f"these alerts have no runbook_url of the form {RUNBOOKS}#anchor"
    missing = {a: url for a, url in urls.items() if url.partition("#")[2] not in sections}
    assert missing == {}, f"these runbook_urls name no heading of {RUNBOOKS}"
    assert {a: url for a, url in urls.items() if url.partition("#")[2] != a.lower()} == {}, \
        "each alert's anchor is its name in lower case"


def test_the_anchors_are_githubs() -> None:
    assert anchors("# Runbooks\n## WorkerLagging\n### What it means: lag, in seconds!\n") == {
        "runbooks", "workerlagging", "what-it-means-lag-in-seconds"}


def test_without_promtool_the_tests_fail_and_say_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.fail.Exception, match=r"make setup"):
        promtool()
