"""Where hands-on commands take their items from: a file of JSON lines, or a generator function
in a Python file (``path/to/file.py:function``) yielding what a line of the file would hold,
which may take ``n`` and ``seed`` keyword arguments. Each item comes with where it came from;
an item that could not be parsed is the exception that says why."""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from worker.errors import ToolError, WorkerError

Item = tuple[str, Any]  # (where it came from, a parsed item or the Exception that stopped it)


def json_lines(path: Path, loop: bool = False) -> Iterator[Item]:
    """Each non-blank line of ``path`` parsed as JSON, or its error; again from the top with ``loop``."""
    while True:
        found = False
        try:
            with path.open() as lines:
                for number, line in enumerate(lines, 1):
                    if line.strip():
                        found = True
                        yield f"{path}:{number}", _parse_json(line)
        except OSError as exc:
            raise ToolError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if not (loop and found):
            return


def _parse_json(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return ToolError(f"not JSON: {exc.msg} (column {exc.colno})")


def load_generator(spec: str) -> Callable[..., Iterable[Any]]:
    """The function named by ``path/to/file.py:function``."""
    path_text, sep, name = spec.rpartition(":")
    path = Path(path_text)
    if not sep or not name or path.suffix != ".py":
        raise ToolError(f"--generator wants path/to/file.py:function, not {spec!r}")
    if not path.is_file():
        raise ToolError(f"--generator: no such file {path}")
    module_name = f"_worker_generator_{abs(hash(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ToolError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ToolError(f"{path} has no function {name!r}")
    return fn  # type: ignore[no-any-return]


def generated(spec: str, **offered: Any) -> Iterator[Item]:
    """The items of a generator, called with those ``offered`` arguments it takes (None ones left out)."""
    fn = load_generator(spec)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offered.items() if v is not None and (k in params or takes_any)}
    try:
        for number, item in enumerate(fn(**kwargs), 1):
            yield f"{spec} item {number}", item
    except (WorkerError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise ToolError(f"generator {spec} failed: {_where(exc)}") from exc


def _where(exc: Exception) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"
