"""``worker models ...`` against a control file, with a replica's control thread running in
this process (the wiring the worker uses, minus Kafka)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lifecycle import MODEL, write_lifecycle_config
from worker.app import lifecycle
from worker.cli.main import main
from worker.config.compile import compile_settings
from worker.config.settings import load_settings
from worker.runner.observer import Observer
from worker.serving import ModelSlot

SHARED_MODEL = Path(__file__).resolve().parents[3] / "shared" / "workload" / "fraud" / "model.onnx"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_lifecycle_config(tmp_path, {"control_file": "control.json", "replica_id": "replica-a"})


@pytest.fixture
def replica(config: Path) -> Iterator[ModelSlot]:
    """A replica's model lifecycle (control thread included) as ``worker run`` wires it."""
    settings = load_settings(config)
    compiled = compile_settings(settings)
    slot = ModelSlot(compiled.model)
    observers: list[Observer] = lifecycle.start(settings, compiled, slot, None, {})  # type: ignore[arg-type]
    yield slot
    for observer in observers:
        observer.stopped()


def models(config: Path, *args: str) -> int:
    return main(["models", *args, "-c", str(config)])


def test_list_and_validate(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert models(config, "list") == 0
    listing = capsys.readouterr().out
    assert "risk in " in listing and "(the configuration names v1)" in listing
    assert [line.split()[0] for line in listing.splitlines()[2:]] == ["1", "2"]
    assert "threshold 0.5, holdout_auc 0.9" in listing.splitlines()[2]

    assert models(config, "validate", "2") == 0
    assert "golden vectors: 8 reproduced" in capsys.readouterr().out
    (config.parent / "models" / MODEL / "2" / "model.onnx").write_bytes(b"garbage")
    assert models(config, "validate", "2") == 1
    assert "cannot load ONNX model" in capsys.readouterr().err


def test_promote_applies_on_the_replica_and_reports(config: Path, replica: ModelSlot,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert replica.model.version == "1"

    assert models(config, "promote", "2", "--wait", "10") == 0

    out = capsys.readouterr().out
    assert "revision 1 (promote): active v2" in out
    assert "replica-a: serving revision 1: active v2" in out
    assert replica.model.version == "2"
    assert models(config, "rollback", "--wait", "10") == 0
    assert replica.model.version == "1"
    assert models(config, "status") == 0
    assert "risk: revision 2: active v1 (rollback by " in capsys.readouterr().out


def test_a_refused_version_is_reported_and_the_old_one_keeps_serving(config: Path, replica: ModelSlot,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(config.parent / "models" / MODEL / "2", config.parent / "models" / MODEL / "3")
    (config.parent / "models" / MODEL / "3" / "model.onnx").write_bytes(b"")

    assert models(config, "canary", "3", "--share", "0.2") == 1
    assert "refused: risk v3:" in capsys.readouterr().err
    assert models(config, "canary", "3", "--share", "0.2", "--force", "--wait", "10") == 1

    out = capsys.readouterr().out
    assert "replica-a: REFUSED revision 1 (v3: " in out and "model.onnx is empty" in out
    assert replica.serving.canary is None and replica.model.version == "1"
    assert models(config, "status", "--json") == 1
    status = json.loads(capsys.readouterr().out)
    assert status["desired"]["canary"] == "3" and status["replicas"][0]["refused"]["version"] == "3"
    assert models(config, "rollback", "--wait", "10") == 0
    out = capsys.readouterr().out
    assert "every replica refused revision 1; this applies to what they serve: active v1" in out
    assert "replica-a: serving revision 2: active v1" in out


def test_canary_and_shadow_reach_the_replica(config: Path, replica: ModelSlot) -> None:
    settings_file = config.read_text().replace("lifecycle:\n", "lifecycle:\n  shadow_topic: scores-shadow\n")
    config.write_text(settings_file)
    assert models(config, "canary", "2", "--share", "0.3", "--wait", "10") == 0
    assert replica.serving.canary is not None and replica.serving.canary_share == 0.3

    assert models(config, "shadow", "2", "--wait", "10") == 1, "the replica has no shadow topic"
    assert replica.serving.shadow is None


def test_golden_vectors_are_written_from_a_trusted_version(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card_file = config.parent / "models" / MODEL / "2" / "model-card.json"
    card = json.loads(card_file.read_text())
    card_file.write_text(json.dumps({k: v for k, v in card.items() if k != "golden"}))

    assert models(config, "golden", "2", "--count", "5") == 0
    assert len(json.loads(card_file.read_text())["golden"]) == 5
    assert models(config, "golden", "2") == 1
    assert "already has 5 golden vectors" in capsys.readouterr().err
    assert models(config, "validate", "2") == 0


def test_optimize_quantises_a_matmul_model_and_validates_it(config: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert models(config, "optimize", "1") == 1, "int8 weights do not reproduce the golden vectors to 1e-5"
    out = capsys.readouterr().out
    assert "dynamic int8 quantisation of the weights of 1 MatMul/Gemm node(s)" in out
    assert "NOT servable: golden vector 0:" in out

    assert models(config, "optimize", "1", "--golden-atol", "0.02", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == "4" and report["servable"]
    assert 0 < report["after"]["golden_max_diff"] < 0.02
    card = json.loads((config.parent / "models" / MODEL / "4" / "model-card.json").read_text())
    assert card["version"] == "4" and card["provenance"]["derived_from"]["version"] == "1"


def test_optimize_only_graph_optimises_a_tree_ensemble(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not SHARED_MODEL.is_file():
        pytest.skip("the shared fraud workload is not here")
    from tests.support.configs import changed, fraud_config, write_config

    repository = config.parent / "fraud-models"
    (repository / "fraud-gbdt" / "1").mkdir(parents=True)
    shutil.copy(SHARED_MODEL, repository / "fraud-gbdt" / "1" / "model.onnx")
    fraud = write_config(config.parent / "fraud.yaml", changed(fraud_config(), **{
        "model.path": None, "model.repository": str(repository), "model.name": "fraud-gbdt"}))
    assert models(fraud, "golden", "1") == 0

    assert models(fraud, "optimize", "1", "--json") == 0

    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert report["steps"][0].startswith("no MatMul/Gemm nodes (tree ensembles have none)")
    assert report["after"]["golden_max_diff"] <= 1e-6 and report["servable"]


def test_check_config_reports_lifecycle_settings_that_cannot_work(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = write_lifecycle_config(tmp_path, {"control_topic": "scores", "control_file": "c.json"})
    assert main(["check-config", "-c", str(config)]) == 2
    assert "lifecycle: give control_topic or control_file, not both" in capsys.readouterr().err

    text = config.read_text().replace("  control_file: c.json\n", "  shadow_topic: payments\n")
    config.write_text(text.replace("  repository: models\n", f"  path: {tmp_path}/models/risk/1/model.onnx\n"))
    assert main(["check-config", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "config error: lifecycle: a control channel switches between versions of a model repository" in err
    assert "config error: lifecycle.shadow_topic: 'payments' is already used" in err
    assert "config error: lifecycle.control_topic: 'scores' is already used" in err
