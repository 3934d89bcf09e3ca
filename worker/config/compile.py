"""Settings → validated component specs (the app layer's half that needs no network).

Every check that ``worker check-config`` reports lives here: files exist and load, the
model's signature matches the input mapping, key templates and event paths exist in the
input schema, values convert to the tensor types, and the output fields fit the output
schema. Each problem is reported as ``(config key, reason)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.codecs.schemas import (
    NUMERIC,
    FieldType,
    Schema,
    SchemaError,
    a_or_an,
    assignable,
    field_type,
    kind_of,
    load_schema,
    top_fields,
)
from worker.config.settings import (
    ColumnSettings,
    EntitySettings,
    InputSettings,
    LabelSettings,
    OutputFieldSettings,
    WorkerSettings,
)
from worker.errors import ConfigError, StartupError
from worker.features.feast import FeastKey, FeastLayout
from worker.features.fetcher import EntitySpec, HashLayout, Layout
from worker.features.keys import KeyTemplate
from worker.inference import Model, OnnxModel, TensorInfo
from worker.lifecycle.card import card_path
from worker.pipeline.assembly import NUMERIC_DTYPES, Column, ConstColumn, EventColumn, FeatureColumn, TensorSpec
from worker.pipeline.output import (
    Computed,
    Constant,
    FromEvent,
    FromModel,
    KeySpec,
    OutputBuilder,
    ScoreSpec,
    Source,
    Special,
)
from worker.quality import reference
from worker.quality.bins import BinsError

logger = logging.getLogger(__name__)


class Problems:
    """Collects ``(key, reason)`` pairs so that one run reports every fault it can find."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, key: str, reason: str) -> None:
        self.items.append((key, reason))

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


@dataclass
class Compiled:
    """Everything the worker builds from a valid configuration."""

    input_schema: Schema
    output_schema: Schema
    input_schema_text: str
    output_schema_text: str
    entities: list[EntitySpec]
    tensors: list[TensorSpec]
    builder: OutputBuilder
    model: Model
    version_from: str = "the caller"
    """Where the model's version comes from (see ``model_identity``)."""
    label_schema: Schema | None = None
    """The labels' schema, when ``monitoring.labels.topic`` is set."""


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    version_from: str
    """Where the version comes from: ``model.repository``, ``the model card``, ``model.version`` or
    ``the file's content hash``."""


def model_identity(settings: WorkerSettings, path: Path, problems: Problems | None = None) -> ModelIdentity:
    """Name and version. In a repository the configured ones; for a single file, the name from the
    settings, else the card, else the file name, and the version from the card, else
    ``model.version``, else the start of the file's SHA-256 (never a folder's name: it would go
    into every prediction looking like a version someone chose)."""
    m, card = settings.model, load_model_card(path)
    if m.repository is not None:
        assert m.name and m.version
        return ModelIdentity(m.name, m.version, "model.repository")
    name = m.name or str(card.get("name") or path.stem)
    carded = str(card["version"]) if card.get("version") is not None else None
    if carded is not None and m.version is not None and carded != m.version and problems is not None:
        problems.add("model.version", f"{m.version!r} differs from {carded!r} in the model card beside "
                                      f"{path.name} (the card describes the file: leave model.version out)")
    if carded is not None:
        return ModelIdentity(name, carded, "the model card")
    if m.version is not None:
        return ModelIdentity(name, m.version, "model.version")
    return ModelIdentity(name, hashlib.sha256(path.read_bytes()).hexdigest()[:12], "the file's content hash")


def load_model_card(model_path: Path) -> dict[str, Any]:
    """The card's JSON, or nothing: here it only names the model, so an unreadable card is
    ignored (validation before serving refuses it)."""
    path = card_path(model_path)
    if path.is_file():
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable model card %s: %s", path, exc)
    return {}


def compile_settings(settings: WorkerSettings, model: Model | None = None) -> Compiled:
    """Validate everything that can be checked locally; raises ``ConfigError`` listing each fault."""
    problems = Problems()
    input_schema, input_text = _schema(settings.avro.input_schema, "avro.input_schema", problems)
    output_schema, output_text = _schema(settings.avro.output_schema, "avro.output_schema", problems)
    version_from = "the caller"
    if model is None:
        model, version_from = _load_model(settings, problems)
    problems.raise_if_any()
    assert input_schema and output_schema and model
    entities = _entities(settings, input_schema, problems)
    # An entity refused above is still known by name, so columns using it are not reported again.
    known: dict[str, EntitySpec | None] = {**dict.fromkeys(settings.features), **{e.name: e for e in entities}}
    tensors = _tensors(settings, model, input_schema, known, problems)
    builder = _builder(settings, model, input_schema, output_schema, problems)
    _lifecycle(settings, problems)
    _event_time(settings, input_schema, problems)
    label_schema = _monitoring(settings, builder, problems)
    problems.raise_if_any()
    return Compiled(input_schema, output_schema, input_text, output_text, entities, tensors, builder, model,
                    version_from, label_schema)


def _schema(path: Path, key: str, problems: Problems) -> tuple[Schema | None, str]:
    if not path.is_file():
        problems.add(key, f"schema file not found: {path}")
        return None, ""
    try:
        return load_schema(path), path.read_text()
    except SchemaError as exc:
        problems.add(key, str(exc))
        return None, ""


def _load_model(settings: WorkerSettings, problems: Problems) -> tuple[Model | None, str]:
    path = settings.model.onnx_path()
    key = "model.path" if settings.model.path else "model.repository"
    if not path.is_file():
        problems.add(key, f"model file not found: {path}")
        return None, ""
    identity = model_identity(settings, path, problems)
    try:
        return OnnxModel(path, identity.name, identity.version, settings.model.threads), identity.version_from
    except StartupError as exc:
        problems.add(key, str(exc))
        return None, ""


def _entities(settings: WorkerSettings, schema: Schema, problems: Problems) -> list[EntitySpec]:
    entities = []
    for name, entity in settings.features.items():
        key = f"features.{name}"
        made = _feast_entity(entity, schema, key, problems) if entity.layout == "feast" else \
            _hash_entity(entity, schema, key, problems)
        defaults = {f: entity.defaults.get(f, entity.default) for f in entity.fields}
        for unknown in sorted(set(entity.defaults) - set(entity.fields)):
            problems.add(f"{key}.defaults.{unknown}", f"'{unknown}' is not one of the entity's fields")
        undefaulted = [f for f, v in defaults.items() if v is None]
        if undefaulted:
            names = ", ".join(repr(f) for f in undefaulted)
            problems.add(f"{key}.defaults", f"no default for field{'s' if len(undefaulted) > 1 else ''} {names} "
                                           "(set defaults.<field> or default)")
        if made is not None:
            entities.append(EntitySpec(name, made[0], tuple(entity.fields), defaults, made[1], entity.max_age_s))
    return entities


def _hash_entity(entity: EntitySettings, schema: Schema, key: str,
                 problems: Problems) -> tuple[KeyTemplate, Layout | None] | None:
    _not_for_layout(entity, key, problems, "project", "feature_view", "join_keys", "join_key_types")
    if entity.max_age_s is not None and not entity.timestamp_field:
        problems.add(f"{key}.max_age_s", "plain hashes need timestamp_field (the hash field holding the Unix time "
                                         "each row was written) to tell how old their values are")
    if not entity.key:
        problems.add(f"{key}.key", "a hash entity needs a key template, e.g. 'card:{card_id}'")
        return None
    try:
        template = KeyTemplate(entity.key)
    except ValueError as exc:
        problems.add(f"{key}.key", f"bad key template '{entity.key}': {exc}")
        return None
    for path in template.paths:
        _check_path(schema, path, f"{key}.key", problems, f"the key template names '{path}', but ")
    layout = HashLayout(entity.fields, entity.timestamp_field) if entity.timestamp_field else None
    return template, layout


def _feast_entity(entity: EntitySettings, schema: Schema, key: str,
                  problems: Problems) -> tuple[FeastKey, Layout] | None:
    _not_for_layout(entity, key, problems, "key", "timestamp_field")
    for setting in ("project", "feature_view"):
        if not getattr(entity, setting):
            problems.add(f"{key}.{setting}", f"layout feast needs {setting}")
    if not entity.join_keys:
        problems.add(f"{key}.join_keys", "layout feast needs join_keys: join key → event field, "
                                         "e.g. {card_id: card.id}")
    for unknown in sorted(set(entity.join_key_types) - set(entity.join_keys)):
        problems.add(f"{key}.join_key_types.{unknown}", f"'{unknown}' is not one of the join_keys")
    typed = {k: _join_key(entity, k, path, schema, f"{key}.join_keys.{k}", problems)
             for k, path in entity.join_keys.items()}
    if not (entity.project and entity.feature_view and typed) or None in typed.values():
        return None
    keys = {k: (entity.join_keys[k], kind) for k, kind in typed.items() if kind}  # all are (checked above)
    return FeastKey(entity.project, keys), FeastLayout(entity.feature_view, entity.fields)


# The Feast value type a join key takes by default, per Avro type of its event field.
_JOIN_KEY_TYPES = {"string": "string", "enum": "string", "long": "int64", "int": "int32", "bytes": "bytes"}


def _join_key(entity: EntitySettings, name: str, path: str, schema: Schema, key: str, problems: Problems) -> str | None:
    found = _check_path(schema, path, key, problems, f"join key {name} reads '{path}', but ")
    if found is None:
        return None
    given = entity.join_key_types.get(name)
    kind = given or _JOIN_KEY_TYPES.get(found.kind)
    fits = {"string": {"string", "enum", "long", "int"}, "int64": {"long", "int"}, "int32": {"int"},
            "bytes": {"bytes", "string"}}
    if kind is None or found.kind not in fits[kind]:
        what = a_or_an(f"{kind} join key") if kind else "a join key"
        problems.add(key, f"'{path}' is {a_or_an(found.describe())}, which cannot make {what} "
                          f"(join_key_types: string, int64, int32 or bytes)")
        return None
    return kind


def _not_for_layout(entity: EntitySettings, key: str, problems: Problems, *settings: str) -> None:
    for setting in settings:
        if getattr(entity, setting):
            problems.add(f"{key}.{setting}", f"{setting} does not apply to layout {entity.layout}")


def _check_path(schema: Schema, path: str, key: str, problems: Problems, prefix: str = "") -> FieldType | None:
    try:
        return field_type(schema, path)
    except SchemaError as exc:
        problems.add(key, f"{prefix}{exc}")
        return None


def _event_time(settings: WorkerSettings, schema: Schema, problems: Problems) -> None:
    path, key = settings.telemetry.event_time_field, "telemetry.event_time_field"
    found = _check_path(schema, path, key, problems) if path else None
    if found is not None and found.kind not in ("int", "long", "float", "double"):
        problems.add(key, f"'{path}' is {a_or_an(found.describe())}; the event time must be a number "
                          f"(epoch {settings.telemetry.event_time_unit}, e.g. a timestamp-millis long)")


def _tensors(settings: WorkerSettings, model: Model, schema: Schema, entities: dict[str, EntitySpec | None],
             problems: Problems) -> list[TensorSpec]:
    declared = {t.name: t for t in model.inputs}
    for name in declared:
        if name not in settings.model.inputs:
            problems.add("model.inputs", f"model input '{name}' is not fed (add model.inputs.{name})")
    tensors = []
    for name, spec in settings.model.inputs.items():
        key = f"model.inputs.{name}"
        if name not in declared:
            problems.add(key, f"the model has no input '{name}' (it has: {', '.join(declared)})")
            continue
        tensor = _tensor(key, name, spec, declared[name], schema, entities, problems)
        if tensor:
            tensors.append(tensor)
    return tensors


def _tensor(key: str, name: str, spec: InputSettings, info: TensorInfo, schema: Schema,
            entities: dict[str, EntitySpec | None], problems: Problems) -> TensorSpec | None:
    dtype = spec.dtype or info.dtype
    if dtype not in (*NUMERIC_DTYPES, "string"):
        problems.add(f"{key}.dtype", f"model input type '{info.dtype}' is not supported")
        return None
    if spec.dtype and spec.dtype != info.dtype:
        problems.add(f"{key}.dtype", f"'{spec.dtype}' does not match the model's input type '{info.dtype}'")
        return None
    built = [_columns(f"{key}.columns[{i}]", c, dtype, schema, entities, problems) for i, c in enumerate(spec.columns)]
    if any(b is None for b in built):
        return None  # a column was refused (and reported); counting the rest would report it twice
    columns = [column for group in built if group for column in group]
    rank = len(info.shape) if info.shape else 2
    if rank == 1 and len(columns) != 1:
        problems.add(f"{key}.columns", f"the model input is 1-D ([N]) so it takes one column, not {len(columns)}")
    if info.width is not None and rank == 2 and info.width != len(columns):
        problems.add(f"{key}.columns", f"the model input is [N, {info.width}] but {len(columns)} columns are given")
    return TensorSpec(name, dtype, tuple(columns), 1 if rank == 1 else 2)


def _columns(key: str, column: ColumnSettings, dtype: str, schema: Schema,
             entities: dict[str, EntitySpec | None], problems: Problems) -> list[Column] | None:
    """The columns one setting feeds, or None if it is refused (the problem is recorded)."""
    if column.const is not None:
        return [ConstColumn(column.const)] if _const_fits(key, column.const, dtype, problems) else None
    if column.entity is not None:
        if column.entity not in entities:
            problems.add(f"{key}.entity", f"no entity '{column.entity}' in features (known: {', '.join(entities)})")
            return None
        entity = entities[column.entity]
        return None if entity is None else [FeatureColumn(entity.name, f, entity.defaults[f]) for f in entity.fields]
    if column.feature is not None:
        return _feature_column(key, column.feature, entities, problems)
    return _event_column(key, column, dtype, schema, problems)


def _feature_column(key: str, ref: str, entities: dict[str, EntitySpec | None],
                    problems: Problems) -> list[Column] | None:
    entity_name, _, field_name = ref.partition(".")
    if entity_name not in entities or not field_name:
        problems.add(f"{key}.feature", f"'{ref}' is not entity.field (entities: {', '.join(entities) or 'none'})")
        return None
    entity = entities[entity_name]
    if entity is None:
        return None
    if field_name not in entity.fields:
        problems.add(f"{key}.feature", f"entity '{entity_name}' has no field '{field_name}' "
                                       f"(it reads: {', '.join(entity.fields)})")
        return None
    return [FeatureColumn(entity_name, field_name, entity.defaults[field_name])]


def _event_column(key: str, column: ColumnSettings, dtype: str, schema: Schema,
                  problems: Problems) -> list[Column] | None:
    assert column.event is not None
    found = _check_path(schema, column.event, f"{key}.event", problems)
    if found is None:
        return None
    reason = _conversion_problem(found, dtype, column)
    if reason:
        problems.add(key, f"event field '{column.event}' ({found.describe()}): {reason}")
        return None
    mapping = None
    if column.mapping is not None:
        mapping = _typed_mapping(found.kind, column.mapping)
        if mapping is None:
            problems.add(f"{key}.mapping", f"its keys must be {found.kind} values like the event field "
                                           f"'{column.event}' (got {', '.join(map(repr, column.mapping))})")
            return None
    return [EventColumn(column.event, column.default, mapping)]


def _typed_mapping(kind: str, mapping: dict[Any, Any]) -> dict[Any, Any] | None:
    """The mapping keyed like the decoded events (config keys are text, or YAML numbers and
    booleans), so that an int or boolean field finds its values; None if a key does not convert."""
    typed = {_typed_key(kind, key): value for key, value in mapping.items()}
    return None if None in typed else typed


def _typed_key(kind: str, key: Any) -> Any:
    if kind in ("int", "long"):
        if isinstance(key, str) and key.strip().lstrip("+-").isdigit():
            return int(key)
        return key if isinstance(key, int) and not isinstance(key, bool) else None
    if kind == "boolean":
        return key if isinstance(key, bool) else {"true": True, "false": False}.get(str(key).lower())
    return str(key)


def _conversion_problem(found: FieldType, dtype: str, column: ColumnSettings) -> str | None:
    kind = found.kind
    if found.nullable and column.default is None and column.mapping is None:
        return "it can be null, so the column needs a default"
    if column.mapping is not None:
        if kind not in ("string", "enum", "int", "long", "boolean"):
            return f"a mapping applies to string, enum, int or boolean fields, not {kind}"
        return None if dtype != "string" else "a mapping feeds numeric inputs; this input is string"
    if dtype == "string":
        return None if kind in ("string", "enum", "int", "long") else f"{a_or_an(kind)} cannot feed a string tensor"
    if kind in ("string", "enum"):
        return f"{a_or_an(kind)} cannot feed {a_or_an(dtype)} tensor without a mapping (add mapping: {{value: number}})"
    if kind in ("float", "double") and not dtype.startswith("float"):
        return f"{a_or_an(kind)} cannot feed {a_or_an(dtype)} tensor without losing its fraction"
    return None if kind in (*NUMERIC, "boolean") else f"{a_or_an(kind)} cannot feed {a_or_an(dtype)} tensor"


def _const_fits(key: str, value: Any, dtype: str, problems: Problems) -> bool:
    if dtype != "string" and not isinstance(value, int | float):
        problems.add(f"{key}.const", f"{value!r} is not a number, but the input is {dtype}")
        return False
    return True


def _builder(settings: WorkerSettings, model: Model, input_schema: Schema, output_schema: Schema,
             problems: Problems) -> OutputBuilder:
    outputs = {o.name: o for o in model.outputs}
    score = settings.model.score
    if score.output not in outputs:
        problems.add("model.score.output", f"the model has no output '{score.output}' (it has: {', '.join(outputs)})")
    elif score.column is not None and outputs[score.output].width is not None \
            and not 0 <= score.column < (outputs[score.output].width or 0):
        problems.add("model.score.column", f"column {score.column} is outside output '{score.output}' "
                                           f"of width {outputs[score.output].width}")
    schema_fields = top_fields(output_schema)
    sources = {}
    for name, source in settings.output.fields.items():
        key = f"output.fields.{name}"
        if name not in schema_fields:
            problems.add(key, f"the output schema has no field '{name}' (it has: {', '.join(schema_fields)})")
            continue
        built = _output_source(key, source, schema_fields[name]["type"], input_schema, outputs, problems)
        if built is not None:
            sources[name] = built
    for name, spec in schema_fields.items():
        if name not in settings.output.fields and "default" not in spec:
            problems.add("output.fields", f"output schema field '{name}' is not fed and has no default "
                                          f"(add output.fields.{name})")
    _output_key(settings, input_schema, problems)
    return OutputBuilder(sources, ScoreSpec(score.output, score.column, settings.model.threshold),
                         KeySpec(settings.output.key, settings.output.key_encoding))


def _output_key(settings: WorkerSettings, input_schema: Schema, problems: Problems) -> None:
    path, encoding = settings.output.key, settings.output.key_encoding
    found = _check_path(input_schema, path, "output.key", problems) if path is not None else None
    if encoding != "int64":
        return
    if path is None:
        problems.add("output.key_encoding", "int64 applies to output.key, which is not set (the input "
                                            "message's key is copied as it is)")
    elif found is not None and found.kind not in ("int", "long"):
        problems.add("output.key_encoding", f"int64 writes an int or long as 8 bytes, but '{path}' is "
                                            f"{a_or_an(found.describe())}")


def _output_source(key: str, source: OutputFieldSettings, target: Any, input_schema: Schema,
                   outputs: dict[str, TensorInfo], problems: Problems) -> Source | None:
    if source.event is not None:
        found = _check_path(input_schema, source.event, key, problems)
        reason = assignable(found, target) if found else None
        if reason:
            problems.add(key, f"event field '{source.event}': {reason}")
        return FromEvent(source.event) if found and not reason else None
    if source.model_output is not None:
        if source.model_output not in outputs:
            problems.add(f"{key}.model_output", f"the model has no output '{source.model_output}' "
                                                f"(it has: {', '.join(outputs)})")
            return None
        return FromModel(source.model_output, source.column)
    if source.const is not None:
        return Constant(source.const)
    return _special(key, source, target, problems)


_SPECIAL_KINDS = {"score": ("float", "double"), "label": ("boolean", "int", "long"),
                  "model_version": ("string",), "model_name": ("string",), "scored_at": ("long",),
                  "degraded": ("boolean", "int", "long"), "reasons": ("array",), "contributions": ("map",),
                  "late": ("boolean", "int", "long")}
_SPECIAL_ITEMS = {"reasons": ("items", ("string",), "an array of strings"),
                  "contributions": ("values", ("double", "float"), "a map of doubles")}


def _special(key: str, source: OutputFieldSettings, target: Any, problems: Problems) -> Source | None:
    assert source.special is not None
    kind = FieldType(target, False).kind
    if kind not in _SPECIAL_KINDS[source.special] and kind != "union":
        problems.add(key, f"${source.special} cannot be written to {a_or_an(kind)} field "
                          f"(use {' or '.join(_SPECIAL_KINDS[source.special])})")
        return None
    if source.special in _SPECIAL_ITEMS and kind != "union":
        part, kinds, wanted = _SPECIAL_ITEMS[source.special]
        item = kind_of(target[part]) if isinstance(target, dict) else None
        if item not in kinds:
            problems.add(key, f"${source.special} is written to {wanted}, not {a_or_an(kind)} of {item}s")
            return None
    return Computed(source.special, as_int=source.special in ("label", "degraded", "late") and kind in ("int", "long"))


def _lifecycle(settings: WorkerSettings, problems: Problems) -> None:
    lc, k = settings.lifecycle, settings.kafka
    if (lc.control_topic or lc.control_file) and settings.model.repository is None:
        problems.add("lifecycle", "a control channel switches between versions of a model repository: "
                                  "set model.repository, model.name and model.version instead of model.path")
    if lc.shadow_topic and lc.shadow_topic in (k.output_topic, k.dlq_topic, *k.input_topics):
        problems.add("lifecycle.shadow_topic", f"'{lc.shadow_topic}' is already used as an input, output or "
                                               "dead-letter topic; shadow predictions need their own")
    if lc.control_topic and lc.control_topic in (k.output_topic, k.dlq_topic, *k.input_topics):
        problems.add("lifecycle.control_topic", f"'{lc.control_topic}' is already used as an input, output or "
                                                "dead-letter topic")


def prediction_field(builder: OutputBuilder, what: Special) -> str | None:
    """The output field holding ``$score``, ``$model_version``, ... if any."""
    return next((name for name, source in builder.fields.items()
                 if isinstance(source, Computed) and source.what == what), None)


def _monitoring(settings: WorkerSettings, builder: OutputBuilder, problems: Problems) -> Schema | None:
    m, k = settings.monitoring, settings.kafka
    if m.reference is not None:
        try:
            reference.from_file(m.reference)
        except BinsError as exc:
            problems.add("monitoring.reference", str(exc))
    taken = {k.output_topic, k.dlq_topic, *k.input_topics}
    for key, topic in (("monitoring.labels.topic", m.labels.topic), ("monitoring.joined_topic", m.joined_topic)):
        if topic in taken:
            problems.add(key, f"'{topic}' is already used as an input, output or dead-letter topic")
    if m.joined_topic is not None and m.joined_topic == m.labels.topic:
        problems.add("monitoring.joined_topic", "the monitor would read its own joins as labels: use another topic")
    if m.labels.topic is None:
        return None
    schema = _label_schema(m.labels, problems)
    predicted_id = m.prediction_id_field or m.labels.id_field
    # Unset, the prediction's id field is the label's: not worth a second problem when that one is wrong.
    if predicted_id not in builder.fields and (m.prediction_id_field or _has(schema, m.labels.id_field)):
        problems.add("monitoring.prediction_id_field", f"the predictions have no field '{predicted_id}' to join "
                                                       f"labels on (output fields: {', '.join(builder.fields)})")
    needed: tuple[tuple[Special, str], ...] = (
        ("score", "the label join needs the score in the predictions"),
        ("model_version", "each version's accuracy is its own only if the predictions say which version scored them"))
    for what, why in needed:
        if prediction_field(builder, what) is None:
            problems.add("output.fields", f"{why}: add a field fed by ${what}")
    return schema


def _has(schema: Schema | None, path: str) -> bool:
    try:
        return schema is not None and field_type(schema, path) is not None
    except SchemaError:
        return False


def _label_schema(labels: LabelSettings, problems: Problems) -> Schema | None:
    if labels.schema_file is None:
        problems.add("monitoring.labels.schema_file", "required with monitoring.labels.topic")
        return None
    schema, _ = _schema(labels.schema_file, "monitoring.labels.schema_file", problems)
    if schema is None:
        return None
    checks = ((labels.id_field, "id_field", ("string", "int", "long")),
              (labels.label_field, "label_field", ("boolean", "int", "long", "float", "double")),
              (labels.time_field, "time_field", ("long", "int", "double")))
    for path, key, kinds in checks:
        found = _check_path(schema, path, f"monitoring.labels.{key}", problems) if path else None
        if found is not None and found.kind not in kinds:
            problems.add(f"monitoring.labels.{key}", f"'{path}' is {a_or_an(found.describe())}; expected "
                                                     f"{' or '.join(kinds)}")
    return schema


# The specials that read nothing of the event. A new one is not here until someone decides: until
# then, configurations using it decode whole events (see ``event_fields``).
_EVENTLESS_SPECIALS = frozenset({"score", "label", "model_version", "model_name", "scored_at", "degraded", "reasons",
                                 "contributions", "late"})


def event_fields(settings: WorkerSettings, compiled: Compiled) -> frozenset[str] | None:
    """The top-level input fields the worker reads of a decoded event, so that the decoder can skip the
    rest; None (decode them all) when that is not known for certain. The readers: entity keys, event
    columns, output fields and the output key, and the event time (the deadline's and the event-age
    metric's). Anything of a kind not known here (a new column, source or key type) gives None."""
    paths = [*_key_paths(compiled.entities), *_column_paths(compiled.tensors), *_output_paths(compiled.builder)]
    if None in paths:
        return None
    if settings.telemetry.event_time_field:
        paths.append(settings.telemetry.event_time_field)
    return frozenset(path.split(".")[0] for path in paths if path is not None)  # nested: the whole top field


def _key_paths(entities: list[EntitySpec]) -> list[str | None]:
    paths: list[str | None] = []
    for entity in entities:
        if isinstance(entity.key, KeyTemplate):
            paths += entity.key.paths
        elif isinstance(entity.key, FeastKey):
            paths += [path for path, _ in entity.key.join_keys.values()]
        else:
            paths.append(None)
    return paths


def _column_paths(tensors: list[TensorSpec]) -> list[str | None]:
    columns = [column for tensor in tensors for column in tensor.columns]
    return [column.path if isinstance(column, EventColumn) else None for column in columns
            if not isinstance(column, FeatureColumn | ConstColumn)]


def _output_paths(builder: OutputBuilder) -> list[str | None]:
    paths: list[str | None] = [builder.key.path] if builder.key.path else []
    for source in builder.fields.values():
        if isinstance(source, FromEvent):
            paths.append(source.path)
        elif not _reads_no_event(source):
            paths.append(None)
    return paths


def _reads_no_event(source: Source) -> bool:
    if isinstance(source, Computed):
        return source.what in _EVENTLESS_SPECIALS
    return isinstance(source, FromModel | Constant)
