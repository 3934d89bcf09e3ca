"""Golden vectors: feeding a card's sample inputs to a model and comparing what it returns
with what the card expects; and making sample inputs (from the card's reference statistics
when it has them) to write new golden vectors from a trusted version."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.inference import Model
from worker.lifecycle.card import GoldenVector, ModelCard
from worker.pipeline.assembly import numpy_dtype

_REPORTED = 3  # mismatches spelled out; the rest are counted


@dataclass(frozen=True)
class FedInput:
    """A model input as the serving pipeline feeds it: ``[N, width]`` (rank 2) or ``[N]``."""

    name: str
    dtype: str
    rank: int
    width: int


@dataclass
class GoldenResult:
    checked: int = 0
    max_diff: float = 0.0
    problems: list[str] = field(default_factory=list)


class GoldenProblem(ValueError):
    """The golden vectors do not fit the model's inputs or outputs."""


def golden_feeds(vectors: Sequence[GoldenVector], inputs: Sequence[FedInput]) -> dict[str, np.ndarray]:
    """The vectors' inputs as one batch, shaped as the pipeline feeds the model."""
    feeds = {}
    for fed in inputs:
        rows = [_input_of(i, v, fed, len(inputs)) for i, v in enumerate(vectors)]
        try:
            array: np.ndarray = np.asarray(rows, dtype=numpy_dtype(fed.dtype))
        except (TypeError, ValueError) as exc:
            raise GoldenProblem(f"golden input '{fed.name}' does not convert to {fed.dtype}: {exc}") from exc
        want = (len(vectors), fed.width) if fed.rank == 2 else (len(vectors),)
        if array.shape != want:
            got = array.shape[1] if array.ndim == 2 else 1
            raise GoldenProblem(f"golden input '{fed.name}' has {got} values per vector, but the model "
                                f"is fed {fed.width}")
        feeds[fed.name] = array
    return feeds


def _input_of(index: int, vector: GoldenVector, fed: FedInput, n_inputs: int) -> Any:
    if fed.name in vector.inputs:
        value = vector.inputs[fed.name]
    elif None in vector.inputs and n_inputs == 1:
        value = vector.inputs[None]
    else:
        raise GoldenProblem(f"golden vector {index} has no value for input '{fed.name}'")
    if fed.rank == 1 and isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


def compare(model: Model, vectors: Sequence[GoldenVector], inputs: Sequence[FedInput], atol: float,
            rtol: float) -> GoldenResult:
    """Runs the vectors through ``model`` and checks every expected output within
    ``atol + rtol * |expected|``."""
    feeds = golden_feeds(vectors, inputs)
    output_names = [o.name for o in model.outputs]
    expected = [v.expected(output_names) for v in vectors]
    named = list(dict.fromkeys(name for e in expected for name in e))
    unknown = [n for n in named if n not in output_names]
    if unknown or not named:
        raise GoldenProblem(f"the golden vectors name no output of the model ({', '.join(unknown) or 'none named'}; "
                            f"it has: {', '.join(output_names)})")
    actual = dict(zip(named, model.run(feeds, named), strict=True))
    result = GoldenResult(checked=len(vectors))
    mismatches = 0
    for i, want in enumerate(expected):
        for name, value in want.items():
            diff, problem = _differs(actual[name][i], value, atol, rtol)
            result.max_diff = max(result.max_diff, diff)
            if problem:
                mismatches += 1
                if mismatches <= _REPORTED:
                    result.problems.append(f"golden vector {i}: output '{name}' {problem}")
    if mismatches > _REPORTED:
        result.problems.append(f"... and {mismatches - _REPORTED} more golden mismatches")
    return result


def _differs(actual: Any, expected: Any, atol: float, rtol: float) -> tuple[float, str | None]:
    """The largest difference and, if beyond the tolerance, what differs."""
    if isinstance(actual, dict):  # ZipMap: {class: probability}; JSON keys are text
        actual = {str(k): v for k, v in actual.items()}
        expected = {str(k): v for k, v in (expected.items() if isinstance(expected, dict) else enumerate(expected))}
        keys = sorted(expected)
        if sorted(actual) != keys:
            return float("inf"), f"has classes {sorted(actual)}, expected {keys}"
        actual, expected = [actual[k] for k in keys], [expected[k] for k in keys]
    got = np.atleast_1d(np.asarray(actual))
    want = np.atleast_1d(np.asarray(expected))
    if got.size != want.size:
        return float("inf"), f"has {got.size} values, expected {want.size}"
    if got.dtype.kind in "OUS" or want.dtype.kind in "OUS":
        same = got.astype(str).ravel().tolist() == want.astype(str).ravel().tolist()
        return (0.0, None) if same else (float("inf"), f"is {_fmt(got)}, expected {_fmt(want)}")
    got, want = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    diff = float(np.max(np.abs(got - want))) if got.size else 0.0
    if np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
        return diff, None
    return diff, (f"is {_fmt(got)}, expected {_fmt(want)} (differs by {diff:.3g}; tolerance {atol:g} + "
                  f"{rtol:g}·|expected|)")


def _fmt(values: np.ndarray) -> str:
    shown = [f"{v:.6g}" if isinstance(v, float) else str(v) for v in values.ravel().tolist()[:6]]
    return "[" + ", ".join(shown) + (", ...]" if values.size > 6 else "]")


def sample_inputs(inputs: Sequence[FedInput], n: int, card: ModelCard | None = None,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` plausible rows per input: drawn from the card's reference statistics where they
    cover an input's columns (``feature_order`` + ``reference_stats``), else small random values."""
    rng = np.random.default_rng(seed)
    stats = _column_stats(card, inputs)
    feeds = {}
    for fed in inputs:
        width = fed.width if fed.rank == 2 else 1
        if fed.dtype == "string":
            values = np.full((n, width), "", dtype=object)
        elif fed.name in stats:
            values = np.column_stack([_draw(rng, s, n) for s in stats[fed.name]])
        else:
            values = rng.normal(0, 1, (n, width))
            if np.issubdtype(numpy_dtype(fed.dtype), np.integer):
                values = np.abs(values * 3).round()
            elif fed.dtype == "bool":
                values = values > 0
        array: np.ndarray = np.asarray(values).astype(numpy_dtype(fed.dtype))
        feeds[fed.name] = array if fed.rank == 2 else array[:, 0]
    return feeds


def _column_stats(card: ModelCard | None, inputs: Sequence[FedInput]) -> dict[str, list[dict[str, Any]]]:
    """Reference statistics per column of the (only) numeric input, if the card has them all."""
    if card is None or len(inputs) != 1 or inputs[0].dtype == "string":
        return {}
    order = card.data.get("feature_order") or []
    stats = [card.reference_stats.get(str(name)) for name in order]
    if len(stats) != inputs[0].width or not all(isinstance(s, dict) for s in stats):
        return {}
    return {inputs[0].name: [s for s in stats if isinstance(s, dict)]}


def _draw(rng: np.random.Generator, stats: dict[str, Any], n: int) -> np.ndarray:
    quantiles = stats.get("quantiles")
    points = list(quantiles.values()) if isinstance(quantiles, dict) else quantiles
    if isinstance(points, list) and points:
        return np.asarray(rng.choice(np.asarray(points, dtype=np.float64), n))
    mean, std = float(stats.get("mean", 0.0)), float(stats.get("std", 1.0))
    return rng.normal(mean, std, n)


def make_golden(model: Model, inputs: Sequence[FedInput], outputs: Sequence[str],
                feeds: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Golden vectors from a trusted model's own outputs, in the card layout matching its
    inputs (``input`` + output-named keys for a single input, ``inputs``/``outputs`` otherwise)."""
    results = dict(zip(outputs, model.run(feeds, list(outputs)), strict=True))
    n = len(next(iter(feeds.values())))
    vectors = []
    for i in range(n):
        row_inputs = {fed.name: _plain(feeds[fed.name][i]) for fed in inputs}
        row_outputs = {name: _plain(results[name][i]) for name in outputs}
        if len(inputs) == 1 and inputs[0].name not in row_outputs:
            vectors.append({"input": row_inputs[inputs[0].name], **row_outputs})
        else:
            vectors.append({"inputs": row_inputs, "outputs": row_outputs})
    return vectors


def _plain(value: Any) -> Any:
    """JSON-ready: arrays to lists, numpy scalars to Python ones, ZipMap dicts' keys to text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value
