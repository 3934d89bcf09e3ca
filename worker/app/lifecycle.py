"""The model lifecycle from settings: validation policy, the control channel, the observers."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from worker.config.compile import Compiled
from worker.config.settings import WorkerSettings
from worker.errors import StartupError
from worker.kafka.confluent import ConfluentAdmin
from worker.kafka.port import Producer
from worker.lifecycle.card import CardError, read_card
from worker.lifecycle.control import (
    ControlError,
    ControlLoop,
    ControlTable,
    FileControlTable,
    KafkaControlTable,
    ensure_control_topic,
)
from worker.lifecycle.guard import CanaryBounds, CanaryGuard
from worker.lifecycle.manager import ModelManager
from worker.lifecycle.metrics import ModelMetrics, serving_changed
from worker.lifecycle.repository import ModelRepository
from worker.lifecycle.shadow import ShadowPublisher
from worker.lifecycle.state import model_key
from worker.lifecycle.validation import ModelRefused, Policy, Signature, Validated, load_version, validate
from worker.runner.observer import Observer
from worker.serving import ModelSlot

logger = logging.getLogger(__name__)


def replica_id(settings: WorkerSettings) -> str:
    return settings.lifecycle.replica_id or f"{socket.gethostname()}-{os.getpid()}"


def policy(settings: WorkerSettings) -> Policy:
    lc = settings.lifecycle
    sizes = sorted({1, settings.batch.max_events, *lc.warmup_batch_sizes})
    return Policy(lc.golden_atol, lc.golden_rtol, tuple(sizes), settings.model.threads)


def signature(compiled: Compiled) -> Signature:
    return Signature.of(compiled.tensors, compiled.builder, compiled.model)


def check_configured_model(settings: WorkerSettings, compiled: Compiled) -> list[str]:
    """Validates the configured model beyond its signature (golden vectors, warm-up) before
    anything connects; raises ``StartupError`` with the reasons."""
    model = compiled.model
    try:
        card = read_card(settings.model.onnx_path())
        notes = validate(model, card, signature(compiled), policy(settings))
    except (CardError, ModelRefused) as exc:
        raise StartupError(f"model {model.name} v{model.version} cannot serve: {exc}") from exc
    logger.info("model %s v%s (version from %s) validated: %s", model.name, model.version, compiled.version_from,
                "; ".join(notes))
    return notes


def version_loader(settings: WorkerSettings, compiled: Compiled) -> Callable[[str], Validated]:
    assert settings.model.repository is not None
    repository = ModelRepository(settings.model.repository)
    sig, pol, name = signature(compiled), policy(settings), compiled.model.name
    return lambda version: load_version(repository, name, version, sig, pol)


def open_table(settings: WorkerSettings, client_config: dict[str, Any]) -> ControlTable | None:
    """The control channel, the topic created if missing; None when none is configured."""
    lc = settings.lifecycle
    if lc.control_topic:
        ensure_control_topic(ConfluentAdmin({**client_config, "log_level": 3}), lc.control_topic)
        return KafkaControlTable(lc.control_topic, client_config)
    if lc.control_file:
        return FileControlTable(lc.control_file)
    return None


def start(settings: WorkerSettings, compiled: Compiled, slot: ModelSlot, producer: Producer,
          client_config: dict[str, Any]) -> list[Observer]:
    """Observers for model metrics and shadow predictions; with a control channel, reads it to
    its end, applies the desired state found there, and starts the control thread."""
    observers: list[Observer] = [ModelMetrics()]
    lc = settings.lifecycle
    if lc.shadow_topic:
        observers.append(ShadowPublisher(producer, lc.shadow_topic))
    try:
        control = _control(settings, compiled, slot, client_config)
    except ControlError as exc:
        raise StartupError(str(exc)) from exc
    if control is None:
        serving_changed(slot.serving)
        return observers
    loop, manager = control
    bounds = CanaryBounds(lc.canary.max_error_rate, lc.canary.max_latency_ms, lc.canary.min_events,
                          lc.canary.window_batches)
    return [*observers, CanaryGuard(bounds, _aborter(manager, loop)), _StopControl(loop)]


def _control(settings: WorkerSettings, compiled: Compiled, slot: ModelSlot,
             client_config: dict[str, Any]) -> tuple[ControlLoop, ModelManager] | None:
    lc = settings.lifecycle
    table = open_table(settings, client_config)
    if table is None:
        return None
    manager = ModelManager(slot, replica_id(settings), version_loader(settings, compiled), bool(lc.shadow_topic))
    loop = ControlLoop(table, manager.name, manager.replica, manager.apply)
    try:
        desired = table.catch_up(lc.catch_up_timeout_s).get(model_key(manager.name))
    except ControlError:
        table.close()
        raise
    if desired is None or loop.handle(desired) is None:
        loop.publish_status(manager.status())
    loop.start()
    return loop, manager


def _aborter(manager: ModelManager, loop: ControlLoop) -> Callable[[str, str], None]:
    def abort(version: str, reason: str) -> None:
        desired = manager.abort_canary(version, reason)
        if desired is not None:
            loop.publish(model_key(manager.name), desired.to_json())
    return abort


class _StopControl(Observer):
    def __init__(self, loop: ControlLoop) -> None:
        self.loop = loop

    def stopped(self) -> None:
        self.loop.stop()
