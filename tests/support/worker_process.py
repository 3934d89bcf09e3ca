"""The worker as a separate process, the way users run it: ``python -m worker run ...``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from tests.support.infra import repo_root, stop_process
from tests.support.kafka_io import Topics


class WorkerProcess:
    """``python -m worker run`` (or another long-running ``verb``: ``monitor``) on one config, with its
    log (stdout and stderr) in a file."""

    def __init__(self, config: Path, bootstrap: str, redis_url: str, topics: Topics, log_path: Path,
                 extra_args: tuple[str, ...] = (), verb: str = "run") -> None:
        self.log_path = log_path
        self.command = [sys.executable, "-m", "worker", verb, "--config", str(config),
                        "--bootstrap-servers", bootstrap, "--redis-url", redis_url,
                        "--input-topic", topics.input, "--output-topic", topics.output,
                        "--dlq-topic", topics.dlq, "--group-id", topics.group, *extra_args]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root()), env.get("PYTHONPATH")]))
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115  # closed in stop()
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=log_path.parent)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 60.0) -> None:
        """Until ``text`` appears in the log; fails early, with the log, if the worker exits."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if not self.alive():
                raise AssertionError(f"worker exited with {self.proc.returncode} before logging {text!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker did not log {text!r} within {timeout_s:.0f}s")
            time.sleep(0.05)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 30.0) -> int:
        return self.proc.wait(timeout_s)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; returns the exit code."""
        code = stop_process(self.proc, timeout_s)
        self._log.close()
        return code


StartWorker = Callable[..., WorkerProcess]
"""The ``start_worker`` fixture: ``start(config, topics, redis_url, *extra_args)``."""
