"""``worker explain`` against a real Redis: one event's reasons, in the terminal and as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.unit.test_example_model import CONFIG, data
from worker.cli.main import main

pytestmark = pytest.mark.integration


@pytest.fixture
def loaded(redis_db_url: str) -> str:
    assert main(["features", "load", "--config", str(CONFIG), "--redis-url", redis_db_url,
                 "--generator", str(CONFIG.parents[2] / "models/fraud/data.py") + ":features"]) == 0
    return redis_db_url


@pytest.mark.parametrize("method", ["occlusion", "tree_shap"])
def test_an_outsized_amount_is_the_first_reason(loaded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    monkeypatch.setenv("WORKER_EXPLAIN__METHOD", method)
    event = next(r for r in data.events(50, seed=3) if r["card"]["present"] and r["amount"] < 50)
    (tmp_path / "event.json").write_text(json.dumps({**event, "amount": 5000.0}))
    capsys.readouterr()
    code = main(["explain", "--config", str(CONFIG), "--redis-url", loaded, "--event", str(tmp_path / "event.json"),
                 "--out", str(tmp_path / "why.png")])
    out = capsys.readouterr().out
    assert code == 0 and "reasons: amount" in out and f"by {method}" in out, out
    assert out.splitlines()[1].split()[0] == "amount", "the largest contribution first"
    assert Image.open(tmp_path / "why.png").size[0] > 100


def test_an_event_that_does_not_fit_the_schema_is_one_clear_line(loaded: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "event.json").write_text(json.dumps({"amount": "lots"}))
    code = main(["explain", "--config", str(CONFIG), "--redis-url", loaded, "--event", str(tmp_path / "event.json")])
    assert code == 1 and "does not fit the input schema" in capsys.readouterr().err
