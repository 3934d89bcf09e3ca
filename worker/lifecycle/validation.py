"""Validation before serving: a model version is served only if it loads, its signature fits
what the pipeline feeds and reads, it reproduces its card's golden vectors, and it runs at
the batch sizes in use (which also warms the session). Any failure refuses the version with
the reasons, and whatever serves now keeps serving."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from worker.codecs.schemas import a_or_an
from worker.errors import StartupError, WorkerError
from worker.inference import Model, OnnxModel
from worker.lifecycle.card import CardError, ModelCard, read_card
from worker.lifecycle.golden import FedInput, GoldenProblem, compare, sample_inputs
from worker.lifecycle.repository import ModelRepository
from worker.pipeline.assembly import TensorSpec
from worker.pipeline.output import OutputBuilder

logger = logging.getLogger(__name__)


class ModelRefused(WorkerError):
    """A model version failed validation; ``reasons`` says why, one line each."""

    def __init__(self, name: str, version: str, reasons: list[str]) -> None:
        self.name, self.version, self.reasons = name, version, reasons
        super().__init__(f"{name} v{version} refused: {'; '.join(reasons)}")


@dataclass(frozen=True)
class Signature:
    """What the serving pipeline feeds a model and reads from it; every version must fit it."""

    inputs: tuple[FedInput, ...]
    outputs: tuple[str, ...]
    score_output: str
    score_column: int | None
    output_kinds: tuple[tuple[str, str], ...] = ()
    """(output, kind) the serving model returns: a tensor or a ZipMap sequence of maps, which
    every version must keep (a batch may merge two versions' outputs)."""
    threshold: float | None = None
    """The configuration's label threshold, which labels use whatever version scores."""

    @classmethod
    def of(cls, tensors: Sequence[TensorSpec], builder: OutputBuilder, model: Model | None = None) -> Signature:
        needed = builder.model_outputs()
        kinds = tuple((o.name, _kind(o.dtype)) for o in model.outputs if o.name in needed) if model else ()
        return cls(tuple(FedInput(t.name, t.dtype, t.rank, len(t.columns)) for t in tensors),
                   tuple(needed), builder.score.output, builder.score.column, kinds, builder.score.threshold)

    def problems(self, model: Model) -> list[str]:
        declared = {t.name: t for t in model.inputs}
        fed = {f.name: f for f in self.inputs}
        problems = [f"model input '{name}' is not fed by the configuration (model.inputs has: {', '.join(fed)})"
                    for name in declared if name not in fed]
        for f in self.inputs:
            info = declared.get(f.name)
            if info is None:
                problems.append(f"the model has no input '{f.name}' (it has: {', '.join(declared)})")
                continue
            rank = 1 if len(info.shape) == 1 else 2
            if info.dtype != f.dtype:
                problems.append(f"input '{f.name}' is {info.dtype} but the configuration feeds {f.dtype}")
            elif rank != f.rank:
                problems.append(f"input '{f.name}' is {_shape(rank, info.width)} but the configuration feeds "
                                f"{_shape(f.rank, f.width)}")
            elif rank == 2 and info.width is not None and info.width != f.width:
                problems.append(f"input '{f.name}' is [N, {info.width}] but the configuration feeds "
                                f"{f.width} columns")
        return problems + self._output_problems(model)

    def _output_problems(self, model: Model) -> list[str]:
        outputs = {o.name: o for o in model.outputs}
        problems = [f"the model has no output '{name}' (it has: {', '.join(outputs)})"
                    for name in self.outputs if name not in outputs]
        for name, kind in self.output_kinds:
            if name in outputs and _kind(outputs[name].dtype) != kind:
                problems.append(f"output '{name}' is {a_or_an(_kind(outputs[name].dtype))}, but the serving "
                                f"model's is {a_or_an(kind)}")
        score = outputs.get(self.score_output)
        if score is not None and self.score_column is not None and score.width is not None \
                and not 0 <= self.score_column < score.width:
            problems.append(f"the score is column {self.score_column} of '{self.score_output}', "
                            f"but that output has {score.width} columns")
        return problems


def _kind(dtype: str) -> str:
    return "sequence of maps (ZipMap)" if dtype.startswith("seq") else "tensor"


def _shape(rank: int, width: int | None) -> str:
    return "[N]" if rank == 1 else f"[N, {width if width is not None else '?'}]"


@dataclass(frozen=True)
class Policy:
    """How strictly versions are checked, and the batch sizes they are warmed at."""

    golden_atol: float = 1e-5
    golden_rtol: float = 1e-5
    warmup_sizes: tuple[int, ...] = (1,)
    threads: int = 0


@dataclass
class Validated:
    """A model that passed, with what was checked (one line each, for logs and the CLI)."""

    model: Model
    card: ModelCard
    notes: list[str]


def validate(model: Model, card: ModelCard, signature: Signature, policy: Policy) -> list[str]:
    """Every check but loading; returns notes on what was checked, raises ``ModelRefused``."""
    reasons = signature.problems(model) + _card_problems(model, card)
    if reasons:
        raise ModelRefused(model.name, model.version, reasons)
    notes = ["signature fits the configuration (" + ", ".join(f"{f.name} {_shape(f.rank, f.width)} {f.dtype}"
                                                                 for f in signature.inputs) + ")"]
    notes.append(_golden_note(model, card, signature, policy))
    notes.append(_warm(model, card, signature, policy))
    return notes + _threshold_notes(model, card, signature)


def _threshold_notes(model: Model, card: ModelCard, signature: Signature) -> list[str]:
    """Not a refusal: the operating point is the configuration's, but a card trained for another
    one usually means the configuration should change with the version."""
    if signature.threshold is None or card.threshold is None or card.threshold == signature.threshold:
        return []
    logger.warning("model %s v%s: its card's threshold %g differs from model.threshold %g, which labels use",
                   model.name, model.version, card.threshold, signature.threshold)
    return [f"threshold: the card says {card.threshold:g}; labels use model.threshold {signature.threshold:g}"]


def _card_problems(model: Model, card: ModelCard) -> list[str]:
    """The card must describe this file: a card copied beside another model is caught here."""
    declared = {t.name: t for t in model.inputs}
    problems = []
    for decl in card.inputs:
        info = declared.get(decl.name)
        if info is None:
            problems.append(f"the model card describes input '{decl.name}', which the model does not have "
                            f"(it has: {', '.join(declared)})")
        elif decl.shape and len(decl.shape) == 2 and decl.shape[1] is not None and info.width is not None \
                and decl.shape[1] != info.width:
            problems.append(f"the model card describes input '{decl.name}' as [N, {decl.shape[1]}] but the model "
                            f"has [N, {info.width}]")
    return problems


def _golden_note(model: Model, card: ModelCard, signature: Signature, policy: Policy) -> str:
    if not card.data:
        return "no model card beside the file (its checks, golden vectors included, skipped)"
    if not card.golden:
        logger.warning("model %s v%s: its card has no golden vectors, so that check is skipped "
                    "(`worker models golden` writes some from a trusted version)", model.name, model.version)
        return "golden vectors: none in the model card (check skipped)"
    atol = card.golden_atol if card.golden_atol is not None else policy.golden_atol
    try:
        result = compare(model, card.golden, signature.inputs, atol, policy.golden_rtol)
    except GoldenProblem as exc:
        raise ModelRefused(model.name, model.version, [str(exc)]) from exc
    except WorkerError as exc:  # the model fails on its own golden inputs
        raise ModelRefused(model.name, model.version, [f"fails on its golden vectors: {exc}"]) from exc
    if result.problems:
        raise ModelRefused(model.name, model.version, result.problems)
    return f"golden vectors: {result.checked} reproduced (largest difference {result.max_diff:.2g})"


def _warm(model: Model, card: ModelCard, signature: Signature, policy: Policy) -> str:
    timings = []
    for size in policy.warmup_sizes:
        feeds = sample_inputs(signature.inputs, size, card, seed=size)
        start = time.perf_counter()
        try:
            model.run(feeds, list(signature.outputs))
        except WorkerError as exc:
            raise ModelRefused(model.name, model.version, [f"fails at batch size {size}: {exc}"]) from exc
        timings.append(f"{size} ({(time.perf_counter() - start) * 1000:.1f} ms)")
    return "warmed at batch sizes " + ", ".join(timings)


def load_file(path: Path, name: str, version: str, signature: Signature, policy: Policy) -> Validated:
    """Loads and validates one model file; raises ``ModelRefused``."""
    try:
        card = read_card(path)
    except CardError as exc:
        raise ModelRefused(name, version, [str(exc)]) from exc
    if path.is_file() and path.stat().st_size == 0:
        raise ModelRefused(name, version, [f"{path} is empty"])
    try:
        model = OnnxModel(path, name, version, policy.threads)
    except StartupError as exc:
        raise ModelRefused(name, version, [str(exc)]) from exc
    return Validated(model, card, validate(model, card, signature, policy))


def load_version(repository: ModelRepository, name: str, version: str, signature: Signature,
                 policy: Policy) -> Validated:
    """Loads and validates ``<repository>/<name>/<version>``; raises ``ModelRefused``."""
    if not repository.exists(name, version):
        raise ModelRefused(name, version, [repository.missing(name, version)])
    validated = load_file(repository.path(name, version), name, version, signature, policy)
    if validated.card.version not in (None, version):
        logger.warning("model %s v%s: its card says version %s", name, version, validated.card.version)
    return validated
