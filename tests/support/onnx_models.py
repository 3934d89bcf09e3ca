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


def failing_on(path: Path, base: Path, value: float, column: int = 0, output: str = "probabilities") -> Path:
    """``base`` with one change: a batch in which input column ``column`` of any row equals
    ``value`` makes ONNX Runtime fail (a Gather index out of bounds); other batches score exactly
    as ``base`` does (the gathered zeros are added to ``output``)."""
    model = onnx.load(str(base))
    graph = model.graph
    (source,) = [n for n in graph.node if output in n.output]
    source.output[list(source.output).index(output)] = f"{output}_base"
    (feed,) = graph.input
    graph.node.extend([
        helper.make_node("Slice", [feed.name, "col_start", "col_end", "col_axis"], ["watched"]),
        helper.make_node("Equal", ["watched", "poison_value"], ["is_poison"]),
        helper.make_node("Cast", ["is_poison"], ["poison_index"], to=INT64),
        helper.make_node("Mul", ["poison_index", "out_of_bounds"], ["gather_index"]),
        helper.make_node("Gather", ["zeros", "gather_index"], ["gathered"], axis=0),
        helper.make_node("Add", [f"{output}_base", "gathered"], [output]),
    ])
    graph.initializer.extend([const("col_start", np.array([column], dtype=np.int64)),
                              const("col_end", np.array([column + 1], dtype=np.int64)),
                              const("col_axis", np.array([1], dtype=np.int64)),
                              const("poison_value", np.array(value, dtype=np.float32)),
                              const("out_of_bounds", np.array(5, dtype=np.int64)),
                              const("zeros", np.zeros(2, dtype=np.float32))])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path
