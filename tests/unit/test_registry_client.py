"""The Schema Registry client (confluent-kafka's, behind the worker's port) against a real HTTP(S)
registry on a loopback port: TLS with a CA, mutual TLS, basic and bearer auth, quoted subjects,
the registry's own reason in a refusal, schema references, and the settings that reach it."""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.certs import KEY_PASSWORD, Pki, make_pki
from tests.support.configs import changed, fraud_config, write_config
from tests.support.schema_registry import Refusal, SchemaRegistryServer
from worker.app.components import make_registry
from worker.codecs.avro import ConfluentAvroDecoder, PlainAvroEncoder
from worker.codecs.registry import SchemaNotFound, SchemaReference
from worker.codecs.registry_client import ConfluentSchemaRegistry, RegistryConnection
from worker.codecs.schemas import parse_schema
from worker.config.settings import load_settings
from worker.errors import ConfigError, RegistryRefused, RegistryUnavailable, StartupError
from worker.records import InputMessage

USER = {"type": "record", "name": "User", "namespace": "test", "fields": [
    {"name": "id", "type": "long"}, {"name": "name", "type": "string"}]}
ADDRESS = {"type": "record", "name": "Address", "namespace": "test", "fields": [
    {"name": "city", "type": "string"}, {"name": "country", "type": "string"}]}
CUSTOMER = {"type": "record", "name": "Customer", "namespace": "test", "fields": [
    {"name": "id", "type": "long"}, {"name": "home", "type": "test.Address"}]}  # Address by reference


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server() -> Iterator[SchemaRegistryServer]:
    with SchemaRegistryServer() as s:
        yield s


def client(url: str, **options: Any) -> ConfluentSchemaRegistry:
    return ConfluentSchemaRegistry(RegistryConnection(url, timeout_s=5.0, **options))


def test_registers_and_reads_a_schema_back(server: SchemaRegistryServer) -> None:
    registry = client(server.url)

    schema_id = registry.register("users-value", json.dumps(USER))

    assert json.loads(registry.get_schema(schema_id).text) == USER
    assert registry.get_schema(schema_id).references == ()
    assert registry.register("users-value", json.dumps(USER)) == schema_id


@pytest.mark.parametrize("subject", ["orders/v1-value", "payments value", "a/b c?d#e"])
def test_subjects_are_url_quoted(server: SchemaRegistryServer, subject: str) -> None:
    registry = client(server.url)

    registry.register(subject, json.dumps(USER))

    (path,) = [p for p in server.paths() if p.startswith("/subjects/")]
    quoted = path.removeprefix("/subjects/").split("/versions")[0]
    assert "/" not in quoted and " " not in quoted and "?" not in quoted and "#" not in quoted
    assert list(server.state.versions) == [subject]  # the registry got the subject back whole


@pytest.mark.parametrize(("status", "code", "message"), [
    (409, 409, "Schema being registered is incompatible with an earlier schema for subject \"users-value\""),
    (422, 42201, "Either the input schema or one its references is invalid"),
])
def test_a_refusal_carries_the_registrys_reason(server: SchemaRegistryServer, status: int, code: int,
                                                message: str) -> None:
    server.state.refusal = Refusal(status, code, message)

    with pytest.raises(RegistryRefused) as caught:
        client(server.url).register("users-value", json.dumps(USER))

    assert (caught.value.http_status, caught.value.error_code, caught.value.reason) == (status, code, message)
    assert f"error code {code}: {message}" in str(caught.value)
    assert "users-value" in str(caught.value)
    assert caught.value.__cause__ is not None


def test_an_unknown_id_is_a_lookup_failure(server: SchemaRegistryServer) -> None:
    with pytest.raises(SchemaNotFound, match="error code 40403: Schema not found"):
        client(server.url).get_schema(41)


def test_a_registry_in_trouble_is_unavailable_not_a_refusal(server: SchemaRegistryServer) -> None:
    server.state.failing = Refusal(503, 50301, "Service Unavailable")

    with pytest.raises(RegistryUnavailable, match="HTTP 503, error code 50301") as caught:
        client(server.url).get_schema(1)

    assert not isinstance(caught.value, RegistryRefused)


def test_an_unreachable_registry_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed

    with pytest.raises(RegistryUnavailable, match=f"http://\\*\\*\\*@127.0.0.1:{port} unreachable") as caught:
        client(f"http://svc:s3cret-in-url@127.0.0.1:{port}").get_schema(1)

    assert caught.value.__cause__ is not None
    assert "s3cret" not in str(caught.value)


# --- TLS ----------------------------------------------------------------------------------------

def test_tls_with_the_ca_works_and_a_wrong_ca_is_refused_clearly(pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path, "other")
    with SchemaRegistryServer(tls=(pki.server_cert, pki.server_key)) as server:
        schema_id = client(server.url, ca_location=str(pki.ca)).register("users-value", json.dumps(USER))

        with pytest.raises(RegistryUnavailable) as caught:
            client(server.url, ca_location=str(other.ca)).get_schema(schema_id)

    assert server.url.startswith("https://")
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert "avro.schema_registry_ca_location" in str(caught.value)


def test_mutual_tls_needs_the_client_certificate(pki: Pki) -> None:
    with SchemaRegistryServer(tls=(pki.server_cert, pki.server_key), client_ca=pki.ca) as server:
        with pytest.raises(RegistryUnavailable, match="unreachable"):
            client(server.url, ca_location=str(pki.ca)).register("users-value", json.dumps(USER))

        registry = client(server.url, ca_location=str(pki.ca), certificate_location=str(pki.client_cert),
                          key_location=str(pki.client_key), key_password=KEY_PASSWORD)
        schema_id = registry.register("users-value", json.dumps(USER))

        assert json.loads(registry.get_schema(schema_id).text) == USER


# --- authentication -----------------------------------------------------------------------------

def test_basic_auth(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with SchemaRegistryServer(basic=("svc", "s3cret-basic")) as server:
        assert client(server.url, username="svc", password="s3cret-basic").register("u", json.dumps(USER)) == 1

        with pytest.raises(RegistryRefused, match="HTTP 401, error code 40101: Unauthorized") as caught:
            client(server.url, username="svc", password="wrong-basic").get_schema(1)

    assert "wrong-basic" not in str(caught.value) and "s3cret" not in caplog.text
    assert "s3cret-basic" not in repr(RegistryConnection(server.url, "svc", "s3cret-basic"))


def test_bearer_auth(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with SchemaRegistryServer(bearer="tok-123") as server:
        assert client(server.url, bearer_token="tok-123").register("u", json.dumps(USER)) == 1

        with pytest.raises(RegistryRefused, match="HTTP 401"):
            client(server.url, bearer_token="tok-999").get_schema(1)
        with pytest.raises(RegistryRefused, match="HTTP 401"):
            client(server.url).get_schema(1)

    assert "tok-" not in caplog.text
    assert "tok-123" not in repr(RegistryConnection(server.url, bearer_token="tok-123"))


# --- schema references --------------------------------------------------------------------------

def test_a_schema_with_references_is_registered_and_read_back(server: SchemaRegistryServer) -> None:
    registry = client(server.url)
    registry.register("address-value", json.dumps(ADDRESS))
    customer_id = registry.register("customers-value", json.dumps(CUSTOMER),
                                    [SchemaReference("test.Address", "address-value", 1)])

    fetched = registry.get_schema(customer_id)

    assert [json.loads(t) for t in fetched.references] == [ADDRESS]
    assert server.state.by_id[customer_id].references == [
        {"name": "test.Address", "subject": "address-value", "version": 1}]


def test_events_written_with_a_referencing_schema_decode(server: SchemaRegistryServer) -> None:
    registry = client(server.url)
    registry.register("address-value", json.dumps(ADDRESS))
    customer_id = registry.register("customers-value", json.dumps(CUSTOMER),
                                    [SchemaReference("test.Address", "address-value", 1)])
    inline = {**CUSTOMER, "fields": [CUSTOMER["fields"][0], {"name": "home", "type": ADDRESS}]}
    record = {"id": 3, "home": {"city": "Gent", "country": "BE"}}
    value = struct.pack(">bI", 0, customer_id) + PlainAvroEncoder(parse_schema(inline))(record, InputMessage(None))

    decoded = ConfluentAvroDecoder(registry, parse_schema(inline))(value, InputMessage(value))

    assert decoded == record


# --- from the settings --------------------------------------------------------------------------

def test_the_app_passes_every_registry_setting(pki: Pki, tmp_path: Path) -> None:
    with SchemaRegistryServer(tls=(pki.server_cert, pki.server_key), client_ca=pki.ca,
                              bearer="tok-app") as server:
        settings = load_settings(write_config(tmp_path / "c.yaml", changed(fraud_config(), **{
            "avro.framing": "confluent", "avro.schema_registry_url": server.url,
            "avro.schema_registry_bearer_token": "tok-app",
            "avro.schema_registry_ca_location": str(pki.ca),
            "avro.schema_registry_certificate_location": str(pki.client_cert),
            "avro.schema_registry_key_location": pki.client_key.name,  # relative to the config file
            "avro.schema_registry_key_password": KEY_PASSWORD})))
        (tmp_path / pki.client_key.name).write_bytes(pki.client_key.read_bytes())

        schema_id = make_registry(settings).register("users-value", json.dumps(USER))

    assert server.state.by_id[schema_id].subject == "users-value"
    assert "tok-app" not in repr(settings) and KEY_PASSWORD not in repr(settings)


def test_an_unusable_client_key_fails_startup_naming_the_settings(pki: Pki, tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path / "c.yaml", changed(fraud_config(), **{
        "avro.framing": "confluent", "avro.schema_registry_url": "https://127.0.0.1:1",
        "avro.schema_registry_certificate_location": str(pki.client_cert),
        "avro.schema_registry_key_location": str(pki.client_key),
        "avro.schema_registry_key_password": "not-the-password"})))

    with pytest.raises(StartupError, match=r"avro\.schema_registry_key_password") as caught:
        make_registry(settings)

    assert "not-the-password" not in str(caught.value)


@pytest.mark.parametrize(("changes", "problem"), [
    ({"avro.schema_registry_username": "svc", "avro.schema_registry_bearer_token": "t"}, "not both"),
    ({"avro.schema_registry_key_location": "client.key"}, "needs schema_registry_certificate_location"),
])
def test_registry_settings_that_exclude_each_other(tmp_path: Path, changes: dict[str, Any], problem: str) -> None:
    path = write_config(tmp_path / "c.yaml", changed(fraud_config(), **{
        "avro.framing": "confluent", "avro.schema_registry_url": "https://registry:8081", **changes}))

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    assert [key for key, _ in caught.value.problems] == ["avro"]
    assert problem in str(caught.value) and "'t'" not in str(caught.value)
