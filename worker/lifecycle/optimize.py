"""``worker models optimize``: a new version made with ONNX Runtime's offline graph optimisation
and, where the graph has MatMul/Gemm, dynamic int8 quantisation of their weights; measured
(size, speed, golden-vector accuracy) against the original, and validated like any version."""

from __future__ import annotations

import datetime
import hashlib
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.errors import WorkerError
from worker.inference import Model, OnnxModel
from worker.lifecycle.card import CARD_FILE, ModelCard, read_card, write_card
from worker.lifecycle.golden import GoldenProblem, compare, sample_inputs
from worker.lifecycle.repository import MODEL_FILE, ModelRepository
from worker.lifecycle.validation import ModelRefused, Policy, Signature, load_version

logger = logging.getLogger(__name__)

QUANTIZABLE = ("MatMul", "Gemm")


class OptimizeError(WorkerError):
    """The source version cannot be optimised."""


@dataclass
class Measure:
    size_bytes: int
    latency_ms: float
    """Median time of one batch of ``OptimizeReport.batch_size`` events."""
    golden_max_diff: float | None
    """Largest difference from the card's golden outputs (None without golden vectors)."""


@dataclass
class OptimizeReport:
    name: str
    source: str
    target: str
    path: Path
    batch_size: int
    steps: list[str]
    before: Measure
    after: Measure
    max_diff_from_source: float
    """Largest score difference between the two on sample inputs."""
    validation: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "target": self.target, "path": str(self.path),
                "batch_size": self.batch_size, "steps": self.steps, "before": vars(self.before),
                "after": vars(self.after), "max_diff_from_source": self.max_diff_from_source,
                "servable": not self.refused, "validation": self.validation, "refused": self.refused}


def matmul_nodes(path: Path) -> int:
    """How many MatMul/Gemm nodes the graph has (including subgraphs)."""
    try:
        import onnx
    except ImportError as exc:
        raise OptimizeError("worker models optimize needs the onnx package: "
                            "pip install 'inference-worker[optimize]'") from exc

    def count(graph: Any) -> int:
        total = 0
        for node in graph.node:
            total += node.op_type in QUANTIZABLE
            total += sum(count(a.g) for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
        return total

    return count(onnx.load(str(path), load_external_data=False).graph)


def graph_optimise(source: Path, target: Path) -> None:
    """ONNX Runtime's offline optimisation. 'Extended' (not 'all'): the saved graph must not
    depend on this machine's CPU layout, since other replicas load it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def quantise(source: Path, target: Path, scratch: Path) -> None:
    """Dynamic int8 quantisation after ONNX Runtime's recommended pre-processing (shape
    inference and basic optimisation; the symbolic pass needs sympy, which is not required)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = scratch / "prepared.onnx"
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)


def optimize(repository: ModelRepository, name: str, version: str, target: str | None, signature: Signature,
             policy: Policy, quantize: bool = True, batch_size: int = 256, runs: int = 30,
             golden_atol: float | None = None) -> OptimizeReport:
    """Writes ``<name>/<target>`` from ``<name>/<version>`` and reports on it; ``golden_atol``
    goes into the new card (``golden_tolerance``): the accuracy loss accepted for it."""
    source = repository.path(name, version)
    if not source.is_file():
        raise OptimizeError(repository.missing(name, version))
    target = target or repository.next_version(name)
    destination = source.parent.parent / target
    if destination.exists():
        raise OptimizeError(f"version {target} already exists ({destination})")
    with tempfile.TemporaryDirectory(prefix=f".optimize-{target}-", dir=source.parent.parent) as tmp:
        work = Path(tmp) / target
        work.mkdir()
        steps = _build(source, work / MODEL_FILE, Path(tmp), quantize)
        card = read_card(source)
        data = _card(card, name, version, target, source, steps)
        if golden_atol is not None:
            data["golden_tolerance"] = {"atol": golden_atol}
        write_card(work / CARD_FILE, data)
        work.rename(destination)
    logger.info("wrote %s v%s: %s", name, target, "; ".join(steps))
    return _report(repository, name, version, target, signature, policy, steps, batch_size, runs)


def _build(source: Path, target: Path, scratch: Path, quantize: bool) -> list[str]:
    steps = []
    base = source
    found = matmul_nodes(source)
    if quantize and found:
        base = scratch / "quantized.onnx"
        quantise(source, base, scratch)
        steps.append(f"dynamic int8 quantisation of the weights of {found} MatMul/Gemm node(s)")
    elif quantize:
        steps.append("no MatMul/Gemm nodes (tree ensembles have none), so no int8 quantisation")
    graph_optimise(base, target)
    steps.append("ONNX Runtime offline graph optimisation (extended)")
    return steps


def _card(card: ModelCard, name: str, source: str, target: str, path: Path, steps: list[str]) -> dict[str, Any]:
    import onnxruntime as ort

    data = dict(card.data)
    data.update({"name": data.get("name", name), "version": target})
    data["provenance"] = {
        "derived_from": {"name": name, "version": source, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
        "tool": "worker models optimize", "steps": steps, "onnxruntime": ort.__version__,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return data


def _report(repository: ModelRepository, name: str, source: str, target: str, signature: Signature,
            policy: Policy, steps: list[str], batch_size: int, runs: int) -> OptimizeReport:
    card = read_card(repository.path(name, source))
    old = OnnxModel(repository.path(name, source), name, source, policy.threads)
    new = OnnxModel(repository.path(name, target), name, target, policy.threads)
    feeds = sample_inputs(signature.inputs, batch_size, card, seed=1)
    before, after = (_measure(m, card, signature, policy, feeds, runs) for m in (old, new))
    score = signature.score_output
    old_out, new_out = (np.asarray(m.run(feeds, [score])[0], dtype=np.float64) for m in (old, new))
    report = OptimizeReport(name, source, target, repository.path(name, target), batch_size, steps, before, after,
                            float(np.max(np.abs(old_out - new_out))) if old_out.size else 0.0)
    try:
        report.validation = load_version(repository, name, target, signature, policy).notes
    except ModelRefused as exc:
        report.refused = exc.reasons
    return report


def _measure(model: Model, card: ModelCard, signature: Signature, policy: Policy, feeds: dict[str, np.ndarray],
             runs: int) -> Measure:
    outputs = list(signature.outputs)
    model.run(feeds, outputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.run(feeds, outputs)
        times.append((time.perf_counter() - start) * 1000)
    golden = None
    if card.golden:
        try:
            golden = compare(model, card.golden, signature.inputs, policy.golden_atol, policy.golden_rtol).max_diff
        except (GoldenProblem, WorkerError) as exc:  # reported by the validation that follows
            logger.warning("golden vectors of %s v%s: %s", model.name, model.version, exc)
    path = getattr(model, "path", None)
    return Measure(path.stat().st_size if isinstance(path, Path) else 0, statistics.median(times), golden)

