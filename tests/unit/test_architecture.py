"""The package's shape: rooms by concern, imports pointing one way, no cycles, one Kafka adapter.

Read from the source with ``ast`` (every import, a function's own included), so it holds however
the code is run. A new top-level module or package must be given a layer here on purpose.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "worker"

LAYERS: list[set[str]] = [  # lowest first; a room imports only from its own layer's room or lower layers
    {"worker", "records", "logs"},
    {"errors"},
    {"startup"},
    {"codecs", "features", "inference", "quality"},
    {"serving", "explain"},
    {"pipeline"},
    {"kafka"},
    {"runner"},
    {"telemetry", "lifecycle", "devtools", "monitoring", "batch"},
    {"config"},
    {"app"},
    {"cli"},
    {"__main__"},
]
RANK = {room: rank for rank, rooms in enumerate(LAYERS) for room in rooms}
KAFKA_CLIENT_MODULES = {"worker.kafka.confluent", "worker.kafka.reader"}  # the adapters over confluent-kafka
# confluent-kafka also ships the Schema Registry's HTTP client, which has nothing of the Kafka client
# (librdkafka) in it: one adapter, beside the registry port it implements, may use that part alone.
SCHEMA_REGISTRY_CLIENT = "confluent_kafka.schema_registry"
REGISTRY_CLIENT_MODULES = {"worker.codecs.registry_client"}
CLI_SHARED = {"worker.cli", "worker.cli.options"}  # what every command may import


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports (``from a import b`` names ``a.b`` when that is a module)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)


def worker_imports(name: str) -> set[str]:
    return {m for m in imports(MODULES[name]) if m in MODULES and m != name}


def room(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_room_has_a_layer() -> None:
    unplaced = sorted({room(m) for m in MODULES} - set(RANK))
    assert not unplaced, f"give these a layer in LAYERS: {unplaced}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_or_stay_in_the_room(name: str) -> None:
    here = room(name)
    wrong = [f"{m} ({room(m)})" for m in sorted(worker_imports(name))
             if room(m) != here and (RANK[room(m)] > RANK[here] or RANK[room(m)] == RANK[here])]
    assert not wrong, f"{name} ({here}, layer {RANK[here]}) imports upward or sideways: {wrong}"


def test_there_is_no_import_cycle() -> None:
    graph = {name: worker_imports(name) for name in MODULES}
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]]]
    assert not cycles, f"import cycles: {cycles}"


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_registry_client(module: str) -> bool:
    return module == SCHEMA_REGISTRY_CLIENT or module.startswith(SCHEMA_REGISTRY_CLIENT + ".")


def test_only_the_kafka_adapters_import_confluent_kafka() -> None:
    users = sorted(name for name, path in MODULES.items()
                   if any((m == "confluent_kafka" or m.startswith("confluent_kafka.")) and not _is_registry_client(m)
                          for m in imports(path)))
    assert set(users) == KAFKA_CLIENT_MODULES, users


def test_only_the_registry_adapter_imports_confluent_kafkas_schema_registry_client() -> None:
    users = sorted(name for name, path in MODULES.items() if any(_is_registry_client(m) for m in imports(path)))
    assert set(users) == REGISTRY_CLIENT_MODULES, users


def test_commands_import_the_shared_options_never_each_other() -> None:
    commands = [m for m in MODULES if m.startswith("worker.cli.") and m not in {*CLI_SHARED, "worker.cli.main"}]
    crossing = {c: sorted(m for m in worker_imports(c) if room(m) == "cli" and m not in CLI_SHARED) for c in commands}
    assert commands and not {c: ms for c, ms in crossing.items() if ms}


def test_the_readme_layout_names_every_package_folder() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Repository layout"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    folders = sorted(f"worker/{p.parent.name}/" for p in PACKAGE.glob("*/__init__.py"))
    missing = [f for f in folders if not re.search(re.escape(f"`{f}"), section)]
    assert not missing, f"README's layout does not name {missing}"
