"""Waiting for a dependency at startup: the same words, pace and failure for Kafka and Redis.

The first failed attempt is logged at once, naming the address, the attempt and the time left;
after that one line at most every ``report_every_s`` while the wait goes on (attempts back off
from half a second to five). When time runs out, ``StartupError`` says what was tried and the
last problem, once. Each attempt is short, so Ctrl-C is never held up for long.

A signal while starting only calls ``request_stop`` (a handler that raised could do so inside a
Kafka client's callback, which would swallow the exception); the wait in progress, or the next
one, notices within a tenth of a second and raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from worker.errors import StartupError

logger = logging.getLogger(__name__)

_STEP_S = 0.1
_why: list[str] = []  # the stop requests so far: one is enough


def request_stop(why: str) -> None:
    """Stop starting (called from a signal handler: it only records the request)."""
    _why.append(why)


def check_stop() -> None:
    """``KeyboardInterrupt`` (after one "stopping" line) if a stop was requested."""
    if _why:
        logger.warning("stopping: %s while starting", _why[0])
        raise KeyboardInterrupt


def _pause(seconds: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    """Sleep in short steps, so a stop requested meanwhile is noticed at once."""
    end = clock() + seconds
    while (left := end - clock()) > 0:
        check_stop()
        sleep(min(left, _STEP_S))
    check_stop()


REFUSALS = {"server_certificate": "TLS handshake failed: its certificate could not be verified",
            "client_certificate": "TLS handshake failed: it does not accept this client's certificate",
            "client_key": "this client's certificate or key cannot be loaded",
            "credentials": "authentication failed",
            "permissions": "it does not allow this user a command the worker needs"}
"""What each kind of refusal means, in words: a dependency that turns the worker away for its
configuration is not waited for (no retry can mend it)."""


def refusal_line(who: str, refused: str, reason: str, settings_of: Mapping[str, str]) -> str:
    """One line for a refused connection: who, what went wrong, the settings to check, the detail."""
    check = f"; check {settings_of[refused]}" if refused in settings_of else ""
    return f"{who}: {REFUSALS.get(refused, refused)}{check} ({reason})"


def wait_until_ready(problem: Callable[[], str | None], what: str, where: str, timeout_s: float,
                     report_every_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> int:
    """Call ``problem`` until it returns None (ready); returns how many attempts it took."""
    start = clock()
    attempt, delay, reported = 0, 0.5, -report_every_s
    while True:
        check_stop()
        attempt += 1
        found = problem()
        now = clock()
        if found is None:
            logger.info("%s is ready at %s", what, where, extra={"attempts": attempt})
            return attempt
        left = timeout_s - (now - start)
        if left <= 0:
            raise StartupError(f"{what} at {where} not ready after {timeout_s:.0f}s ({attempt} attempts): {found}")
        if now - reported >= report_every_s:
            reported = now
            logger.warning("waiting for %s at %s (attempt %d, giving up in %.0fs): %s", what, where, attempt, left,
                           found)
        _pause(min(delay, left), clock, sleep)
        delay = min(delay * 2, 5.0)
