"""Small ONNX models built in tests with ``onnx.helper``, for specific signatures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, DOUBLE, INT64, STRING = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.STRING
Shape = Sequence[int | str | None]
Value = tuple[str, int, Shape]  # name, element type, shape


def save_model(path: Path, nodes: list[onnx.NodeProto], inputs: Sequence[Value], outputs: Sequence[Value],
               initializers: Sequence[onnx.TensorProto] = ()) -> Path:
    graph = helper.make_graph(nodes, "test", [helper.make_tensor_value_info(*v) for v in inputs],
                              [helper.make_tensor_value_info(*v) for v in outputs], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                              ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def linear_classifier(path: Path, width: int, input_name: str = "features", dtype: int = FLOAT) -> Path:
    """``input [N, width]`` → ``probabilities [N, 2]`` = [1 - p, p], p = sigmoid(x · w)."""
    np_type = np.float32 if dtype == FLOAT else np.float64
    weights = np.linspace(-0.5, 0.5, width, dtype=np_type).reshape(width, 1)
    nodes = [helper.make_node("MatMul", [input_name, "w"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["p"]),
             helper.make_node("Sub", ["one", "p"], ["q"]),
             helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1)]
    return save_model(path, nodes, [(input_name, dtype, ["N", width])], [("probabilities", dtype, ["N", 2])],
                      [const("w", weights), const("one", np.ones((1, 1), dtype=np_type))])


def sum_of_inputs(path: Path, names: Sequence[str]) -> Path:
    """Several ``[N, 1]`` float inputs → ``score [N, 1]``, their sum."""
    nodes = [helper.make_node("Sum", list(names), ["score"])]
    return save_model(path, nodes, [(n, FLOAT, ["N", 1]) for n in names], [("score", FLOAT, ["N", 1])])
