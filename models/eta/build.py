"""Writes the second example's model, ``1/model.onnx``, and its card, ``1/model-card.json``.

    .venv/bin/python models/eta/build.py        # needs the onnx package (pip install -e '.[train]')

The model is not learned: it is a small formula written as an ONNX graph, there to show the
shapes a model can take that the fraud example does not: several named inputs, a string
tensor, a two-column input fed by a feature-store entity, and a regression output.

    minutes = 6 + 2.5·distance + 0.7·items + prep_minutes_avg + 0.4·open_orders
              + cuisine_minutes[cuisine] + 2·(5 − rating)

Its card carries golden vectors computed with the same formula in numpy, so the worker checks
that ONNX Runtime agrees before serving it. The files are the same bytes on every run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
CUISINE_MINUTES = {"PIZZA": 4.0, "SUSHI": 6.0, "BURGER": 3.0, "CURRY": 8.0, "SALAD": 2.0}
UNKNOWN_CUISINE_MINUTES = 5.0
BASE, PER_KM, PER_ITEM, PER_OPEN_ORDER, PER_MISSING_STAR = 6.0, 2.5, 0.7, 0.4, 2.0
INPUTS = [("distance", TensorProto.FLOAT, 1), ("items", TensorProto.FLOAT, 1), ("cuisine", TensorProto.STRING, 1),
          ("kitchen", TensorProto.FLOAT, 2), ("rating", TensorProto.FLOAT, 1)]


def minutes(distance: float, items: float, cuisine: str, kitchen: list[float], rating: float) -> float:
    """The formula in numpy's float32, as the graph computes it."""
    f = np.float32
    terms = [f(BASE), f(PER_KM) * f(distance), f(PER_ITEM) * f(items),
             f(kitchen[0]) * f(1.0) + f(kitchen[1]) * f(PER_OPEN_ORDER),
             f(CUISINE_MINUTES.get(cuisine, UNKNOWN_CUISINE_MINUTES)), f(PER_MISSING_STAR) * (f(5.0) - f(rating))]
    return float(np.sum(np.array(terms, dtype=np.float32), dtype=np.float32))


def graph() -> onnx.GraphProto:
    const = helper.make_tensor
    nodes = [
        helper.make_node("Mul", ["distance", "per_km"], ["by_distance"]),
        helper.make_node("Mul", ["items", "per_item"], ["by_items"]),
        helper.make_node("MatMul", ["kitchen", "kitchen_weights"], ["by_kitchen"]),
        helper.make_node("LabelEncoder", ["cuisine"], ["by_cuisine"], domain="ai.onnx.ml",
                         keys_strings=list(CUISINE_MINUTES), values_floats=list(CUISINE_MINUTES.values()),
                         default_float=UNKNOWN_CUISINE_MINUTES),
        helper.make_node("Sub", ["five", "rating"], ["missing_stars"]),
        helper.make_node("Mul", ["missing_stars", "per_missing_star"], ["by_rating"]),
        helper.make_node("Sum", ["base", "by_distance", "by_items", "by_kitchen", "by_cuisine", "by_rating"],
                         ["minutes"]),
    ]
    initializers = [
        const("per_km", TensorProto.FLOAT, [], [PER_KM]), const("per_item", TensorProto.FLOAT, [], [PER_ITEM]),
        const("kitchen_weights", TensorProto.FLOAT, [2, 1], [1.0, PER_OPEN_ORDER]),
        const("five", TensorProto.FLOAT, [], [5.0]),
        const("per_missing_star", TensorProto.FLOAT, [], [PER_MISSING_STAR]),
        const("base", TensorProto.FLOAT, [], [BASE]),
    ]
    inputs = [helper.make_tensor_value_info(name, dtype, ["N", width]) for name, dtype, width in INPUTS]
    outputs = [helper.make_tensor_value_info("minutes", TensorProto.FLOAT, ["N", 1])]
    return helper.make_graph(nodes, "eta", inputs, outputs, initializers)


def golden() -> list[dict[str, Any]]:
    rows = [(0.5, 1, "SALAD", [8.0, 0.0], 5.0), (2.75, 3, "PIZZA", [15.0, 4.0], 4.5),
            (6.2, 5, "CURRY", [27.5, 11.0], 3.1), (4.0, 2, "SUSHI", [15.0, 0.0], 4.5),
            (9.0, 8, "BURGER", [12.3, 7.0], 3.0)]
    return [{"inputs": {"distance": [d], "items": [i], "cuisine": [c], "kitchen": k, "rating": [r]},
             "outputs": {"minutes": [minutes(d, i, c, k, r)]}} for d, i, c, k, r in rows]


def card() -> dict[str, Any]:
    return {
        "name": "eta", "version": "1",
        "description": "Minutes from placing a food-delivery order to its delivery, for the worker's second "
                       "example (a formula, not learned).",
        "inputs": [{"name": name, "dtype": "string" if dtype == TensorProto.STRING else "float32",
                    "shape": [None, width]} for name, dtype, width in INPUTS],
        "outputs": [{"name": "minutes", "dtype": "float32", "shape": [None, 1]}],
        "threshold": 60.0,
        "training": {"method": "none: " + __doc__.split("    minutes = ")[1].split("\n\n")[0].strip()},
        "golden": golden(),
        "golden_tolerance": {"atol": 1e-4},
    }


def main() -> None:
    model = helper.make_model(graph(), producer_name="models/eta/build.py",
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (HERE / "1").mkdir(exist_ok=True)
    onnx.save(model, HERE / "1" / "model.onnx")
    (HERE / "1" / "model-card.json").write_text(json.dumps(card(), indent=1) + "\n")
    print(f"wrote {HERE / '1' / 'model.onnx'} and its card")


if __name__ == "__main__":
    main()
