"""Validation before serving: each way a version can be unfit is refused with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.model_repo import add_version, golden_inputs, logistic, probabilities
from tests.support.onnx_models import sum_of_inputs
from worker.lifecycle.card import ModelCard, read_card
from worker.lifecycle.golden import FedInput, golden_feeds, make_golden, sample_inputs
from worker.lifecycle.repository import ModelRepository
from worker.lifecycle.validation import ModelRefused, Policy, Signature, load_file, load_version
from worker.pipeline.assembly import NUMERIC_DTYPES, numpy_dtype

SIGNATURE = Signature((FedInput("x", "float32", 2, 2),), ("probabilities",), "probabilities", 1)
POLICY = Policy(warmup_sizes=(1, 500))
SHARED_CARD = Path(__file__).resolve().parents[3] / "shared" / "workload" / "fraud" / "model-card.json"
EXAMPLE_CARD = Path(__file__).resolve().parents[2] / "models" / "fraud" / "1" / "model-card.json"


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    add_version(tmp_path, "risk", "1", logistic([0.5, -0.25]))
    return ModelRepository(tmp_path)


def refusal(repo: ModelRepository, version: str, signature: Signature = SIGNATURE) -> list[str]:
    with pytest.raises(ModelRefused) as caught:
        load_version(repo, "risk", version, signature, POLICY)
    assert caught.value.version == version
    return caught.value.reasons


def test_a_sound_version_passes_every_check(repo: ModelRepository) -> None:
    validated = load_version(repo, "risk", "1", SIGNATURE, POLICY)

    assert validated.model.version == "1"
    assert validated.notes[0] == "signature fits the configuration (x [N, 2] float32)"
    assert validated.notes[1].startswith("golden vectors: 8 reproduced")
    assert validated.notes[2].startswith("warmed at batch sizes 1 (") and "500 (" in validated.notes[2]


def test_a_card_threshold_other_than_the_configured_one_is_served_and_named(repo: ModelRepository) -> None:
    add_version(repo.root, "risk", "2", logistic([0.5, -0.25]), card={"threshold": 0.7})
    configured = Signature(SIGNATURE.inputs, SIGNATURE.outputs, "probabilities", 1, threshold=0.5)

    same = load_version(repo, "risk", "1", configured, POLICY)
    other = load_version(repo, "risk", "2", configured, POLICY)

    assert len(same.notes) == 3
    assert other.notes[3] == "threshold: the card says 0.7; labels use model.threshold 0.5"


def test_a_corrupt_file_is_refused(repo: ModelRepository) -> None:
    (repo.root / "risk" / "2").mkdir()
    (repo.root / "risk" / "2" / "model.onnx").write_bytes(b"\x08\x07not a protobuf" * 10)

    (reason,) = refusal(repo, "2")

    assert reason.startswith("cannot load ONNX model") and "risk/2/model.onnx" in reason


def test_a_signature_mismatch_is_refused(repo: ModelRepository) -> None:
    add_version(repo.root, "risk", "2", logistic([0.5, -0.25, 1.0]), width=3)

    reasons = refusal(repo, "2")

    assert reasons == ["input 'x' is [N, 3] but the configuration feeds 2 columns"]


def test_a_golden_vector_mismatch_is_refused(repo: ModelRepository) -> None:
    # v2's card carries v1's golden vectors but its file is another model.
    add_version(repo.root, "risk", "2", logistic([0.9, 0.1]), golden_from=logistic([0.5, -0.25]))

    reasons = refusal(repo, "2")

    assert reasons[0].startswith("golden vector 0: output 'probabilities' is [")
    assert "expected [" in reasons[0] and "tolerance 1e-05" in reasons[0]
    assert reasons[-1].startswith("... and ") and reasons[-1].endswith("more golden mismatches")


def test_a_missing_version_names_the_ones_there(repo: ModelRepository) -> None:
    (reason,) = refusal(repo, "9")

    assert "version 9 is not in the repository" in reason and "versions of 'risk': 1" in reason


def test_every_signature_problem_is_named(tmp_path: Path) -> None:
    path = sum_of_inputs(tmp_path / "m.onnx", ["a", "b"])
    wanted = Signature((FedInput("a", "float64", 2, 1), FedInput("c", "float32", 2, 1)), ("probabilities",),
                       "probabilities", 1)

    with pytest.raises(ModelRefused) as caught:
        load_file(path, "m", "1", wanted, POLICY)

    assert caught.value.reasons == [
        "model input 'b' is not fed by the configuration (model.inputs has: a, c)",
        "input 'a' is float32 but the configuration feeds float64",
        "the model has no input 'c' (it has: a, b)",
        "the model has no output 'probabilities' (it has: score)",
    ]


def test_a_score_column_outside_the_output_is_refused(repo: ModelRepository) -> None:
    wanted = Signature(SIGNATURE.inputs, SIGNATURE.outputs, "probabilities", 2)

    assert refusal(repo, "1", wanted) == ["the score is column 2 of 'probabilities', but that output has 2 columns"]


def test_a_model_with_a_fixed_batch_size_fails_its_warm_up(repo: ModelRepository) -> None:
    add_version(repo.root, "risk", "2", logistic([0.5, -0.25], batch=1), golden=False)

    (reason,) = refusal(repo, "2")

    assert reason.startswith("fails at batch size 500: model risk v2 failed:")


def test_a_card_describing_another_model_is_refused(repo: ModelRepository) -> None:
    add_version(repo.root, "risk", "2", logistic([0.5, -0.25]), golden=False,
                card={"input": {"name": "x", "shape": [None, 17]}})

    assert refusal(repo, "2") == ["the model card describes input 'x' as [N, 17] but the model has [N, 2]"]


def test_without_golden_vectors_the_check_is_skipped_with_a_note(repo: ModelRepository,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    add_version(repo.root, "risk", "2", logistic([0.5, -0.25]), golden=False)

    validated = load_version(repo, "risk", "2", SIGNATURE, POLICY)

    assert validated.notes[1] == "golden vectors: none in the model card (check skipped)"
    assert "no golden vectors" in caplog.text


def test_a_model_without_a_card_is_served_without_warnings_about_one(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = logistic([0.5, -0.25])(tmp_path / "model.onnx")

    validated = load_file(path, "risk", "a1b2c3", SIGNATURE, POLICY)

    assert validated.notes[1] == "no model card beside the file (its checks, golden vectors included, skipped)"
    assert "golden" not in caplog.text


def test_a_cards_own_tolerance_wins(repo: ModelRepository) -> None:
    add_version(repo.root, "risk", "2", logistic([0.5, -0.2499]), golden_from=logistic([0.5, -0.25]),
                card={"golden_tolerance": {"atol": 0.01}})

    assert load_version(repo, "risk", "2", SIGNATURE, POLICY).notes[1].startswith("golden vectors: 8 reproduced")


def test_golden_vectors_in_the_multi_input_layout(tmp_path: Path) -> None:
    path = sum_of_inputs(tmp_path / "model.onnx", ["a", "b"])
    signature = Signature((FedInput("a", "float32", 2, 1), FedInput("b", "float32", 2, 1)), ("score",), "score",
                          None)
    golden = [{"inputs": {"a": [1.5], "b": [2.0]}, "outputs": {"score": [3.5]}},
              {"inputs": {"a": [-1.0], "b": [0.25]}, "outputs": {"score": [-0.75]}}]
    (tmp_path / "model-card.json").write_text(json.dumps({"golden": golden}))

    assert load_file(path, "sum", "1", signature, POLICY).notes[1].startswith("golden vectors: 2 reproduced")

    golden[1]["outputs"] = {"score": [0.0]}
    (tmp_path / "model-card.json").write_text(json.dumps({"golden": golden}))
    with pytest.raises(ModelRefused, match=r"golden vector 1: output 'score' is \[-0.75\], expected \[0\]"):
        load_file(path, "sum", "1", signature, POLICY)


def test_golden_vectors_made_from_a_trusted_version_are_reproduced(repo: ModelRepository) -> None:
    model = load_version(repo, "risk", "1", SIGNATURE, POLICY).model
    feeds = {"x": golden_inputs(2, n=5, seed=9)}

    vectors = make_golden(model, SIGNATURE.inputs, ["probabilities"], feeds)

    assert vectors[0] == {"input": feeds["x"][0].tolist(),
                          "probabilities": probabilities(repo.path("risk", "1"), feeds["x"][:1])[0].tolist()}
    card = ModelCard.parse({"golden": vectors})
    assert np.allclose([g.expected(["probabilities"])["probabilities"] for g in card.golden],
                       probabilities(repo.path("risk", "1"), feeds["x"]))


@pytest.mark.parametrize("path", [SHARED_CARD, EXAMPLE_CARD], ids=["shared-workload", "example"])
def test_existing_cards_are_read(path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"{path} is not here")

    card = read_card(path.parent / "model.onnx")

    assert card.inputs[0].name == "features" and card.outputs[0].name == "probabilities"
    assert card.threshold is not None and card.reference_stats
    if "golden" in card.data:
        assert card.golden and card.golden[0].expected(["probabilities", "label"])


def test_a_version_must_keep_the_kind_of_output_the_serving_one_returns(repo: ModelRepository) -> None:
    wanted = Signature(SIGNATURE.inputs, SIGNATURE.outputs, "probabilities", 1,
                       (("probabilities", "sequence of maps (ZipMap)"),))

    assert refusal(repo, "1", wanted) == ["output 'probabilities' is a tensor, but the serving model's is a "
                                          "sequence of maps (ZipMap)"]


@pytest.mark.parametrize("dtype", [*NUMERIC_DTYPES, "string"])
def test_sample_and_golden_inputs_take_every_dtype_the_configuration_accepts(dtype: str) -> None:
    fed = FedInput("x", dtype, 2, 3)

    sampled = sample_inputs([fed], 4)["x"]
    card = ModelCard.parse({"golden": [{"input": row, "out": [0.0]} for row in sampled.tolist()]})
    fed_back = golden_feeds(card.golden, [fed])["x"]

    assert sampled.shape == (4, 3) and sampled.dtype == numpy_dtype(dtype)
    assert fed_back.dtype == sampled.dtype and fed_back.tolist() == sampled.tolist()
