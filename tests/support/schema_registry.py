"""A small Confluent Schema Registry for tests: a real HTTP(S) server on a free loopback port with the
few REST endpoints the worker's client calls, optional basic or bearer auth, optional TLS (mutual
when a client CA is given), and a mode that refuses registrations the way the registry does.

Endpoints: ``POST /subjects/{subject}/versions``, ``GET /schemas/ids/{id}``,
``GET /subjects/{subject}/versions/{version|latest}``. Every request's raw path is kept in
``requests`` so that tests can see how subjects were quoted on the wire.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass
class Registered:
    id: int
    subject: str
    version: int
    schema: str
    references: list[dict[str, Any]]


@dataclass
class Refusal:
    """What the registry answers to every registration while set (Confluent's error body)."""

    status: int = 409
    error_code: int = 409
    message: str = "Schema being registered is incompatible with an earlier schema for subject"


@dataclass
class RegistryState:
    versions: dict[str, list[Registered]] = field(default_factory=dict)
    by_id: dict[int, Registered] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, raw path)
    refusal: Refusal | None = None  # answers every registration
    failing: Refusal | None = None  # answers every request (a registry in trouble: 500, 503, ...)
    basic: tuple[str, str] | None = None
    bearer: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, subject: str, schema: str, references: list[dict[str, Any]]) -> Registered:
        with self.lock:
            for known in self.by_id.values():
                if json.loads(known.schema) == json.loads(schema) and known.references == references:
                    break
            else:
                known = Registered(len(self.by_id) + 1, subject, 0, schema, references)
                self.by_id[known.id] = known
            history = self.versions.setdefault(subject, [])
            if not any(v.id == known.id for v in history):
                history.append(Registered(known.id, subject, len(history) + 1, schema, references))
            return next(v for v in history if v.id == known.id)


class SchemaRegistryServer:
    """Start it, use ``url``, ``stop()`` it (or use it as a context manager)."""

    def __init__(self, tls: tuple[Path, Path] | None = None, client_ca: Path | None = None,
                 basic: tuple[str, str] | None = None, bearer: str | None = None) -> None:
        self.state = RegistryState(basic=basic, bearer=bearer)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            if client_ca is not None:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(client_ca)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="schema-registry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> SchemaRegistryServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def paths(self) -> list[str]:
        return [path for _, path in self.state.requests]


class _Handler(BaseHTTPRequestHandler):
    state: RegistryState

    def log_message(self, format: str, *args: Any) -> None:  # the base class names it so
        pass  # quiet: the tests read ``requests`` instead

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        self.state.requests.append((method, self.path))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.state.failing is not None:
            self._error(self.state.failing.status, self.state.failing.error_code, self.state.failing.message)
            return
        if not self._authorised():
            self._error(401, 40101, "Unauthorized")
            return
        path = urlsplit(self.path).path
        if method == "POST" and (m := re.fullmatch(r"/subjects/([^/]+)/versions", path)):
            self._register(unquote(m.group(1)), json.loads(body))
        elif method == "GET" and (m := re.fullmatch(r"/schemas/ids/(\d+)", path)):
            self._schema_by_id(int(m.group(1)))
        elif method == "GET" and (m := re.fullmatch(r"/subjects/([^/]+)/versions/(\w+)", path)):
            self._version(unquote(m.group(1)), m.group(2))
        else:
            self._error(404, 404, f"HTTP 404 Not Found: {method} {path}")

    def _authorised(self) -> bool:
        given = self.headers.get("Authorization", "")
        if self.state.basic is not None:
            user, password = self.state.basic
            return given == "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if self.state.bearer is not None:
            return given == f"Bearer {self.state.bearer}"
        return True

    def _register(self, subject: str, body: dict[str, Any]) -> None:
        refusal = self.state.refusal
        if refusal is not None:
            self._error(refusal.status, refusal.error_code, refusal.message)
            return
        if body.get("schemaType", "AVRO") != "AVRO":
            self._error(422, 42201, "Either the input schema or one its references is invalid")
            return
        registered = self.state.register(subject, body["schema"], body.get("references", []))
        self._reply(200, {"id": registered.id})

    def _schema_by_id(self, schema_id: int) -> None:
        found = self.state.by_id.get(schema_id)
        if found is None:
            self._error(404, 40403, "Schema not found")
            return
        self._reply(200, {"schema": found.schema, "references": found.references})

    def _version(self, subject: str, version: str) -> None:
        history = self.state.versions.get(subject)
        if not history:
            self._error(404, 40401, "Subject not found")
            return
        wanted = len(history) if version == "latest" else int(version)
        if not 1 <= wanted <= len(history):
            self._error(404, 40402, "Version not found")
            return
        v = history[wanted - 1]
        self._reply(200, {"subject": v.subject, "version": v.version, "id": v.id, "schema": v.schema,
                          "references": v.references})

    def _error(self, status: int, error_code: int, message: str) -> None:
        self._reply(status, {"error_code": error_code, "message": message})

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
