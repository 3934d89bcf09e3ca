"""What the compiled Avro reader and writer share: the namespace their generated code runs in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Namespace:
    """Fresh names for generated code, and the constants it refers to by name (bound into the
    namespace the code is compiled in, so they are plain global lookups at run time)."""

    def __init__(self, builtins: Mapping[str, Any]) -> None:
        self.names: dict[str, Any] = dict(builtins)
        self._n = 0

    def fresh(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def constant(self, value: Any) -> str:
        name = self.fresh("K")
        self.names[name] = value
        return name

    def define(self, source: str, filename: str, name: str) -> Any:
        """The function ``name`` that ``source`` defines, compiled in these names (``filename`` is what
        tracebacks and profiles show)."""
        namespace = dict(self.names)
        exec(compile(source, filename, "exec"), namespace)
        return namespace[name]
