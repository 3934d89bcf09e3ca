"""Scoring a bounded input with the worker's own pipeline, in chunks, resumably.

The input is read in chunks (``chunk_rows``), each scored in batches of the pipeline's size; a
chunk's predictions and dead letters are written and flushed, and only then is the progress
file (``<output>.progress.json``) updated: how many input rows are done and how long both files
were at that point. An interrupted run rerun with ``--resume`` cuts the files back to those
lengths, skips the rows done and goes on, so every row comes out exactly once. Memory holds one
chunk at a time whatever the input's size.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from worker.batch.files import OutFile, Row, cut_back
from worker.errors import UsageError
from worker.records import BatchResult, DeadLetter, InputMessage, Message, Output


class Scorer(Protocol):
    """What batch scoring needs of the pipeline (``worker.pipeline.pipeline.Pipeline``)."""

    def process(self, messages: Sequence[Message], degraded: bool = False) -> BatchResult: ...

    def process_records(self, records: list[dict[str, Any]], sources: Sequence[Message]) -> BatchResult: ...


class Sink(Protocol):
    def write(self, outputs: list[Output]) -> None: ...

    def flush(self) -> int:
        """Everything written is durable; returns a point to resume from (a file's size)."""

    def close(self) -> None: ...


@dataclass
class Progress:
    """How far a run got, as the progress file keeps it."""

    input: str
    input_size: int
    rows: int = 0
    scored: int = 0
    dead: int = 0
    output_at: int = 0
    dead_at: int = 0
    started: float = field(default_factory=time.time)

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def resumed(cls, path: Path, input_name: str, input_size: int) -> Progress:
        """The progress of an interrupted run of the same input; ``UsageError`` if there is none."""
        try:
            saved = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(f"cannot resume: no usable progress file {path} ({exc})") from exc
        if (saved.input, saved.input_size) != (input_name, input_size):
            raise UsageError(f"cannot resume: {path} is the progress of {saved.input} ({saved.input_size} bytes), "
                            f"not of {input_name} ({input_size} bytes)")
        return saved


class DeadLetterFile(OutFile):
    """Dead letters as JSON lines: where the row was (its number in a file; its topic, partition and
    offset in a topic range), stage, reason, error type, and what the row was (its bytes in base64,
    or its record)."""

    def __init__(self, path: Path, append_at: int | None = None) -> None:
        self.file = path.open("wb") if append_at is None else cut_back(path, append_at)

    def write(self, dead: Sequence[DeadLetter], records: dict[int, dict[str, Any]], from_topic: bool = False) -> None:
        lines = []
        for d in dead:
            row = d.message.offset() or 0
            value = d.message.value()
            lines.append(json.dumps({**_where(d.message, from_topic), "stage": d.stage, "reason": d.reason,
                                     "error_type": d.error_type,
                                     "value": base64.b64encode(value).decode() if value else None,
                                     "record": records.get(row)}, default=str))
        if lines:
            self.file.write(("\n".join(lines) + "\n").encode())


def _where(message: Message, from_topic: bool) -> dict[str, Any]:
    """A file's row is numbered (the pipeline's offset of it); a message is found by its topic, partition, offset."""
    if from_topic:
        return {"topic": message.topic(), "partition": message.partition(), "offset": message.offset()}
    return {"row": message.offset() or 0}


class BatchScorer:
    def __init__(self, scorer: Scorer, sink: Sink, dead: DeadLetterFile, progress: Progress, progress_path: Path | None,
                 batch_rows: int, chunk_rows: int, report: Callable[[Progress], None] = lambda p: None) -> None:
        self.scorer = scorer
        self.sink = sink
        self.dead = dead
        self.progress = progress
        self.progress_path = progress_path
        self.batch_rows = batch_rows
        self.chunk_rows = chunk_rows
        self.report = report

    def run(self, rows: Iterator[Row]) -> Progress:
        """Scores every row; the progress after the last chunk."""
        p = self.progress
        while chunk := list(islice(rows, self.chunk_rows)):
            for start in range(0, len(chunk), self.batch_rows):
                self._batch(chunk[start:start + self.batch_rows], p.rows + start)
            p.rows += len(chunk)
            p.output_at, p.dead_at = self.sink.flush(), self.dead.flush()
            if self.progress_path is not None:
                p.save(self.progress_path)
            self.report(p)
        return p

    def _batch(self, rows: list[Row], first: int) -> None:
        from_topic = bool(rows) and rows[0].message is not None
        if from_topic:
            result = self.scorer.process([r.message for r in rows if r.message is not None])
            records: dict[int, dict[str, Any]] = {}
        else:
            result, records = self._records(rows, first)
        self.sink.write(result.outputs)
        self.dead.write(result.dead_letters, records, from_topic)
        self.progress.scored += len(result.outputs)
        self.progress.dead += len(result.dead_letters)

    def _records(self, rows: list[Row], first: int) -> tuple[BatchResult, dict[int, dict[str, Any]]]:
        """Rows read as records go through the pipeline after decoding; those that are not records
        (bad JSON, a field of the wrong type) are dead letters of the decode stage."""
        good: list[dict[str, Any]] = []
        sources: list[Message] = []
        refused: list[DeadLetter] = []
        for n, row in enumerate(rows, first):
            source = InputMessage(row.line, None, "batch", 0, n)
            if row.record is None:
                refused.append(DeadLetter(source, "decode", row.problem or "not an event", row.error_type))
            else:
                good.append(row.record)
                sources.append(source)
        result = self.scorer.process_records(good, sources)
        result.dead_letters = refused + result.dead_letters
        kept = {s.offset() or 0: r for s, r in zip(sources, good, strict=True)} if result.dead_letters else {}
        return result, kept
