"""Process helpers for the demo and the tests: parsing, waiting, stopping (with real processes)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from worker.devtools.local import LocalProcess, free_port, free_ports, kafka_address, port_open
from worker.errors import StartupError


@pytest.mark.parametrize(("servers", "expected"), [
    ("127.0.0.1:9092", ("127.0.0.1", 9092)),
    ("broker-1:19092,broker-2:19092", ("broker-1", 19092)),
    ("[::1]:9093", ("::1", 9093)),
    ("kafka", ("kafka", 9092)),
    ("PLAINTEXT://kafka:9094", ("kafka", 9094)),
])
def test_kafka_address_is_the_first_broker(servers: str, expected: tuple[str, int]) -> None:
    assert kafka_address(servers) == expected


def python(code: str, tmp_path: Path) -> LocalProcess:
    return LocalProcess("child", [sys.executable, "-u", "-c", code], tmp_path / "child.log")


def test_wait_for_log_and_port(tmp_path: Path) -> None:
    port = free_port()
    assert not port_open("127.0.0.1", port)
    code = (f"import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\n"
            "print('serving', flush=True)\ntime.sleep(60)")
    with python(code, tmp_path) as child:
        child.wait_for_log(r"^serving$", timeout_s=20)
        child.wait_for_port(port, timeout_s=20)
        assert child.running()
    assert not child.running()


def test_a_child_that_exits_early_is_reported_with_its_log(tmp_path: Path) -> None:
    child = python("print('cannot bind: address in use'); raise SystemExit(4)", tmp_path).start()
    with pytest.raises(StartupError, match=r"(?s)exited \(code 4\).*cannot bind: address in use"):
        child.wait_for_port(free_port(), timeout_s=20)
    child.stop()


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    code = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\ntime.sleep(60)")
    child = python(code, tmp_path).start()
    child.wait_for_log("ready")
    started = time.monotonic()
    assert child.stop(timeout_s=0.5) == -9
    assert time.monotonic() - started < 10 and not child.running()


def test_waiting_gives_up_after_the_timeout(tmp_path: Path) -> None:
    with python("import time; time.sleep(60)", tmp_path) as child, \
            pytest.raises(StartupError, match="not logging /never/ after 0s"):
        child.wait_for_log("never", timeout_s=0.2)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_free_ports_are_distinct_and_free() -> None:
    ports = free_ports(40)
    assert len(set(ports)) == 40
    assert not any(port_open("127.0.0.1", port) for port in ports)
