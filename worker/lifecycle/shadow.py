"""Shadow predictions to the shadow topic."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from worker.kafka.port import Producer
from worker.kafka.sink import produce_when_room
from worker.records import BatchResult, Delivery, Message
from worker.runner.observer import Observer

logger = logging.getLogger(__name__)


class ShadowPublisher(Observer):
    """Produces each batch's shadow predictions to the shadow topic, keyed like the published
    ones, with the worker's own producer: checkpoints flush them together with the outputs (and,
    with transactions, they commit together). A failed shadow delivery is counted and logged but
    never holds back the outputs."""

    def __init__(self, producer: Producer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.failed = 0

    def batch_done(self, batch: Sequence[Message], result: BatchResult, delivery: Delivery) -> None:
        for output in result.shadow_outputs:
            produce_when_room(self.producer, self.topic, output.value, output.key, self._delivered)

    def _delivered(self, err: object | None, msg: object) -> None:
        if err is not None:
            self.failed += 1
            if self.failed <= 10 or self.failed % 1000 == 0:
                logger.warning("shadow prediction not delivered to %s (%d so far): %s", self.topic, self.failed, err)
