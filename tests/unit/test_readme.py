"""What README.md promises about messages and exit codes is what the worker does."""

from __future__ import annotations

import re
from pathlib import Path

from worker.cli import options
from worker.kafka.sink import Sink
from worker.records import DeadLetter, InputMessage

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def table_after(marker: str) -> list[list[str]]:
    """The rows (cells stripped of backticks) of the first Markdown table after ``marker``."""
    lines = README[README.index(marker):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_the_dead_letter_headers_are_the_ones_the_worker_writes() -> None:
    sink = Sink(lambda _: None, "out", "dlq", "group")  # type: ignore[arg-type,return-value]  # headers only
    message = InputMessage(b"x", b"k", "in", 2, 40, None, (1, 1_700_000_000_000))
    written = [name for name, _ in sink.dead_letter_headers(DeadLetter(message, "decode", "bad", "EOFError"), None)]

    documented = [row[0] for row in table_after("<!-- dead-letter-headers")]

    assert documented == written


def test_the_exit_codes_are_the_ones_the_command_line_returns() -> None:
    documented = {int(row[0]) for row in table_after("**Exit codes**")}
    in_help = {int(code) for code in re.findall(r"^  (\d+) ", options.EXIT_CODES, re.M)}
    returned = {0, 1, options.EXIT_CONFIG, options.EXIT_STARTUP, options.EXIT_FENCED, options.EXIT_INTERRUPTED}

    assert documented == in_help == returned
