"""The librdkafka configurations: the worker's required settings win over user tuning, which wins
over the worker's defaults."""

from __future__ import annotations

from worker.kafka.config import consumer_config, producer_config


def test_consumer_waits_long_enough_for_a_broker_that_answers_fetches_at_the_end_of_the_wait() -> None:
    # tansu read nothing of a long log of small batches at 10 ms (bench.broker_quirks fetch-wait)
    config = consumer_config("b:9092", "g", {}, {})
    assert config["fetch.wait.max.ms"] == 100


def test_user_tuning_wins_over_defaults_but_not_over_required_settings() -> None:
    config = consumer_config("b:9092", "g", {"fetch.wait.max.ms": 10},
                             {"enable.auto.commit": True, "group.id": "other"})
    assert config["fetch.wait.max.ms"] == 10
    assert config["enable.auto.commit"] is False
    assert config["group.id"] == "g"


def test_producer_is_idempotent_with_all_acks_whatever_the_user_says() -> None:
    config = producer_config("b:9092", {}, {"acks": 1, "enable.idempotence": False, "linger.ms": 5})
    assert (config["acks"], config["enable.idempotence"], config["linger.ms"]) == ("all", True, 5)
