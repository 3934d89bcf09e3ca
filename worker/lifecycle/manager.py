"""Applies desired states to this replica's serving slot."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from worker.inference import Model
from worker.lifecycle import metrics
from worker.lifecycle.state import DesiredState, Refusal, ReplicaStatus, abort_canary
from worker.lifecycle.validation import ModelRefused, Validated
from worker.serving import ModelSlot, Serving

logger = logging.getLogger(__name__)


class ModelManager:
    """Turns desired states into what this replica serves.

    ``apply`` loads and validates every version a state names that is not loaded yet (in the
    caller's thread: the control thread, never the batch loop), then swaps the slot's
    ``Serving`` in one assignment, which the loop picks up at its next batch. A state naming
    any version that fails validation is refused whole, and what serves now keeps serving.
    Loaded versions are kept while they serve, plus the previous active one (an instant rollback).
    """

    def __init__(self, slot: ModelSlot, replica: str, load: Callable[[str], Validated],
                 shadow_enabled: bool = True) -> None:
        self.slot = slot
        self.replica = replica
        self.name = slot.model.name
        self._load = load
        self._shadow_enabled = shadow_enabled
        self._models: dict[str, Model] = {slot.model.version: slot.model}
        self._lock = threading.Lock()
        self.desired = DesiredState(self.name, 0, slot.model.version)
        self.refused: Refusal | None = None
        self._aborted: tuple[int, str] | None = None  # (revision, version) of a canary stopped here
        metrics.serving_changed(slot.serving)

    def status(self) -> ReplicaStatus:
        with self._lock:
            d = self.desired
            return ReplicaStatus(self.replica, self.name, d.revision, d.active, d.canary, d.canary_share, d.shadow,
                                 self.refused)

    def apply(self, desired: DesiredState) -> ReplicaStatus:
        try:
            models = {version: self._model(version) for version in desired.versions()}
            if desired.shadow is not None and not self._shadow_enabled:
                raise ModelRefused(self.name, desired.shadow, ["no lifecycle.shadow_topic is configured, so its "
                                                               "predictions would have nowhere to go"])
        except ModelRefused as exc:
            with self._lock:
                self.refused = Refusal(desired.revision, exc.version, exc.reasons)
            metrics.refused(self.name, exc.version)
            logger.error("refused revision %d (%s); still serving %s: %s", desired.revision, desired.describe(),
                         self.slot.serving.describe(), "; ".join(exc.reasons))
            return self.status()
        with self._lock:
            desired = self._without_aborted_canary(desired)
            serving = Serving(models[desired.active], models[desired.canary] if desired.canary else None,
                              desired.canary_share, models[desired.shadow] if desired.shadow else None,
                              desired.revision)
            previous = self.slot.set(serving)
            self.desired, self.refused = desired, None
            self._evict(previous.active)
        if serving != previous:
            logger.info("serving %s from the next batch (revision %d, %s%s)", serving.describe(), desired.revision,
                        desired.command, f": {desired.reason}" if desired.reason else "")
        metrics.serving_changed(serving)
        return self.status()

    def _without_aborted_canary(self, desired: DesiredState) -> DesiredState:
        """An older state may still name a canary this replica has rolled back: not again."""
        if self._aborted is not None and desired.revision < self._aborted[0] and desired.canary == self._aborted[1]:
            return dataclasses.replace(desired, canary=None, canary_share=0.0)
        return desired

    def abort_canary(self, version: str, reason: str) -> DesiredState | None:
        """Stops the canary ``version`` at once (from the batch loop); returns the new desired
        state for the caller to publish, so that every replica stops it, or None if it is gone."""
        with self._lock:
            serving = self.slot.serving
            if serving.canary is None or serving.canary.version != version:
                return None
            self.slot.set(dataclasses.replace(serving, canary=None, canary_share=0.0))
            self.desired = abort_canary(self.desired, self.replica, reason)
            self._aborted = (self.desired.revision, version)
        logger.error("canary v%s rolled back: %s", version, reason)
        metrics.canary_rolled_back(self.name, version)
        metrics.serving_changed(self.slot.serving)
        return self.desired

    def _model(self, version: str) -> Model:
        model = self._models.get(version)
        if model is None:
            validated = self._load(version)
            logger.info("model %s v%s validated: %s", self.name, version, "; ".join(validated.notes))
            model = self._models[version] = validated.model
        return model

    def _evict(self, previous_active: Model) -> None:
        keep = {*self.desired.versions(), previous_active.version}
        for version in [v for v in self._models if v not in keep]:
            del self._models[version]
