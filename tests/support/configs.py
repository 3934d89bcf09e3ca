"""Config files for tests: the shared fraud workload's, and ones written from dicts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.infra import repo_root

FRAUD_CONFIG = repo_root() / "bench" / "fraud-contract.yaml"


def fraud_workload_dir() -> Path:
    """The shared fraud workload, as the bench config locates it (skips the test if it is absent)."""
    raw = yaml.safe_load(FRAUD_CONFIG.read_text())
    directory = (FRAUD_CONFIG.parent / str(raw["model"]["path"])).resolve().parent
    if not (directory / "gen.py").is_file():
        pytest.skip(f"the shared fraud workload is not at {directory}")
    return directory


def fraud_config() -> dict[str, Any]:
    """The bench config for the fraud workload as a dict, its paths made absolute."""
    fraud_workload_dir()
    data: dict[str, Any] = yaml.safe_load(FRAUD_CONFIG.read_text())
    base = FRAUD_CONFIG.parent
    for section, key in (("avro", "input_schema"), ("avro", "output_schema"), ("model", "path")):
        data[section][key] = str((base / data[section][key]).resolve())
    labels = data.get("monitoring", {}).get("labels", {})
    if labels.get("schema_file"):
        labels["schema_file"] = str((base / labels["schema_file"]).resolve())
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def changed(data: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with dotted keys set (``{"kafka.group_id": "g"}``); a value of
    ``DELETE`` removes the key."""
    out = copy.deepcopy(data)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        where: Any = int(last) if isinstance(node, list) else last
        if value is DELETE:
            del node[where]
        else:
            node[where] = value
    return out


DELETE = object()
