"""Commands for trying the worker by hand: topics, example events, features, tailing."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_commands(sub: Any, config_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Registered by the CLI; filled in below."""
