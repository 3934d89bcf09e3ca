"""The configuration reference covers every key, and the README carries it unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from worker.cli.main import main
from worker.config import reference
from worker.config.settings import WorkerSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def documented_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str | None]]:
    for name, info in model.model_fields.items():
        yield prefix + name, info.description
        nested = reference._nested(info.annotation)
        if nested is not None:
            shape, sub = nested
            joint = {"section": ".", "mapping": ".<name>.", "list": "[]."}[shape]
            yield from documented_keys(sub, prefix + name + joint)


def test_every_key_is_in_the_reference_with_its_description() -> None:
    text = reference.markdown()
    keys = list(documented_keys(WorkerSettings))
    assert len(keys) > 60
    for key, description in keys:
        assert description, f"{key} has no attribute docstring"
        assert f"| `{key}` |" in text or f"#### `{key}`" in text, key
    assert "| `kafka.sasl_password` | secret |" in text
    assert "| `kafka.input_topics` | list of strings (not empty) | **required** |" in text
    assert "| `batch.max_events` | integer ≥ 1 | `2000` |" in text


def test_the_readme_carries_the_current_reference() -> None:
    assert reference.in_file(README) == reference.markdown(), (
        "README.md's configuration reference is stale: run `worker config-reference --update README.md`")


def test_update_rewrites_only_the_section(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\n\n{reference.BEGIN}\nSTALE-TEXT\n{reference.END}\n\nafter\n")
    assert reference.update(doc)
    assert not reference.update(doc)
    text = doc.read_text()
    assert text.startswith("# Title\n\n") and text.endswith(f"{reference.END}\n\nafter\n") and "STALE-TEXT" not in text
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="no <!-- BEGIN"):
        reference.update(doc)


def test_the_command_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out == reference.markdown()
