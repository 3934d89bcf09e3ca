"""The configuration reference in Markdown, generated from the settings models.

Every key's description is its attribute docstring in ``worker.config.settings``, so the
reference (``worker config-reference``, and the README's copy of it, which a test keeps
identical) cannot drift from the code.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from worker.config.settings import ENV_PREFIX, WorkerSettings

Row = tuple[str, str, str, str]  # key, type, default, description

INTRO = f"""\
Every key of the configuration file, generated from the settings' own documentation
(`worker config-reference`). Keys are paths: `kafka.group_id` is `group_id` in the `kafka:`
section. `<name>` stands for a name you choose (an entity, a model input, an output field)
and `[]` for each item of a list. Every key can also be set from the environment as
`{ENV_PREFIX}` + the path in capitals with `__` between levels
(`{ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS=broker:9092`); the command line's overrides win over
the environment, which wins over the file.
"""

_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", SecretStr: "secret"}


def markdown() -> str:
    """The whole reference: top-level keys, then one table per section."""
    top: list[Row] = []
    sections: list[str] = []
    for name, info in WorkerSettings.model_fields.items():
        rows = list(_rows(name, info))
        if len(rows) == 1:
            top.append(rows[0])
        else:
            sections.append(f"#### `{name}`\n\n{_text(info.description)}\n\n{_table(rows[1:])}")
    return "\n".join([INTRO, "#### Top level\n", _table(top), *sections])


def _rows(key: str, info: FieldInfo) -> Iterator[Row]:
    annotation = info.annotation
    nested = _nested(annotation)
    yield key, _type(annotation, info), _default(info), _text(info.description)
    if nested is not None:
        shape, model = nested
        prefix = {"section": f"{key}.", "mapping": f"{key}.<name>.", "list": f"{key}[]."}[shape]
        for name, sub in model.model_fields.items():
            yield from _rows(prefix + name, sub)


def _nested(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """('section' | 'mapping' | 'list', model) when the annotation holds settings of its own."""
    for candidate in _without_none(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return "section", candidate
        origin, args = get_origin(candidate), get_args(candidate)
        if origin in (dict, list) and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
            return ("mapping" if origin is dict else "list"), args[-1]
    return None


def _without_none(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _type(annotation: Any, info: FieldInfo) -> str:
    nested = _nested(annotation)
    if nested is not None:
        return {"section": "section", "mapping": "mapping of name → section", "list": "list of items"}[nested[0]]
    return " ".join([_type_name(annotation), *_constraints(info)])


def _type_name(annotation: Any) -> str:
    options = _without_none(annotation)
    if len(options) > 1:
        return "scalar" if set(options) <= {str, int, float, bool} else " or ".join(map(_type_name, options))
    only = options[0]
    origin, args = get_origin(only), get_args(only)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}s"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} → {_type_name(args[1])}"
    return _NAMES.get(only, getattr(only, "__name__", str(only)))


def _constraints(info: FieldInfo) -> list[str]:
    out = []
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            out.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            out.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.MinLen) and item.min_length:
            out.append("(not empty)")
    return out


def _default(info: FieldInfo) -> str:
    value = info.default
    if value is PydanticUndefined:
        return "**required**"
    if value is None or isinstance(value, BaseModel):
        return ""
    if isinstance(value, dict | list) and not value:
        return "`{}`" if isinstance(value, dict) else "`[]`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _text(doc: str | None) -> str:
    return " ".join((doc or "").split()).replace("``", "`").replace("|", "\\|")


def _table(rows: list[Row]) -> str:
    lines = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    lines += [f"| `{key}` | {kind} | {default} | {doc} |" for key, kind, default, doc in rows]
    return "\n".join(lines) + "\n"


BEGIN = "<!-- BEGIN config-reference: generated by `worker config-reference --update README.md` -->"
END = "<!-- END config-reference -->"


def update(path: Path) -> bool:
    """Rewrite the reference between the markers in ``path``; returns whether anything changed."""
    text = path.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no {BEGIN} ... {END} section")
    new = f"{text[:start]}{BEGIN}\n\n{markdown()}\n{text[end:]}"
    if new != text:
        path.write_text(new)
    return new != text


def in_file(path: Path) -> str:
    """The reference as it stands between the markers in ``path``."""
    text = path.read_text()
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip("\n") + "\n"
