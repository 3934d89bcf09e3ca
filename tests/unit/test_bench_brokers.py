"""Which brokers the benchmark measures, and under what name its results file keeps each."""

from __future__ import annotations

import argparse
import subprocess
import sys

from bench.__main__ import brokers


def test_a_given_broker_is_named_by_its_address_not_as_tansu() -> None:
    assert brokers(argparse.Namespace(bootstrap="10.0.0.5:9092", broker=None)) == ["10.0.0.5:9092"]


def test_local_brokers_are_measured_in_the_order_asked_once_each_tansu_by_default() -> None:
    assert brokers(argparse.Namespace(bootstrap=None, broker=None)) == ["tansu"]
    assert brokers(argparse.Namespace(bootstrap=None, broker=["noida", "tansu", "noida"])) == ["noida", "tansu"]


def test_a_local_broker_and_a_given_one_at_once_is_refused_with_a_reason() -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--bootstrap", "127.0.0.1:1", "--broker", "noida"],
                          capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 2
    assert "give one of them" in done.stderr
