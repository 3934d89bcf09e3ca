"""Configuration validation: every fault is one line naming its key, and precedence rules."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.configs import DELETE, changed, fraud_config, write_config
from tests.support.onnx_models import DOUBLE, linear_classifier, sum_of_inputs
from worker.cli.main import main
from worker.config.compile import compile_settings
from worker.config.settings import load_settings
from worker.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("WORKER_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def base() -> dict[str, Any]:
    return fraud_config()


def problems_of(path: Path, overrides: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        compile_settings(load_settings(path, overrides))
    return caught.value.problems


def only_problem(path: Path) -> tuple[str, str]:
    found = problems_of(path)
    assert len(found) == 1, f"expected one problem, got {found}"
    return found[0]


CURRENCY_AS_FLOAT = {"event": "currency"}
FEAST = {"features.card.layout": "feast", "features.card.key": DELETE, "features.card.feature_view": "card_stats",
         "features.card.join_keys": {"card_id": "card_id"}}
BROKEN = {
    "unknown key, with a suggestion": (
        {"kafka.bootstrap_server": "b:9092"}, "kafka.bootstrap_server",
        "unknown key (did you mean 'bootstrap_servers'?)"),
    "unknown key in a named entity": (
        {"features.card.defualt": 0}, "features.card.defualt", "did you mean 'default'?"),
    "unknown top-level section": ({"modle": {}}, "modle", "did you mean 'model'?"),
    "required section missing": ({"output": DELETE}, "output", "required key is missing"),
    "value of the wrong type": ({"batch": {"max_events": "lots"}}, "batch.max_events", "valid integer"),
    "input schema file missing": ({"avro.input_schema": "/no/such/transaction.avsc"}, "avro.input_schema",
                                  "schema file not found: /no/such/transaction.avsc"),
    "output schema is not JSON": ({"avro.output_schema": "__NOT_JSON__"}, "avro.output_schema", "is not JSON"),
    "model file missing": ({"model.path": "/no/such/model.onnx"}, "model.path", "model file not found"),
    "model file is not ONNX": ({"model.path": "__NOT_JSON__"}, "model.path", "cannot load ONNX model"),
    "key template names an absent field": (
        {"features.card.key": "card:{card_no}"}, "features.card.key", "names 'card_no', but no field 'card_no'"),
    "key template is malformed": ({"features.card.key": "card:{}"}, "features.card.key", "bad key template"),
    "entity field without a default": (
        {"features.card.default": DELETE}, "features.card.defaults",
        "no default for fields 'txn_count_1h', 'txn_count_24h',"),
    "string field feeding a float tensor": (
        {"model.inputs.features.columns.1": CURRENCY_AS_FLOAT}, "model.inputs.features.columns[1]",
        "a string cannot feed a float32 tensor without a mapping"),
    "configured dtype differs from the model's": (
        {"model.inputs.features.dtype": "float64"}, "model.inputs.features.dtype",
        "'float64' does not match the model's input type 'float32'"),
    "nullable field without a default": (
        {"model.inputs.features.columns.3": {"event": "distance_from_home_km"}}, "model.inputs.features.columns[3]",
        "it can be null, so the column needs a default"),
    "mapping keys that are not values of the field": (
        {"model.inputs.features.columns.1": {"event": "mcc", "mapping": {"grocery": 1}, "default": 0}},
        "model.inputs.features.columns[1].mapping", "its keys must be int values like the event field 'mcc'"),
    "mapping on a double field": (
        {"model.inputs.features.columns.0": {"event": "amount", "mapping": {"1": 1}}},
        "model.inputs.features.columns[0]", "a mapping applies to string, enum, int or boolean fields, not double"),
    "column path absent from the input schema": (
        {"model.inputs.features.columns.0": {"event": "amount_eur"}}, "model.inputs.features.columns[0].event",
        "no field 'amount_eur' in Transaction"),
    "wrong number of columns": (
        {"model.inputs.features.columns.0": DELETE}, "model.inputs.features.columns",
        "the model input is [N, 15] but 14 columns are given"),
    "unknown entity": ({"model.inputs.features.columns.4": {"entity": "cards"}},
                       "model.inputs.features.columns[4].entity", "no entity 'cards'"),
    "model has no such input": ({"model.inputs.feats": {"columns": [{"event": "amount"}]}}, "model.inputs.feats",
                                "the model has no input 'feats'"),
    "score output absent": ({"model.score.output": "probs"}, "model.score.output", "no output 'probs'"),
    "score column out of range": ({"model.score.column": 2}, "model.score.column", "outside output"),
    "output field absent from the output schema": (
        {"output.fields.merchant_id": "merchant_id"}, "output.fields.merchant_id",
        "the output schema has no field 'merchant_id'"),
    "output schema field not fed": (
        {"output.fields.scored_at": DELETE}, "output.fields", "output schema field 'scored_at' is not fed"),
    "output field of an incompatible type": (
        {"output.fields.card_id": "amount"}, "output.fields.card_id", "a double cannot be written as string"),
    "special written to the wrong type": (
        {"output.fields.card_id": "$score"}, "output.fields.card_id",
        "$score cannot be written to a string field"),
    "reasons written to a string": (
        {"output.fields.card_id": "$reasons"}, "output.fields.card_id", "$reasons cannot be written to a string field"),
    "unknown special": ({"output.fields.is_fraud": "$lable"}, "output.fields.is_fraud", "unknown '$lable'"),
    "output key path absent": ({"output.key": "card"}, "output.key", "no field 'card'"),
    "int64 key encoding of a string field": (
        {"output.key": "card_id", "output.key_encoding": "int64"}, "output.key_encoding",
        "int64 writes an int or long as 8 bytes, but 'card_id' is a string"),
    "int64 key encoding without a key field": (
        {"output.key": DELETE, "output.key_encoding": "int64"}, "output.key_encoding",
        "int64 applies to output.key, which is not set"),
    "model.version differing from the model card's": (
        {"model.version": "2"}, "model.version", "'2' differs from '1' in the model card beside model.onnx"),
    "labels without a schema": (
        {"monitoring.labels.schema_file": DELETE}, "monitoring.labels.schema_file", "required with monitoring.labels"),
    "labels schema missing": ({"monitoring.labels.schema_file": "/no/such/label.avsc"},
                              "monitoring.labels.schema_file", "schema file not found"),
    "label id field absent": ({"monitoring.labels.id_field": "txn_id"}, "monitoring.labels.id_field",
                              "no field 'txn_id' in Label"),
    "label field of the wrong type": ({"monitoring.labels.label_field": "event_id"}, "monitoring.labels.label_field",
                                      "'event_id' is a string; expected boolean or int"),
    "predictions lack the join id": ({"monitoring.prediction_id_field": "txn_id"}, "monitoring.prediction_id_field",
                                     "the predictions have no field 'txn_id' to join labels on"),
    "labels read from the output topic": ({"monitoring.labels.topic": "predictions"}, "monitoring.labels.topic",
                                          "'predictions' is already used"),
    "joins read back as labels": ({"monitoring.joined_topic": "labels"}, "monitoring.joined_topic",
                                  "would read its own joins as labels"),
    "predictions without their version": ({"output.fields.model_version": "__CONST__"}, "output.fields",
                                          "add a field fed by $model_version"),
    "drift reference unreadable": ({"monitoring.reference": "__NOT_JSON__"}, "monitoring.reference",
                                   "cannot read the drift reference"),
    "feast layout without a project": (
        FEAST, "features.card.project", "layout feast needs project"),
    "a key template with the feast layout": (
        {**FEAST, "features.card.project": "fraud", "features.card.key": "card:{card_id}"}, "features.card.key",
        "key does not apply to layout feast"),
    "a join key from a double": (
        {**FEAST, "features.card.project": "fraud", "features.card.join_keys": {"card_id": "amount"}},
        "features.card.join_keys.card_id", "'amount' is a double, which cannot make a join key"),
    "a join key type the event field cannot give": (
        {**FEAST, "features.card.project": "fraud", "features.card.join_key_types": {"card_id": "int32"}},
        "features.card.join_keys.card_id", "'card_id' is a string, which cannot make an int32 join key"),
    "max_age_s on plain hashes without a timestamp field": (
        {"features.card.max_age_s": 60}, "features.card.max_age_s", "plain hashes need timestamp_field"),
    "drift window too small": ({"monitoring.window_events": 10}, "monitoring.window_events",
                               "greater than or equal to 100"),
}


def broken_config(tmp_path: Path, base: dict[str, Any], changes: dict[str, Any]) -> Path:
    not_json = tmp_path / "not-json.bin"
    not_json.write_bytes(b"\x00not json, not onnx")
    constants = {"__NOT_JSON__": str(not_json), "__CONST__": {"const": "v1"}}
    resolved = {k: constants.get(v, v) if isinstance(v, str) else v for k, v in changes.items()}
    return write_config(tmp_path / "broken.yaml", changed(base, **resolved))


@pytest.mark.parametrize(("changes", "key", "reason"), BROKEN.values(), ids=BROKEN.keys())
def test_each_fault_is_one_problem_naming_its_key(tmp_path: Path, base: dict[str, Any], changes: dict[str, Any],
                                                  key: str, reason: str) -> None:
    found_key, found_reason = only_problem(broken_config(tmp_path, base, changes))

    assert found_key == key
    assert reason in found_reason


@pytest.mark.parametrize(("changes", "key", "reason"), BROKEN.values(), ids=BROKEN.keys())
def test_check_config_prints_one_line_and_exits_2(tmp_path: Path, base: dict[str, Any], changes: dict[str, Any],
                                                  key: str, reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = broken_config(tmp_path, base, changes)

    code = main(["check-config", "--config", str(path)])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"config error: {key}: ")
    assert reason in lines[0]


def test_check_config_accepts_the_fraud_contract(tmp_path: Path, base: dict[str, Any],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "good.yaml", base)

    code = main(["check-config", "--config", str(path)])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"config OK: {path}")
    assert "features[N,15] float32" in out
    assert "card (card:{card_id}, 7 fields)" in out


@pytest.mark.parametrize("stable", [None, "kafka.group_instance_id", "kafka.transactional_id"])
def test_check_config_warns_of_a_transactional_id_unique_per_process(tmp_path: Path, base: dict[str, Any],
                                                                     stable: str | None,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    changes = {"processing_guarantee": "exactly-once", **({stable: "worker-0"} if stable else {})}
    path = write_config(tmp_path / "eos.yaml", changed(base, **changes))

    assert main(["check-config", "--config", str(path)]) == 0

    warned = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  warning ")]
    assert warned == ([] if stable else [
        "  warning exactly-once with a transactional id unique per process: after a crash, read_committed "
        "consumers of the outputs wait for the dead producer's open transaction until the broker times it out "
        "(kafka.transaction_timeout_ms, 30 s; some brokers, tansu and noida-db, never do). Set "
        "kafka.group_instance_id (or kafka.transactional_id) to a name stable per replica, such as its "
        "StatefulSet pod name, and a restart aborts it at once"])


def test_check_config_explains_the_freshness_rule(tmp_path: Path, base: dict[str, Any],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "fresh.yaml", changed(base, **{
        "features.card.timestamp_field": "updated_at", "features.card.max_age_s": 900}))

    assert main(["check-config", "--config", str(path)]) == 0

    out = capsys.readouterr().out
    assert ("card (card:{card_id}, 7 fields): values written over 900 s ago (by the hash field updated_at), or at "
            "an unknown time, count as missing: their defaults apply and worker_feature_stale_total counts them") in out


def test_several_faults_are_all_reported(tmp_path: Path, base: dict[str, Any]) -> None:
    path = write_config(tmp_path / "c.yaml", changed(base, **{
        "features.card.key": "card:{card_no}", "output.fields.merchant_id": "merchant_id",
        "model.inputs.features.dtype": "float64"}))

    keys = [key for key, _ in problems_of(path)]

    assert sorted(keys) == ["features.card.key", "model.inputs.features.dtype", "output.fields.merchant_id"]


def test_a_model_input_nothing_feeds(tmp_path: Path, base: dict[str, Any]) -> None:
    model = sum_of_inputs(tmp_path / "two.onnx", ["amount", "mcc"])
    data = changed(base, **{"model.path": str(model), "model.score": {"output": "score"},
                            "model.inputs": {"amount": {"columns": [{"event": "amount"}]}}})

    assert only_problem(write_config(tmp_path / "c.yaml", data)) == (
        "model.inputs", "model input 'mcc' is not fed (add model.inputs.mcc)")


def test_configured_dtype_must_match_a_double_model(tmp_path: Path, base: dict[str, Any]) -> None:
    model = linear_classifier(tmp_path / "double.onnx", 15, dtype=DOUBLE)
    data = changed(base, **{"model.path": str(model), "model.inputs.features.dtype": "float32"})

    key, reason = only_problem(write_config(tmp_path / "c.yaml", data))

    assert key == "model.inputs.features.dtype"
    assert reason == "'float32' does not match the model's input type 'float64'"


def test_a_double_field_cannot_feed_an_integer_tensor(tmp_path: Path, base: dict[str, Any]) -> None:
    model = tmp_path / "int.onnx"
    from onnx import helper

    from tests.support.onnx_models import FLOAT, INT64, save_model
    save_model(model, [helper.make_node("Cast", ["x"], ["score"], to=FLOAT)], [("x", INT64, ["N", 1])],
               [("score", FLOAT, ["N", 1])])
    data = changed(base, **{"model.path": str(model), "model.score": {"output": "score"},
                            "model.inputs": {"x": {"columns": [{"event": "amount"}]}}})

    key, reason = only_problem(write_config(tmp_path / "c.yaml", data))

    assert key == "model.inputs.x.columns[0]"
    assert "a double cannot feed an int64 tensor without losing its fraction" in reason


def test_a_model_without_a_card_is_versioned_by_its_content_never_by_a_folder(tmp_path: Path,
                                                                               base: dict[str, Any]) -> None:
    folder = tmp_path / "workload"
    folder.mkdir()
    model = folder / "model.onnx"
    model.write_bytes(Path(base["model"]["path"]).read_bytes())  # the shared model, without its card
    bare = changed(base, **{"model.path": str(model), "model.version": DELETE, "model.name": DELETE})

    compiled = compile_settings(load_settings(write_config(tmp_path / "bare.yaml", bare)))
    given = compile_settings(load_settings(write_config(tmp_path / "given.yaml", changed(bare, **{
        "model.version": "7"}))))
    carded = compile_settings(load_settings(write_config(tmp_path / "carded.yaml", changed(base, **{
        "model.version": DELETE}))))

    assert (compiled.model.name, compiled.model.version, compiled.version_from) == (
        "model", hashlib.sha256(model.read_bytes()).hexdigest()[:12], "the file's content hash")
    assert (given.model.version, given.version_from) == ("7", "model.version")
    assert (carded.model.version, carded.version_from) == ("1", "the model card")


def test_one_column_inputs_can_be_written_directly(tmp_path: Path, base: dict[str, Any]) -> None:
    from onnx import helper

    from tests.support.onnx_models import FLOAT, save_model

    model = tmp_path / "two.onnx"
    save_model(model, [helper.make_node("Add", ["a", "b"], ["score"])],
               [("a", FLOAT, ["N", 1]), ("b", FLOAT, ["N", 1])], [("score", FLOAT, ["N", 1])])
    data = changed(base, **{"model.path": str(model), "model.version": DELETE, "model.score": {"output": "score"},
                            "model.inputs": {"a": "amount", "b": {"event": "distance_from_home_km", "default": -1}}})

    compiled = compile_settings(load_settings(write_config(tmp_path / "c.yaml", data)))

    assert [(t.name, t.rank, len(t.columns)) for t in compiled.tensors] == [("a", 2, 1), ("b", 2, 1)]


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path, base: dict[str, Any]) -> None:
    (tmp_path / "conf").mkdir()
    path = write_config(tmp_path / "conf" / "c.yaml", changed(base, **{"avro.input_schema": "schemas/in.avsc"}))

    key, reason = only_problem(path)

    assert key == "avro.input_schema"
    assert str(tmp_path / "conf" / "schemas" / "in.avsc") in reason


def test_precedence_is_cli_then_environment_then_file(tmp_path: Path, base: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path / "c.yaml", changed(base, **{"kafka.group_id": "from-file"}))
    assert load_settings(path).kafka.group_id == "from-file"

    monkeypatch.setenv("WORKER_KAFKA__GROUP_ID", "from-env")
    from_env = load_settings(path)
    assert from_env.kafka.group_id == "from-env"
    assert from_env.kafka.output_topic == "predictions"  # the rest of the section still comes from the file

    from_cli = load_settings(path, {"kafka": {"group_id": "from-cli"}})
    assert from_cli.kafka.group_id == "from-cli"
    assert from_cli.kafka.session_timeout_ms == 6000


def test_environment_overrides_nested_and_top_level_keys(tmp_path: Path, base: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path / "c.yaml", base)
    monkeypatch.setenv("WORKER_BATCH__MAX_EVENTS", "77")
    monkeypatch.setenv("WORKER_LOG_LEVEL", "DEBUG")

    settings = load_settings(path)

    assert (settings.batch.max_events, settings.batch.commit_interval_ms, settings.log_level) == (77, 1000.0, "DEBUG")


def test_the_environment_sets_explanations_and_the_labels_topic(tmp_path: Path, base: dict[str, Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path / "c.yaml", base)
    monkeypatch.setenv("WORKER_EXPLAIN__WHEN", "all")
    monkeypatch.setenv("WORKER_EXPLAIN__TOP_K", "5")
    monkeypatch.setenv("WORKER_MONITORING__LABELS__TOPIC", "chargebacks")

    settings = load_settings(path)

    assert (settings.explain.when, settings.explain.top_k) == ("all", 5)
    assert settings.monitoring.labels is not None and settings.monitoring.labels.topic == "chargebacks"
    assert settings.monitoring.labels.id_field == base["monitoring"]["labels"]["id_field"], "the rest from the file"


def test_an_invalid_environment_value_is_one_problem(tmp_path: Path, base: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path / "c.yaml", base)
    monkeypatch.setenv("WORKER_KAFKA__SESSION_TIMEOUT_MS", "5")

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert caught.value.lines() == ["config error: kafka.session_timeout_ms: Input should be greater than or "
                                    "equal to 1000"]


def test_cli_options_override_the_environment(tmp_path: Path, base: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "c.yaml", base)
    monkeypatch.setenv("WORKER_KAFKA__OUTPUT_TOPIC", "env-out")
    monkeypatch.setenv("WORKER_KAFKA__DLQ_TOPIC", "env-dlq")

    assert main(["check-config", "--config", str(path), "--output-topic", "cli-out", "--group-id", "g1"]) == 0

    out = capsys.readouterr().out
    assert "-> cli-out (dead letters: env-dlq), group g1" in out


def test_secrets_never_appear_in_repr_or_dumps(tmp_path: Path, base: dict[str, Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data = changed(base, **{"kafka.sasl_password": "hunter2-kafka", "redis.password": "hunter2-redis",
                            "avro.schema_registry_password": "hunter2-registry"})
    monkeypatch.setenv("WORKER_KAFKA__SASL_USERNAME", "svc")
    settings = load_settings(write_config(tmp_path / "c.yaml", data))

    shown = [repr(settings), str(settings), repr(settings.kafka), settings.model_dump_json(),
             str(settings.model_dump())]

    for text in shown:
        assert "hunter2" not in text
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2-kafka"
    assert settings.redis.password is not None
    assert settings.redis.password.get_secret_value() == "hunter2-redis"


def test_a_secret_in_an_invalid_config_is_not_echoed(tmp_path: Path, base: dict[str, Any],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = changed(base, **{"kafka.sasl_password": "hunter2", "kafka.sasl_mechanizm": "PLAIN"})

    code = main(["check-config", "--config", str(write_config(tmp_path / "c.yaml", data))])

    err = capsys.readouterr().err
    assert code == 2
    assert "kafka.sasl_mechanizm: unknown key (did you mean 'sasl_mechanism'?)" in err
    assert "hunter2" not in err


def test_unreadable_config_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")

    assert main(["check-config", "--config", str(bad)]) == 2
    assert main(["check-config", "--config", str(tmp_path / "absent.yaml")]) == 2

    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"config error: {bad}: not valid YAML: expected ',' or ']', but got '<stream end>' at line 2, " \
                       "column 1"
    assert lines[1].startswith(f"config error: {tmp_path / 'absent.yaml'}: cannot read the config file")
    assert len(lines) == 2


def test_a_toml_config_is_read_like_yaml(tmp_path: Path, base: dict[str, Any]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"""
[kafka]
group_id = "from-toml"
input_topics = "transactions"
output_topic = "predictions"
dlq_topic = "dlq"

[avro]
input_schema = "{base['avro']['input_schema']}"
output_schema = "{base['avro']['output_schema']}"

[features.card]
key = "card:{{card_id}}"
fields = ["txn_count_1h"]
default = 0

[model]
path = "{base['model']['path']}"
score = {{ output = "probabilities", column = 1 }}
[[model.inputs.features.columns]]
event = "amount"
[[model.inputs.features.columns]]
entity = "card"

[output.fields]
event_id = "event_id"
card_id = "card_id"
score = "$score"
is_fraud = "$label"
model_version = "$model_version"
scored_at = "$scored_at"
""")

    settings = load_settings(path)

    assert settings.kafka.group_id == "from-toml"
    assert settings.kafka.input_topics == ["transactions"]
    with pytest.raises(ConfigError) as caught:
        compile_settings(settings)
    assert caught.value.problems == [("model.inputs.features.columns", "the model input is [N, 15] but 2 columns "
                                                                      "are given")]


@pytest.mark.parametrize("mcc_keys", [{5411: 1.5, 4829: 2.5}, {"5411": 1.5, "4829": 2.5}], ids=["yaml-int", "text"])
def test_a_mapping_matches_int_and_boolean_event_values(tmp_path: Path, base: dict[str, Any],
                                                         mcc_keys: dict[Any, float]) -> None:
    from worker.features.fetcher import FeatureFetcher
    from worker.features.store import InMemoryFeatureStore
    from worker.pipeline.assembly import Assembler

    data = changed(base, **{"model.inputs.features.columns.1": {"event": "mcc", "mapping": mcc_keys, "default": -5},
                            "model.inputs.features.columns.2": {"event": "card_present", "default": -5,
                                                                "mapping": {"true": 10, False: 20}}})
    compiled = compile_settings(load_settings(write_config(tmp_path / "c.yaml", data)))
    events = [{"card_id": "c", "merchant_id": "m", "amount": 1.0, "mcc": mcc, "card_present": present,
               "distance_from_home_km": 2.0} for mcc, present in ((5411, True), (4829, False), (7995, True))]

    lookups = FeatureFetcher(InMemoryFeatureStore(), compiled.entities).fetch(events)
    assembled = Assembler(compiled.tensors).assemble(events, lookups)

    assert assembled.feeds["features"][:, 1:3].tolist() == [[1.5, 10.0], [2.5, 20.0], [-5.0, 10.0]]
    assert assembled.bad == {}


def test_the_command_line_entry_point(tmp_path: Path, base: dict[str, Any]) -> None:
    """``python -m worker check-config`` as users run it: exit codes and streams."""
    import subprocess
    import sys

    from tests.support.infra import repo_root

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}, "PYTHONPATH": str(repo_root())}
    good = write_config(tmp_path / "good.yaml", base)
    bad = write_config(tmp_path / "bad.yaml", changed(base, **{"kafka.bootstrap_server": "x"}))

    def check_config(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker", "check-config", "-c", str(path)], check=False,
                              capture_output=True, text=True, env=env, timeout=60)

    ok, broken = check_config(good), check_config(bad)

    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout.startswith("config OK")
    assert (broken.returncode, broken.stdout) == (2, "")
    assert broken.stderr == ("config error: kafka.bootstrap_server: unknown key (did you mean "
                             "'bootstrap_servers'?)\n")


@pytest.mark.parametrize(("special", "node", "reason"), [
    ("$reasons", {"type": "array", "items": "long"},
     "$reasons is written to an array of strings, not an array of longs"),
    ("$contributions", {"type": "map", "values": "string"}, "$contributions is written to a map of doubles"),
])
def test_explanations_need_arrays_of_strings_and_maps_of_doubles(tmp_path: Path, base: dict[str, Any], special: str,
                                                                node: dict[str, Any], reason: str) -> None:
    schema = json.loads(Path(base["avro"]["output_schema"]).read_text())
    schema["fields"].append({"name": "why", "type": node})
    (tmp_path / "prediction.avsc").write_text(json.dumps(schema))
    config = write_config(tmp_path / "c.yaml", changed(base, **{"avro.output_schema": str(tmp_path / "prediction.avsc"),
                                                                  "output.fields.why": special}))
    key, found = only_problem(config)
    assert key == "output.fields.why" and found.startswith(reason)


def test_a_list_in_the_environment_that_is_not_json_is_one_problem(tmp_path: Path, base: dict[str, Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_KAFKA__INPUT_TOPICS", "payments")
    key, reason = only_problem(write_config(tmp_path / "c.yaml", base))
    assert key == "WORKER_KAFKA__..." and "written as JSON" in reason
