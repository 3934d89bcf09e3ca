"""Refusals: a dependency turning the worker away for its configuration (a certificate, credentials)
is told apart from an outage, is not waited for, and is one line naming the settings; and the
least-privilege Redis user's ACL line. (The real servers' side is tests/integration/test_security.py.)"""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from worker.app.components import REDIS_REFUSALS
from worker.app.kafka import KAFKA_REFUSALS
from worker.app.tools import acl_setuser, glob_escape
from worker.config.settings import load_settings
from worker.errors import StartupError
from worker.features import redis_store
from worker.kafka.admin import wait_for_topics
from worker.kafka.confluent import fault_of
from worker.kafka.port import BrokerError, Fault

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("code, text, refused", [
    (KafkaError._SSL, "ssl://h:1/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify "
                      "failed: broker certificate could not be verified", "server_certificate"),
    (KafkaError._TRANSPORT, "ssl://h:1/bootstrap: Receive failed: error:0A00045C:SSL routines::tlsv13 alert "
                            "certificate required: SSL alert number 116", "client_certificate"),
    (KafkaError._TRANSPORT, "ssl://h:1/bootstrap: SSL handshake failed: tlsv1 alert unknown ca", "client_certificate"),
    (KafkaError._AUTHENTICATION, "SASL authentication error: SASL SCRAM authentication failed", "credentials"),
    (KafkaError._TRANSPORT, "Connect to ipv4#127.0.0.1:9 failed: Connection refused", ""),
    (KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down", ""),
])
def test_kafka_errors_are_refusals_or_outages(code: int, text: str, refused: str) -> None:
    assert fault_of(KafkaError(code, text)).refused == refused


class _Refusing:
    def __init__(self, fault: Fault) -> None:
        self.fault, self.calls = fault, 0

    def topics(self, timeout_s: float) -> dict[str, int]:
        self.calls += 1
        raise BrokerError(self.fault)


def test_a_refusing_broker_is_not_waited_for_and_the_line_names_the_settings() -> None:
    metadata = _Refusing(Fault("Broker transport failure; last client error: certificate verify failed", "_SSL",
                               refused="server_certificate"))
    started = time.monotonic()
    with pytest.raises(StartupError) as failed:
        wait_for_topics(metadata, ["t"], 30.0, "h:9093", KAFKA_REFUSALS)
    assert metadata.calls == 1 and time.monotonic() - started < 1
    assert str(failed.value) == ("Kafka at h:9093: TLS handshake failed: its certificate could not be verified; "
                                 "check kafka.ssl_ca_location (Broker transport failure; last client error: "
                                 "certificate verify failed)")


def test_an_outage_is_still_waited_for() -> None:
    metadata = _Refusing(Fault("Broker transport failure", "_TRANSPORT"))
    with pytest.raises(StartupError, match="not ready after 1s"):
        wait_for_topics(metadata, ["t"], 1.0, "h:9092", KAFKA_REFUSALS)
    assert metadata.calls >= 2


@pytest.mark.parametrize("exc, refused", [
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), "server_certificate"),
    (ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca"), ""),  # no reason attribute set
    (ConnectionRefusedError(111, "Connection refused"), ""),
])
def test_redis_errors_are_refusals_or_outages(exc: Exception, refused: str) -> None:
    assert redis_store._refused(exc) == refused


def test_an_openssl_alert_about_our_certificate_is_a_client_certificate_refusal() -> None:
    alert = ssl.SSLError(1, "tlsv1 alert unknown ca")
    alert.reason = "TLSV1_ALERT_UNKNOWN_CA"  # what OpenSSL sets on a real one
    assert redis_store._refused(alert) == "client_certificate"


@pytest.mark.parametrize("reply, refused", [
    ("WRONGPASS invalid username-password pair or user is disabled.", "credentials"),
    ("ERR AUTH <password> called without any password configured for the default user.", "credentials"),
    ("NOPERM this user has no permissions to run the 'select' command", "permissions"),
])
def test_the_setup_replies_that_are_refusals(reply: str, refused: str) -> None:
    is_auth = redis_store._is_auth_error(reply)
    assert ("credentials" if is_auth else "permissions") == refused


def test_every_refusal_names_settings_for_redis_and_kafka() -> None:
    assert set(REDIS_REFUSALS) >= {"server_certificate", "client_certificate", "credentials", "client_key"}
    assert set(KAFKA_REFUSALS) == {"server_certificate", "client_certificate", "credentials"}


def test_the_workers_acl_reads_its_entities_and_keeps_its_drift_history() -> None:
    settings = load_settings(REPO / "deploy" / "config" / "fraud-example.yaml")
    line = acl_setuser(settings, "worker")
    assert line == ("ACL SETUSER worker reset on ~fraud:card:* ~fraud:merchant:* ~fraud:device:* "
                    "~monitor:fraud-example:* +ping +hmget +set +xadd")
    writer = acl_setuser(settings, "loader", writer=True)
    assert writer.endswith("~fraud:device:* +ping +hset +del") and ">" not in writer, "no password is printed"


def test_key_templates_become_literal_globs() -> None:
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
    settings = load_settings(REPO / "deploy" / "config" / "fraud-example.yaml",
                             {"redis": {"url": "redis://127.0.0.1:6379/2"}, "monitoring": {"drift": False}})
    assert acl_setuser(settings, "w") == ("ACL SETUSER w reset on ~fraud:card:* ~fraud:merchant:* ~fraud:device:* "
                                          "+ping +hmget +select")
