"""Progress lines for the hands-on commands: redrawn in place on a terminal, printed every
few seconds otherwise (logs, CI), so a long task always shows it is moving."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    def __init__(self, stream: TextIO | None = None, interval_s: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval_s = interval_s if interval_s is not None else (0.1 if self.tty else 5.0)
        self._last = 0.0 if self.tty else time.monotonic()  # a log gets its first line after an interval
        self._text = ""

    def update(self, text: str, force: bool = False) -> None:
        """Show ``text`` as the current progress (at most once per interval unless forced)."""
        self._text = text
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        if self.tty:
            self.stream.write(f"\r\x1b[2K{text}")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def above(self, line: str, out: TextIO | None = None) -> None:
        """Print a line of its own (to ``out``, default the progress stream) above the progress line."""
        target = out or self.stream
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
        target.write(line + "\n")
        target.flush()
        if self.tty and self._text:
            self.stream.write(self._text)
            self.stream.flush()

    def done(self, text: str = "") -> None:
        """Replace the progress line with a final one (or just remove it)."""
        self._text = ""
        if self.tty:
            self.stream.write(f"\r\x1b[2K{text}\n" if text else "\r\x1b[2K")
        elif text:
            self.stream.write(text + "\n")
        self.stream.flush()


def count(n: float) -> str:
    """``12,345``"""
    return f"{n:,.0f}"


def rate(n: float, seconds: float) -> str:
    """``1,234/s``"""
    return f"{n / seconds:,.0f}/s" if seconds > 0 else "-/s"
