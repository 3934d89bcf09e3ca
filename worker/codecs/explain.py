"""Why a record (as parsed from JSON) does not fit an Avro schema, in one line naming the field.

fastavro's writer fails with a bare ``TypeError`` or ``struct.error`` and its validator
prints the whole schema, so the hands-on tools say it themselves:
``card.present: expected boolean, got string "yes"``.
"""

from __future__ import annotations

from typing import Any

from worker.codecs.schemas import Schema

_CHECKS: dict[str, Any] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v < 2**31,
    "long": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63,
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "double": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "bytes": lambda v: isinstance(v, bytes | str),
}
_JSON_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
               type(None): "null"}


def mismatch(value: Any, schema: Schema) -> str | None:
    """The first place where ``value`` does not fit ``schema`` (a parsed schema), or None."""
    return _check(value, schema, schema.get("__named_schemas", {}), "")


def _check(value: Any, node: Any, named: dict[str, Any], path: str) -> str | None:
    if isinstance(node, str) and node in named:
        node = named[node]
    if isinstance(node, list):
        return _union(value, node, named, path)
    kind = node if isinstance(node, str) else node["type"]
    if kind in _CHECKS:
        return None if _CHECKS[kind](value) else _wrong(path, kind, value)
    if kind == "enum":
        return None if value in node["symbols"] else f"{path or 'value'}: {value!r} is not one of {node['symbols']}"
    if kind == "record":
        return _record(value, node, named, path)
    if kind == "array":
        if not isinstance(value, list):
            return _wrong(path, "array", value)
        return next((p for i, v in enumerate(value) if (p := _check(v, node["items"], named, f"{path}[{i}]"))), None)
    if kind == "map":
        if not isinstance(value, dict):
            return _wrong(path, "map", value)
        return next((p for k, v in value.items() if (p := _check(v, node["values"], named, f"{path}[{k}]"))), None)
    return None  # fixed and other rare types: left to the encoder


def _record(value: Any, node: dict[str, Any], named: dict[str, Any], path: str) -> str | None:
    if not isinstance(value, dict):
        return _wrong(path, f"record {node['name'].rsplit('.', 1)[-1]}", value)
    names = [f["name"] for f in node["fields"]]
    unknown = [k for k in value if k not in names]
    if unknown:
        record = node["name"].rsplit(".", 1)[-1]
        return f"{_join(path, unknown[0])}: not a field of {record} (it has: {', '.join(names)})"
    for f in node["fields"]:
        here = _join(path, f["name"])
        if f["name"] not in value:
            if "default" not in f:
                return f"{here}: missing"
            continue
        problem = _check(value[f["name"]], f["type"], named, here)
        if problem:
            return problem
    return None


def _union(value: Any, branches: list[Any], named: dict[str, Any], path: str) -> str | None:
    problems = []
    for branch in branches:  # the first branch that fits ends it: most values fit their first
        problem = _check(value, branch, named, path)
        if problem is None:
            return None
        problems.append(problem)
    kinds = [b if isinstance(b, str) else b.get("name", b["type"]) for b in branches]
    if value is not None and isinstance(value, dict):  # the record branch's own complaint says more
        return next((p for b, p in zip(branches, problems, strict=True) if isinstance(b, dict)), problems[-1])
    return _wrong(path, " or ".join(k.rsplit(".", 1)[-1] for k in kinds), value)


def _wrong(path: str, expected: str, value: Any) -> str:
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{path or 'value'}: expected {expected}, got {_JSON_NAMES.get(type(value), type(value).__name__)} {shown}"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
