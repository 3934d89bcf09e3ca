"""``worker models evaluate`` on the fraud example, with a real Redis: its figures against
scikit-learn's on scores computed independently (ONNX Runtime on the example's own feature
vectors), the same figures from every file format, an identical copy changing nothing, a worse
version failing its gates, the plot, and the rows that cannot be scored counted, not fatal.

The repository is a copy of ``models/`` with v2 (v1's files: an identical model) and v3 (a
logistic model of a few features: clearly worse)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import fastavro
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import yaml
from PIL import Image
from sklearn.metrics import log_loss, precision_score, recall_score, roc_auc_score, roc_curve

from tests.support.infra import repo_root
from tests.support.model_repo import add_version, logistic
from worker.app.evaluate import roc_curve as worker_roc_curve
from worker.cli.main import main

pytestmark = pytest.mark.integration

REPO = repo_root()
EXAMPLE = REPO / "deploy" / "config" / "fraud-example.yaml"
DATA = REPO / "models" / "fraud" / "data.py"
THRESHOLD = 0.45  # model.threshold of the example
N = 3000


def load_data() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fraud_example_data_evaluate", DATA)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


data = load_data()


class Example:
    """The example's config on a copy of its repository, and labelled rows of its world."""

    def __init__(self, directory: Path) -> None:
        self.repository = directory / "models"
        versions = self.repository / "fraud"
        shutil.copytree(REPO / "models" / "fraud" / "1", versions / "1")
        shutil.copytree(versions / "1", versions / "2")
        card = json.loads((versions / "2" / "model-card.json").read_text())
        (versions / "2" / "model-card.json").write_text(json.dumps({**card, "version": "2"}))
        weights = [0.0] * 17
        weights[1], weights[9], weights[10] = -1.0, 1.5, 0.8  # card present, chargebacks, declines
        add_version(self.repository, "fraud", "3", logistic(weights, -3.5, input_name="features"), width=17,
                    card={"input": {"name": "features", "shape": [None, 17]}, "threshold": THRESHOLD}, golden=False)
        self.config = self._config(directory / "fraud.yaml")
        self.world = data.make_world()
        pairs = list(data.transactions(self.world, N, 5))
        self.records = [r for r, _ in pairs]
        self.labels = np.array([y for _, y in pairs], dtype=bool)
        self.jsonl = directory / "labelled.jsonl"
        self.jsonl.write_text("".join(json.dumps({**r, "label": y}) + "\n" for r, y in pairs))

    def _config(self, path: Path) -> Path:
        raw: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
        base = EXAMPLE.parent
        for section, key in (("avro", "input_schema"), ("avro", "output_schema")):
            raw[section][key] = str((base / raw[section][key]).resolve())
        labels = raw["monitoring"]["labels"]
        labels["schema_file"] = str((base / labels["schema_file"]).resolve())
        raw["model"]["repository"] = str(self.repository)
        raw.pop("demo")
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    def scores(self, version: str) -> np.ndarray:
        """P(fraud) from ONNX Runtime on the example's own feature vectors, not the worker's."""
        session = ort.InferenceSession(str(self.repository / "fraud" / version / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        x = data.feature_matrix(self.records, self.world)
        return np.asarray(session.run(["probabilities"], {"features": x})[0])[:, 1].astype(np.float64)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return Example(tmp_path_factory.mktemp("evaluate"))


@pytest.fixture
def features(example: Example, redis_db_url: str) -> str:
    """This test's Redis database, holding the example world's features (loaded by the CLI)."""
    code = main(["features", "load", "--config", str(example.config), "--redis-url", redis_db_url,
                 "--generator", f"{DATA}:features"])
    assert code == 0
    return redis_db_url


def evaluate(example: Example, url: str, *args: str) -> int:
    return main(["models", "evaluate", "--config", str(example.config), "--redis-url", url, *args])


def evaluated(example: Example, url: str, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert evaluate(example, url, *args, "--json") == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_the_figures_are_scikit_learns_on_independent_scores_and_a_copy_changes_nothing(
        example: Example, features: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = evaluated(example, features, capsys, "2", "--input", str(example.jsonl))
    assert result["versions"] == {"candidate": "2", "serving": "1"}
    assert result["rows"] == {"read": N, "scored": N, "skipped": 0, "skipped_by_reason": {},
                              "skipped_examples": {}}
    y, scores = example.labels, example.scores("1")
    flagged = scores >= THRESHOLD
    assert y.sum() > 20 and flagged.sum() > 10, "a test needs both classes and some flags"
    for role in ("candidate", "serving"):
        m = result["metrics"][role]
        assert abs(m["auc"] - roc_auc_score(y, scores)) < 1e-6
        assert m["precision"] == precision_score(y, flagged)
        assert m["recall"] == recall_score(y, flagged)
        assert abs(m["log_loss"] - log_loss(y, scores)) < 1e-9
        assert m["flagged"] == int(flagged.sum())
        assert sum(m["calibration"]["rows"]) == N
    d = result["deltas"]
    assert d["labels_changed"] == d["newly_flagged"] == d["no_longer_flagged"] == 0
    assert d["label_flip_share"] == d["auc"] == d["score_abs_mean"] == d["score_abs_p99"] == d["score_abs_max"] == 0
    assert result["gates"] == [] and result["passed"] is True


def test_every_file_format_gives_the_same_figures(example: Example, features: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Labels as numbers this time (Avro int, Parquet int), and the label field named."""
    schema = json.loads((REPO / "schemas" / "fraud" / "transaction.avsc").read_text())
    schema["fields"].append({"name": "fraud", "type": "int"})
    rows = [{**r, "fraud": int(y)} for r, y in zip(example.records, example.labels, strict=True)]
    with (tmp_path / "labelled.avro").open("wb") as f:
        fastavro.writer(f, fastavro.parse_schema(schema), rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "labelled.parquet")
    reference = evaluated(example, features, capsys, "3", "--input", str(example.jsonl))
    for name in ("labelled.avro", "labelled.parquet"):
        found = evaluated(example, features, capsys, "3", "--input", str(tmp_path / name), "--label-field", "fraud")
        assert found["rows"]["scored"] == N
        assert found["metrics"] == reference["metrics"] and found["deltas"] == reference["deltas"]


def test_a_worse_version_fails_its_gates_and_says_by_how_much(example: Example, features: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    labelled = str(example.jsonl)
    worse = evaluated(example, features, capsys, "3", "--input", labelled)  # no gates: passes
    drop = worse["metrics"]["serving"]["auc"] - worse["metrics"]["candidate"]["auc"]
    assert drop > 0.05
    assert abs(worse["metrics"]["candidate"]["auc"] - roc_auc_score(example.labels, example.scores("3"))) < 1e-6
    assert worse["deltas"]["labels_changed"] > 0 and worse["deltas"]["score_abs_max"] > 0.1

    assert evaluate(example, features, "3", "--input", labelled, "--max-auc-drop", "0.01") == 1
    out = capsys.readouterr().out
    assert f"FAIL  --max-auc-drop 0.01: AUC drop (v1's - v3's) {drop:.4f} > 0.01, by {drop - 0.01:.4g}" in out
    assert "v3 (candidate)" in out and "v1 (serving)" in out and "labels changed:" in out

    assert evaluate(example, features, "2", "--input", labelled, "--min-auc", "0.99", "--max-label-flip", "0",
                    "--json") == 1
    gates = {g["option"]: g for g in json.loads(capsys.readouterr().out)["gates"]}
    assert gates["--min-auc"]["passed"] is False and gates["--max-label-flip"]["passed"] is True


def test_a_label_flip_gate_of_0_fails_a_version_that_changes_any_label(example: Example, features: str,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate(example, features, "3", "--input", str(example.jsonl), "--max-label-flip", "0", "--json") == 1
    result = json.loads(capsys.readouterr().out)
    assert result["deltas"]["labels_changed"] > 0 and result["passed"] is False
    assert [g["option"] for g in result["gates"] if not g["passed"]] == ["--max-label-flip"]


def test_batch_scores_with_the_version_asked_for(example: Example, features: str, tmp_path: Path) -> None:
    """v2 (v1's model under another version; v3 has no reference statistics for the example's
    explanations): its outputs say v2 and carry ONNX Runtime's v2 scores."""
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in example.records))
    code = main(["batch", "--config", str(example.config), "--redis-url", features, "--input",
                 str(tmp_path / "events.jsonl"), "--output", str(tmp_path / "out.jsonl"), "--model-version", "2"])
    assert code == 0
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").open()]
    assert {o["model_version"] for o in out} == {"2"}, "the configured version (1) was used"
    assert np.allclose([o["score"] for o in out], example.scores("2"), atol=1e-6)


def test_the_plot_is_a_png(example: Example, features: str, tmp_path: Path) -> None:
    assert evaluate(example, features, "3", "--input", str(example.jsonl), "--plot", str(tmp_path / "eval.png")) == 0
    with Image.open(tmp_path / "eval.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 300


def test_rows_that_cannot_be_scored_are_counted_not_fatal(example: Example, features: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    lines = example.jsonl.read_text().splitlines()
    lines[3] = "{not json"
    lines[4] = json.dumps({**json.loads(lines[4]), "label": "yes"})
    lines[5] = json.dumps({k: v for k, v in json.loads(lines[5]).items() if k != "label"})
    (tmp_path / "some-bad.jsonl").write_text("\n".join(lines) + "\n")
    card = example.records[10]["card"]["id"]  # a feature that is not a number fails its rows' assembly
    redis.Redis.from_url(features).hset(f"fraud:card:{card}", "txn_count_1h", "lots")
    unassembled = sum(r["card"]["id"] == card for i, r in enumerate(example.records) if i not in (3, 4, 5))
    result = evaluated(example, features, capsys, "2", "--input", str(tmp_path / "some-bad.jsonl"))
    assert result["rows"]["skipped_by_reason"] == {"input": 2, "label": 1, "assemble": unassembled}
    assert result["rows"]["scored"] == N - 3 - unassembled
    assert result["rows"]["skipped_examples"]["label"] == "row 6: no label"
    assert result["rows"]["skipped_examples"]["input"].startswith("row 4: not JSON")  # the first of each reason
    assert "txn_count_1h" in result["rows"]["skipped_examples"]["assemble"]


def test_an_unknown_version_or_a_single_model_file_is_a_clear_error(example: Example, redis_db_url: str,
                                                                    tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    labelled = str(example.jsonl)
    assert evaluate(example, redis_db_url, "9", "--input", labelled) == 1
    assert "version 9 is not in the repository" in capsys.readouterr().err
    assert evaluate(example, redis_db_url, "2", "--against", "8", "--input", labelled) == 1
    assert "versions of 'fraud': 1, 2, 3" in capsys.readouterr().err
    assert evaluate(example, redis_db_url, "2", "--input", str(tmp_path / "none.jsonl")) == 2, "usage, not a gate"
    assert "no such file" in capsys.readouterr().err
    raw = yaml.safe_load(example.config.read_text())
    raw["model"] = {**raw["model"], "path": str(example.repository / "fraud" / "1" / "model.onnx")}
    del raw["model"]["repository"], raw["model"]["version"]
    (tmp_path / "file.yaml").write_text(yaml.safe_dump(raw))
    code = main(["models", "evaluate", "--config", str(tmp_path / "file.yaml"), "2", "--input", labelled])
    assert code == 2 and "model.repository" in capsys.readouterr().err


def test_the_roc_curve_is_scikit_learns() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random(500) < 0.2
    scores = np.round(rng.random(500) * 0.5 + labels * 0.3, 2)  # ties, on purpose
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    mine = worker_roc_curve(scores, labels)
    assert np.allclose(mine[0], fpr) and np.allclose(mine[1], tpr)
