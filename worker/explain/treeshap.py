"""Exact interventional TreeSHAP, read straight from an ONNX tree ensemble.

The model must be one ``TreeEnsembleClassifier`` or ``TreeEnsembleRegressor`` node (domain
``ai.onnx.ml``) reading the graph's input (through ``Identity`` nodes and ``Cast`` to float or
double at most), as skl2onnx writes gradient boosting and random forests. What is explained is
the ensemble's *raw output* for one column: ``base_values[column]`` plus the sum of the leaf
weights for that column, the value before ``post_transform`` (NONE, LOGISTIC or SOFTMAX). For a
logistic classifier that is the log-odds, so the values are in log-odds units; for a softmax
classifier it is the class's raw score, for a regressor the prediction itself. skl2onnx writes a
binary GradientBoostingClassifier as one score s: every leaf weight is for class 0, base_values is
``[log-odds of the training prior]`` and post_transform LOGISTIC, and ONNX Runtime outputs
``[sigmoid(-s), sigmoid(s)]``; so column 1's raw output is s (scikit-learn's decision_function),
column 0's is -s.

The values are interventional Shapley values against a fixed background (reference rows): the
game is ``v(S) = E_r f(x_S, r_notS)``, the model on the event's values for the features in ``S``
and a background row's for the rest, averaged over the background rows. They add up: per row,
``shap_values(x).sum() == margin(x) - expected``, where ``expected`` is the mean raw output over
the background. With a single background row they are "baseline Shapley" values: why this event
scores differently from that one row.

Method. The raw output is a sum over all leaves of ``w_leaf * [x reaches leaf]``, and Shapley
values are linear in the game, so they are summed per leaf and per background row. A leaf's path
conditions, grouped by feature, form D "slots" (a feature tested twice on the path is one slot,
the conjunction of its tests). For the event x and a background row r, with A the slots only x
satisfies and B those only r satisfies (``a = |A|``, ``b = |B|``), the leaf is reached by the
mixed row exactly when every A feature comes from x and every B feature from r (and never if
some slot is satisfied by neither). That game's Shapley values are ``w (a-1)! b! / (a+b)!`` for
each feature of A, ``-w a! (b-1)! / (a+b)!`` for each feature of B, 0 for the others. Since the
background is fixed, the average over its rows depends only on the event's D-bit pattern of
satisfied slots, so it is tabulated once per leaf for all ``2**D`` patterns (``from_onnx``);
explaining a batch is then one vectorised pass over events x leaves x path conditions, a table
look-up per leaf and a sum per feature. The table holds ``L * 2**D * D`` float64 numbers (L
leaves); more than ``MAX_TABLE`` (deep trees) is refused: use ``explain.method: occlusion`` for
those. Each thread that explains keeps its own work arrays (a few MB for a 150-tree model).

Comparisons are those of ONNX Runtime: float32 inputs against float32 thresholds (inputs are
converted to float32), NaN takes the true branch where ``nodes_missing_value_tracks_true`` is 1
and otherwise whatever the comparison gives (false, except for ``BRANCH_NEQ``).

Where it misleads: interventional values break correlations between features. Mixing an event's
value of one feature with a background row's value of a correlated one asks the model about
rows that never occur, and credit can land on a feature the model only uses as a proxy (or be
split between two near-duplicates). They explain the model's arithmetic, not the world's causes,
and depend on the background chosen.

Reads the model with the ``onnx`` package (imported in ``from_onnx`` only, so that serving
without tree_shap never pays for the import).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import onnx

MAX_TABLE = 50_000_000
"""Most numbers (float64) in the precomputed table of a model (about 400 MB)."""
CHUNK = 1_000_000
"""Rows are explained in chunks of about this many (row, leaf, condition) elements."""
ENSEMBLES = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
FLOAT, DOUBLE = 1, 11  # onnx.TensorProto's element types
MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ")
TRANSFORMS = ("NONE", "LOGISTIC", "SOFTMAX")
COMPARE = (np.less_equal, np.less, np.greater_equal, np.greater, np.equal, np.not_equal)

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


class TreeShapError(ValueError):
    """The model is not a single tree ensemble this module can read, or its trees are too deep."""


@dataclass(frozen=True, eq=False)
class Leaves:
    """Every leaf with a weight for the explained column and its path: the tests (the internal
    nodes on some path), and per leaf its conditions padded to K and its slots padded to D."""

    weight: Floats  # [L]
    test_feature: Ints  # [N] the feature each test reads
    test_mode: Ints  # [N] index into MODES
    test_threshold: npt.NDArray[np.floating[Any]]  # [N] float32 (float64 if given as a double tensor)
    test_nan_true: Bools  # [N] NaN takes the true branch
    condition: Ints  # [K, L] a row of the failures: test + N * (the path takes the true branch); 2N: padding
    bit: npt.NDArray[np.integer[Any]]  # [K, L] 1 << the condition's slot (0: padding)
    slot_feature: Ints  # [L, D] the feature of each slot (n_features: padding)

    @property
    def slots(self) -> int:
        return int(self.slot_feature.shape[1])


class Workspace:
    """The arrays for explaining up to ``size`` rows at once, allocated once (per thread and size):
    they are megabytes, and fresh ones on every call can cost more than the arithmetic (the
    allocator hands back and asks again for the same pages)."""

    def __init__(self, leaves: Leaves, size: int, n_features: int, pairs: int, runs: int) -> None:
        count, tests, slots = len(leaves.weight), len(leaves.test_feature), leaves.slots
        self.rows = np.zeros((n_features, size), dtype=np.float32)  # transposed; unused columns 0
        self.tested = np.empty((tests, size), dtype=np.float32)
        self.scratch = np.empty((tests, size), dtype=bool)
        self.failures = np.zeros((2 * tests + 1, size), dtype=bool)  # the last row stays False (padding)
        self.gathered = np.empty((count, size), dtype=bool)
        self.term = np.empty((count, size), dtype=leaves.bit.dtype)
        self.unmet = np.empty((count, size), dtype=leaves.bit.dtype)
        self.index = np.empty((size, count), dtype=np.int64)
        self.values = np.empty((size, count, slots), dtype=np.float64)
        self.taken = np.empty((size, pairs), dtype=np.float64)
        self.sums = np.empty((size, runs), dtype=np.float64)

    def load(self, rows: npt.NDArray[np.float32]) -> None:
        self.rows[:, :len(rows)] = rows.T
        self.rows[:, len(rows):] = 0.0

    def unmet_slots(self, leaves: Leaves) -> npt.NDArray[np.integer[Any]]:
        """``[L, size]``: bit d set where the row does not satisfy the leaf's slot d (0: it reaches the leaf)."""
        tests = len(leaves.test_feature)
        np.take(self.rows, leaves.test_feature, axis=0, out=self.tested, mode="clip")
        passed, thresholds = self.failures[:tests], leaves.test_threshold[:, None]
        codes = np.unique(leaves.test_mode).tolist()
        for code in codes:
            if len(codes) == 1:
                COMPARE[code](self.tested, thresholds, out=passed)
            else:
                COMPARE[code](self.tested, thresholds, out=self.scratch)
                np.copyto(passed, self.scratch, where=(leaves.test_mode == code)[:, None])
        if leaves.test_nan_true.any():
            np.isnan(self.tested, out=self.scratch)
            self.scratch &= leaves.test_nan_true[:, None]
            passed |= self.scratch
        np.logical_not(passed, out=self.failures[tests:2 * tests])
        self.unmet[:] = 0
        for condition, bit in zip(leaves.condition, leaves.bit, strict=True):
            np.take(self.failures, condition, axis=0, out=self.gathered, mode="clip")
            np.multiply(self.gathered, bit[:, None], out=self.term)
            self.unmet |= self.term
        return self.unmet

    def patterns(self, leaves: Leaves) -> Ints:
        """``[size, L]``: bit d set where the row satisfies the leaf's slot d (padding slots are set)."""
        np.bitwise_xor(self.unmet_slots(leaves).T, (1 << leaves.slots) - 1, out=self.index)
        return self.index


@dataclass(frozen=True, eq=False)
class TreeShap:
    """Interventional TreeSHAP of one output column of an ONNX tree ensemble (module docstring)."""

    n_features: int
    expected: float
    offset: float = field(repr=False)
    leaves: Leaves = field(repr=False)
    table: Floats = field(repr=False)  # [L * 2**D, D] the averaged Shapley value per leaf, event pattern and slot
    pairs: Ints = field(repr=False)  # the (leaf, slot) pairs (flat index into [L, D]) sorted by feature, no padding
    starts: Ints = field(repr=False)  # where each feature's run of ``pairs`` starts
    features: Ints = field(repr=False)  # the feature of each run
    threads: threading.local = field(default_factory=threading.local, init=False, repr=False)  # workspaces

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto | bytes | Path, column: int, background: np.ndarray) -> TreeShap:
        """Read the ensemble of ``model`` and tabulate its values against ``background`` ([m, F] rows)."""
        proto = _load(model)
        node = _ensemble_node(proto.graph)
        attrs = _attributes(node)
        weights, offset = _leaf_weights(node.op_type, attrs, column)
        rows = _rows(background, None)
        leaves = _leaves(attrs, weights, rows.shape[1])
        table = _table(leaves, _background_patterns(leaves, rows))
        shap = cls(rows.shape[1], 0.0, offset, leaves, table, *_runs(leaves.slot_feature, rows.shape[1]))
        return replace(shap, expected=float(shap.margin(rows).mean()))

    def margin(self, x: np.ndarray) -> np.ndarray:
        """``[n]`` raw output (log-odds for a logistic classifier) of rows ``x`` ([n, F])."""
        rows = _rows(x, self.n_features)
        out = np.empty(len(rows), dtype=np.float64)
        done = 0
        for chunk in _chunks(self.leaves, rows):
            reached = self.workspace(chunk).unmet_slots(self.leaves)[:, :len(chunk)] == 0  # [L, n]
            out[done:done + len(chunk)] = self.leaves.weight @ reached + self.offset
            done += len(chunk)
        return out

    def shap_values(self, x: np.ndarray) -> np.ndarray:
        """``[n, F]`` float64 contributions; each row sums to ``margin(x) - expected``."""
        rows = _rows(x, self.n_features)
        out = np.zeros((len(rows), self.n_features), dtype=np.float64)
        done = 0
        for chunk in _chunks(self.leaves, rows):
            if len(self.pairs):
                out[done:done + len(chunk), self.features] = self._explain(chunk)
            done += len(chunk)
        return out

    def _explain(self, chunk: npt.NDArray[np.float32]) -> Floats:
        """``[n, features with a slot]``: each leaf's values looked up by the rows' patterns, summed per feature."""
        space = self.workspace(chunk)
        index = space.patterns(self.leaves)
        index += np.arange(len(self.leaves.weight), dtype=np.int64) << self.leaves.slots
        np.take(self.table, index, axis=0, out=space.values, mode="clip")
        np.take(space.values.reshape(len(space.values), -1), self.pairs, axis=1, out=space.taken, mode="clip")
        np.add.reduceat(space.taken, self.starts, axis=1, out=space.sums)
        return space.sums[:len(chunk)]

    def workspace(self, rows: npt.NDArray[np.float32]) -> Workspace:
        """This thread's workspace for as many rows (rounded up to a power of two), loaded with them."""
        size = 1 << max(0, len(rows) - 1).bit_length()
        spaces: dict[int, Workspace] = self.threads.__dict__.setdefault("spaces", {})
        if size not in spaces:
            spaces[size] = Workspace(self.leaves, size, self.n_features, len(self.pairs), len(self.starts))
        spaces[size].load(rows)
        return spaces[size]


def _chunks(leaves: Leaves, rows: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
    """The rows in chunks of a power of two rows, small enough for the workspaces (``CHUNK``)."""
    per_row = max(1, leaves.condition.size, leaves.slot_feature.size)
    step = 1 << max(0, (CHUNK // per_row).bit_length() - 1)
    return [rows[start:start + step] for start in range(0, len(rows), step)]


def _background_patterns(leaves: Leaves, rows: npt.NDArray[np.float32]) -> Ints:
    """``[m, L]``: the background rows' patterns (``Workspace.patterns``), in throwaway workspaces."""
    parts = []
    for chunk in _chunks(leaves, rows):
        space = Workspace(leaves, len(chunk), rows.shape[1], pairs=0, runs=0)
        space.load(chunk)
        parts.append(space.patterns(leaves))
    return np.concatenate(parts)


def _runs(slot_feature: Ints, n_features: int) -> tuple[Ints, Ints, Ints]:
    """The (leaf, slot) pairs sorted by feature, padding left out; where each feature's run starts; its feature."""
    flat = slot_feature.ravel()
    pairs = np.argsort(flat, kind="stable")
    pairs = pairs[flat[pairs] < n_features]
    ordered = flat[pairs]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(pairs) else np.zeros(0, np.int64)
    return pairs.astype(np.int64), starts.astype(np.int64), ordered[starts].astype(np.int64)


def _rows(x: np.ndarray, width: int | None) -> npt.NDArray[np.float32]:
    rows = np.ascontiguousarray(x, dtype=np.float32)
    if rows.ndim != 2 or (width is not None and rows.shape[1] != width):
        raise ValueError(f"expected rows of shape [n, {width or 'F'}], got {list(rows.shape)}")
    if width is None and len(rows) == 0:
        raise ValueError("the background needs at least one row")
    return rows


# Reading the model


def _load(model: onnx.ModelProto | bytes | Path) -> onnx.ModelProto:
    try:
        import onnx
    except ImportError as exc:
        raise TreeShapError("TreeSHAP reads the model with the onnx package: pip install onnx") from exc
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    if isinstance(model, str | Path):
        return onnx.load(str(model), load_external_data=False)
    return model


def _ensemble_node(graph: onnx.GraphProto) -> onnx.NodeProto:
    ensembles = [n for n in graph.node if n.op_type in ENSEMBLES and n.domain == "ai.onnx.ml"]
    if not ensembles:
        ops = sorted({n.op_type for n in graph.node})
        raise TreeShapError(f"no TreeEnsembleClassifier/TreeEnsembleRegressor node in the model (it has {ops}); "
                            "TreeSHAP explains tree ensembles only: use explain.method: occlusion")
    if len(ensembles) > 1:
        raise TreeShapError(f"the model has {len(ensembles)} tree ensemble nodes; TreeSHAP reads exactly one")
    node: onnx.NodeProto = ensembles[0]
    producers = {out: n for n in graph.node for out in n.output}
    inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    name = node.input[0]
    while name not in inputs:
        before = producers.get(name)
        if before is None or not _passes_through(before):
            what = "nothing" if before is None else f"a {before.op_type} node"
            raise TreeShapError(f"the tree ensemble's input {name!r} is computed by {what}, not the model input; "
                                "TreeSHAP explains the ensemble's own inputs: use explain.method: occlusion")
        name = before.input[0]
    return node


def _passes_through(node: onnx.NodeProto) -> bool:
    """An Identity, or a Cast to float or double (the values the trees compare are the input's)."""
    if node.op_type == "Identity":
        return True
    to = [a.i for a in node.attribute if a.name == "to"]
    return node.op_type == "Cast" and to in ([FLOAT], [DOUBLE])


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes by name; ``*_as_tensor`` ones replace their plain twins."""
    import onnx
    from onnx import numpy_helper

    attrs: dict[str, Any] = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, onnx.TensorProto):
            attrs[attribute.name.removesuffix("_as_tensor")] = numpy_helper.to_array(value).ravel()
        elif isinstance(value, bytes):
            attrs[attribute.name] = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            attrs[attribute.name] = [v.decode() for v in value]
        else:
            attrs[attribute.name] = value
    transform = attrs.get("post_transform", "NONE")
    if transform not in TRANSFORMS:
        raise TreeShapError(f"post_transform {transform} is not supported (only {', '.join(TRANSFORMS)})")
    return attrs


def _leaf_weights(op: str, attrs: dict[str, Any], column: int) -> tuple[dict[tuple[int, int], float], float]:
    """Per (tree id, node id), the leaf's weight for ``column``; and the constant added to the sum."""
    prefix = "class" if op == "TreeEnsembleClassifier" else "target"
    ids = list(attrs.get(f"{prefix}_ids", []))
    base = [float(v) for v in attrs.get("base_values", [])]
    if prefix == "class":
        target, sign, offset = _class_column(attrs, ids, base, column)
        scale = 1.0
    else:
        outputs = int(attrs.get("n_targets", 1))
        target, sign, offset, scale = _target_column(outputs, base, column, attrs)
    weights: dict[tuple[int, int], float] = {}
    keys = zip(attrs[f"{prefix}_treeids"], attrs[f"{prefix}_nodeids"], ids, attrs[f"{prefix}_weights"], strict=True)
    for tree, node, which, weight in keys:
        if which == target:
            key = (int(tree), int(node))
            weights[key] = weights.get(key, 0.0) + sign * scale * float(weight)
    return weights, offset


def _class_column(attrs: dict[str, Any], ids: list[int], base: list[float], column: int) -> tuple[int, float, float]:
    """(class id whose weights count, their sign, constant) for a classifier's column.

    A binary classifier whose weights all carry class 0 (skl2onnx's gradient boosting and random
    forests) has one score ``s = base_values[0] + sum of weights``, and ONNX Runtime writes
    ``[sigmoid(-s), sigmoid(s)]`` for LOGISTIC; for NONE, ``[1 - s, s]`` if no weight is negative
    (probabilities summed), else ``[-s, s]``. Column 1's raw output is s, column 0's the other."""
    classes = len(attrs.get("classlabels_int64s") or attrs.get("classlabels_strings") or [])
    if not 0 <= column < classes:
        raise TreeShapError(f"column {column} is not one of the model's {classes} classes")
    if classes == 2 and set(ids) <= {0}:
        if len(base) > 1:
            raise TreeShapError("a binary classifier with one score but two base_values: ambiguous in ONNX")
        score = base[0] if base else 0.0
        if column == 1:
            return 0, 1.0, score
        complement = attrs.get("post_transform", "NONE") == "NONE" and min(attrs["class_weights"], default=0) >= 0
        return 0, -1.0, (1.0 if complement else 0.0) - score
    if classes == 2 and len(base) == 2:
        raise TreeShapError("a binary classifier with weights for both classes and two base_values: "
                            "ONNX Runtime reads those inconsistently")
    return column, 1.0, base[column] if column < len(base) else 0.0


def _target_column(targets: int, base: list[float], column: int, attrs: dict[str, Any]
                   ) -> tuple[int, float, float, float]:
    """(target id, sign, constant, weight scale) for a regressor's column."""
    if not 0 <= column < targets:
        raise TreeShapError(f"column {column} is not one of the model's {targets} targets")
    aggregate = attrs.get("aggregate_function", "SUM")
    if aggregate not in ("SUM", "AVERAGE"):
        raise TreeShapError(f"aggregate_function {aggregate} is not a sum over trees: TreeSHAP cannot explain it")
    scale = 1.0 / len(set(attrs["nodes_treeids"])) if aggregate == "AVERAGE" else 1.0
    offset = base[column] if len(base) == targets else (base[0] if len(base) == 1 and targets == 1 else 0.0)
    return column, 1.0, offset, scale


def _leaves(attrs: dict[str, Any], weights: dict[tuple[int, int], float], n_features: int) -> Leaves:
    """Walk every tree from its root to the leaves that carry a weight."""
    nodes = _nodes(attrs)
    tested = [int(f) for f, m in zip(attrs["nodes_featureids"], nodes.modes, strict=True) if m != "LEAF"]
    if max(tested, default=0) >= n_features:
        raise TreeShapError(f"the trees test feature {max(tested)}, beyond the background's {n_features} columns")
    paths: list[tuple[float, list[tuple[int, bool]]]] = []
    for root in nodes.roots():
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(root, [])]
        while stack:
            index, path = stack.pop()
            if len(path) > len(nodes):
                raise TreeShapError(f"tree {nodes.keys[root][0]} has a cycle")
            if nodes.modes[index] == "LEAF":
                weight = weights.get(nodes.keys[index], 0.0)
                if weight != 0.0:
                    paths.append((weight, path))
                continue
            stack.append((nodes.child(index, True), [*path, (index, True)]))
            stack.append((nodes.child(index, False), [*path, (index, False)]))
    return _pad(paths, attrs, nodes.modes, n_features)


@dataclass
class _Nodes:
    keys: list[tuple[int, int]]
    modes: list[str]
    true: list[int]
    false: list[int]
    index: dict[tuple[int, int], int]

    def __len__(self) -> int:
        return len(self.keys)

    def child(self, index: int, true: bool) -> int:
        key = (self.keys[index][0], (self.true if true else self.false)[index])
        if key not in self.index:
            raise TreeShapError(f"tree {key[0]}: node {self.keys[index][1]} points to a missing node {key[1]}")
        return self.index[key]

    def roots(self) -> list[int]:
        """Per tree, the node no other node points to."""
        children = {(t, c) for (t, _), m, a, b in zip(self.keys, self.modes, self.true, self.false, strict=True)
                    if m != "LEAF" for c in (a, b)}
        roots = [i for i, key in enumerate(self.keys) if key not in children]
        if len(roots) != len({t for t, _ in self.keys}):
            raise TreeShapError("the trees are not well formed (not one root per tree)")
        return roots


def _nodes(attrs: dict[str, Any]) -> _Nodes:
    keys = [(int(t), int(n)) for t, n in zip(attrs["nodes_treeids"], attrs["nodes_nodeids"], strict=True)]
    modes = list(attrs["nodes_modes"])
    unknown = sorted(set(modes) - {*MODES, "LEAF"})
    if unknown:
        raise TreeShapError(f"node modes {unknown} are not supported")
    true = [int(v) for v in attrs["nodes_truenodeids"]]
    false = [int(v) for v in attrs["nodes_falsenodeids"]]
    return _Nodes(keys, modes, true, false, {key: i for i, key in enumerate(keys)})


def _pad(paths: list[tuple[float, list[tuple[int, bool]]]], attrs: dict[str, Any], modes: list[str],
         n_features: int) -> Leaves:
    """The leaves' paths as padded arrays, each condition in its feature's slot."""
    features = [int(v) for v in attrs["nodes_featureids"]]
    missing = [bool(v) for v in attrs.get("nodes_missing_value_tracks_true") or [0] * len(features)]
    nodes = sorted({node for _, path in paths for node, _ in path})
    test_of = {node: i for i, node in enumerate(nodes)}
    count, depth = len(paths), max((len(p) for _, p in paths), default=0)
    slots = max((len({features[i] for i, _ in p}) for _, p in paths), default=0)
    _check_size(count, slots)
    condition = np.full((depth, count), 2 * len(nodes), dtype=np.int64)
    bit = np.zeros((depth, count), dtype=np.min_scalar_type((1 << slots) - 1))
    slot_feature = np.full((count, slots), n_features, dtype=np.int64)
    for row, (_, path) in enumerate(paths):
        slot_of: dict[int, int] = {}
        for k, (node, took_true) in enumerate(path):
            slot = slot_of.setdefault(features[node], len(slot_of))
            condition[k, row] = test_of[node] + len(nodes) * took_true
            bit[k, row] = 1 << slot
            slot_feature[row, slot] = features[node]
    return Leaves(weight=np.array([w for w, _ in paths], dtype=np.float64),
                  test_feature=np.array([features[i] for i in nodes], dtype=np.int64),
                  test_mode=np.array([MODES.index(modes[i]) for i in nodes], dtype=np.int64),
                  test_threshold=_thresholds(attrs["nodes_values"])[nodes],
                  test_nan_true=np.array([missing[i] for i in nodes], dtype=bool),
                  condition=condition, bit=bit, slot_feature=slot_feature)


def _thresholds(values: Any) -> npt.NDArray[np.floating[Any]]:
    """float32, as ONNX Runtime compares them; ``nodes_values_as_tensor`` keeps its own type (double)."""
    return values if isinstance(values, np.ndarray) else np.asarray(values, dtype=np.float32)


def _check_size(leaves: int, slots: int) -> None:
    size = max(leaves * (1 << slots) * slots, (1 << (2 * slots)) * slots)
    if size > MAX_TABLE:
        raise TreeShapError(f"the trees are too deep for exact TreeSHAP: {leaves} leaves with up to {slots} "
                            f"features on a path need a table of {size:,} numbers (at most {MAX_TABLE:,}); "
                            "use explain.method: occlusion")


# The table


def _table(leaves: Leaves, background: Ints) -> Floats:
    """``[L * 2**D, D]``: per leaf and event pattern, each slot's Shapley value averaged over the
    background's patterns (``background``: ``[m, L]``)."""
    count, slots = len(leaves.weight), leaves.slots
    size = 1 << slots
    where = background + np.arange(count, dtype=np.int64)[None, :] * size
    shares = np.bincount(where.ravel(), minlength=count * size).reshape(count, size) / len(background)
    table = (shares @ _coefficients(slots).reshape(size, size * slots)).reshape(count, size, slots)
    table *= leaves.weight[:, None, None]
    return np.ascontiguousarray(table.reshape(count * size, slots))


def _coefficients(slots: int) -> Floats:
    """``[2**D, 2**D, D]``: at ``[pr, px, d]``, the Shapley value of slot d for a unit-weight leaf,
    background pattern pr and event pattern px (bit d set: that row satisfies slot d)."""
    size = 1 << slots
    pr, px = np.arange(size)[:, None], np.arange(size)[None, :]
    only_x, only_r = px & ~pr, pr & ~px
    bits = np.arange(slots)
    in_a = (only_x[..., None] >> bits) & 1  # [2**D, 2**D, D]
    in_b = (only_r[..., None] >> bits) & 1
    a, b = in_a.sum(axis=2), in_b.sum(axis=2)
    factorial = np.array([math.factorial(k) for k in range(2 * slots + 1)], dtype=np.float64)
    gain = factorial[np.maximum(a - 1, 0)] * factorial[b] / factorial[a + b]
    loss = factorial[a] * factorial[np.maximum(b - 1, 0)] / factorial[a + b]
    coefficients = in_a * gain[..., None] - in_b * loss[..., None]
    reachable = ((px | pr) == size - 1)[..., None]  # no slot that neither row satisfies
    return np.where(reachable, coefficients, 0.0).astype(np.float64)
