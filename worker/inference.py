"""The model port and its ONNX Runtime adapter.

A ``Model`` declares its tensor signature (used to validate the configuration before
anything connects) and runs one batch of named input arrays.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from worker.errors import ModelRunError, StartupError

logger = logging.getLogger(__name__)

_ONNX_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(bool)": "bool", "tensor(string)": "string",
}


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: name, element type ('float32', 'string', ...) and shape."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    @property
    def width(self) -> int | None:
        """The static size of the second dimension, if the tensor has one."""
        if len(self.shape) >= 2 and isinstance(self.shape[1], int):
            return self.shape[1]
        return None


class Model(Protocol):
    name: str
    version: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[Any]:
        """Run one batch; raise ``ModelRunError`` if the runtime rejects it."""


def cpu_quota() -> int:
    """CPUs this process may use: the cgroup quota if one is set, else its CPU affinity."""
    for path, parse in (("/sys/fs/cgroup/cpu.max", _cgroup2), ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", _cgroup1)):
        try:
            quota = parse(Path(path))
        except (OSError, ValueError):
            continue
        if quota:
            return max(1, math.ceil(quota))
    return len(os.sched_getaffinity(0))


def _cgroup2(path: Path) -> float | None:
    limit, period = path.read_text().split()[:2]
    return None if limit == "max" else int(limit) / int(period)


def _cgroup1(path: Path) -> float | None:
    quota = int(path.read_text())
    period = int((path.parent / "cpu.cfs_period_us").read_text())
    return None if quota <= 0 else quota / period


class OnnxModel:
    """An ONNX Runtime CPU session with settings chosen for small, frequent batches."""

    def __init__(self, path: Path, name: str, version: str, threads: int = 0) -> None:
        import onnxruntime as ort

        self.name, self.version, self.path = name, version, path
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_quota()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads would otherwise spin between batches, taking CPU from the
        # librdkafka and Redis I/O that the next batch is waiting on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
            raise StartupError(f"cannot load ONNX model {path}: {exc}") from exc
        self.inputs = [_tensor_info(i) for i in self._session.get_inputs()]
        self.outputs = [_tensor_info(o) for o in self._session.get_outputs()]
        logger.info("model loaded", extra={"model": name, "version": version, "path": str(path),
                                           "intra_op_threads": options.intra_op_num_threads})

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[Any]:
        try:
            return list(self._session.run(list(outputs), feeds))
        except Exception as exc:
            raise ModelRunError(f"model {self.name} v{self.version} failed: {exc}") from exc


def _tensor_info(node: Any) -> TensorInfo:
    dtype = _ONNX_DTYPES.get(node.type, node.type)
    return TensorInfo(node.name, dtype, tuple(d if isinstance(d, int) else None for d in node.shape))


class FunctionModel:
    """The model's in-memory twin: a Python function over the named inputs (tests)."""

    def __init__(self, fn: Callable[[dict[str, np.ndarray]], dict[str, Any]], inputs: list[TensorInfo],
                 outputs: list[TensorInfo], name: str = "function", version: str = "1") -> None:
        self.name, self.version = name, version
        self.inputs, self.outputs = inputs, outputs
        self._fn = fn
        self.calls = 0

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[Any]:
        self.calls += 1
        try:
            result = self._fn(feeds)
        except Exception as exc:
            raise ModelRunError(f"model {self.name} failed: {exc}") from exc
        return [result[name] for name in outputs]
