"""The model repository: ``<root>/<name>/<version>/model.onnx`` with ``model-card.json``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from worker.lifecycle.card import CardError, ModelCard, read_card

MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    path: Path
    size_bytes: int
    card: ModelCard | None
    card_problem: str | None


def version_order(version: str) -> tuple[int, int | str]:
    """Numeric versions in numeric order, then the others by name."""
    return (0, int(version)) if version.isdigit() else (1, version)


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        directory = self.root / name
        if not directory.is_dir():
            return []
        found = [p.name for p in directory.iterdir() if (p / MODEL_FILE).is_file()]
        return sorted(found, key=version_order)

    def path(self, name: str, version: str) -> Path:
        return self.root / name / version / MODEL_FILE

    def exists(self, name: str, version: str) -> bool:
        return self.path(name, version).is_file()

    def next_version(self, name: str) -> str:
        numbers = [int(v) for v in self.versions(name) if v.isdigit()]
        return str(max(numbers, default=0) + 1)

    def missing(self, name: str, version: str) -> str:
        """Why a version cannot be found, naming the ones that exist."""
        have = self.versions(name)
        known = f"versions of '{name}': {', '.join(have)}" if have else f"no versions of '{name}'"
        return f"version {version} is not in the repository ({self.path(name, version)} not found; {known})"

    def info(self, name: str, version: str) -> VersionInfo:
        path = self.path(name, version)
        try:
            card, problem = read_card(path), None
        except CardError as exc:
            card, problem = None, str(exc)
        return VersionInfo(name, version, path, path.stat().st_size, card, problem)
