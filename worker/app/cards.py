"""Model cards from settings: the card of any served version, read once."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from worker.config.compile import Compiled
from worker.config.settings import WorkerSettings
from worker.lifecycle.card import CardError, read_card
from worker.lifecycle.repository import ModelRepository

logger = logging.getLogger(__name__)


def card_of(settings: WorkerSettings, compiled: Compiled) -> Callable[[str, str], dict[str, Any]]:
    """The card of a model version (the repository's, or the configured file's), cached."""
    repository, configured = settings.model.repository, settings.model.path

    @functools.cache
    def card(name: str, version: str) -> dict[str, Any]:
        path = ModelRepository(repository).path(name, version) if repository else configured
        if path is None:
            return {}
        try:
            return read_card(path).data
        except CardError as exc:
            logger.warning("%s", exc)
            return {}

    return card
