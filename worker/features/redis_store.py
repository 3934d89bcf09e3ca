"""Redis feature store: every HMGET of a batch in one pipelined round trip.

The commands are packed straight into RESP bytes and the replies parsed by hiredis, because
redis-py's pipeline costs about four times as much per command in Python objects. The
connection handles AUTH, SELECT and TLS itself so the hot path stays a single send and read.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from worker.errors import FeatureStoreUnavailable, StartupError
from worker.features.store import KeyValues, Name, Requests
from worker.startup import refusal_line, wait_until_ready

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    unix_path: str | None = None

    @classmethod
    def from_url(cls, url: str, password: str | None = None) -> RedisAddress:
        """Parse ``redis://[user:pass@]host[:port][/db]``, ``rediss://`` (TLS) or ``unix:///path?db=N``."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme '{parts.scheme}' (use redis://, rediss:// or unix://)")
        query = parse_qs(parts.query)
        db_text = parts.path.lstrip("/") if parts.scheme != "unix" else query.get("db", ["0"])[0]
        return cls(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=int(db_text or 0),
                   username=unquote(parts.username) if parts.username else None,
                   password=password or (unquote(parts.password) if parts.password else None),
                   tls=parts.scheme == "rediss", unix_path=parts.path if parts.scheme == "unix" else None)

    def redacted(self) -> str:
        where = self.unix_path or f"{self.host}:{self.port}"
        scheme = "unix" if self.unix_path else ("rediss" if self.tls else "redis")
        auth = "***@" if self.password else ""
        return f"{scheme}://{auth}{where}/{self.db}"


def pack(*args: bytes) -> bytes:
    """One command in RESP: ``*n`` then ``$len`` + bytes per argument."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class RedisConnection:
    """One socket to one Redis server, speaking RESP through hiredis: AUTH, SELECT, READONLY and TLS
    at connect, then whole pipelines sent and their replies read. Any socket or protocol failure
    closes it (the next send reconnects) and raises ``FeatureStoreUnavailable``."""

    def __init__(self, address: RedisAddress, timeout_s: float = 2.0, tls: TlsFiles | None = None,
                 readonly: bool = False) -> None:
        self.address = address
        self._timeout = timeout_s
        self._tls = tls or TlsFiles()
        self._readonly = readonly
        self._sock: socket.socket | None = None
        self._reader = hiredis.Reader()

    def round_trip(self, payload: bytes, n_replies: int) -> list[object]:
        self.send(payload)
        return self.receive(n_replies)

    def send(self, payload: bytes) -> None:
        try:
            (self._sock or self._connect()).sendall(payload)
        except (OSError, hiredis.ProtocolError) as exc:
            raise self._failed(exc) from exc
        except FeatureStoreUnavailable:  # refused while connecting
            self.close()
            raise

    def receive(self, n_replies: int) -> list[object]:
        """The next ``n_replies`` replies to what was sent (a reply may be an error value)."""
        try:
            if self._sock is None:
                raise ConnectionError("not connected")
            return self._read_replies(self._sock, n_replies)
        except (OSError, hiredis.ProtocolError) as exc:
            raise self._failed(exc) from exc

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _failed(self, exc: BaseException) -> FeatureStoreUnavailable:
        self.close()
        return FeatureStoreUnavailable(f"Redis at {self.address.redacted()}: {exc}", _refused(exc))

    def _read_replies(self, sock: socket.socket, n: int) -> list[object]:
        replies: list[object] = []
        reader = self._reader
        while len(replies) < n:
            reply = reader.gets()
            if reply is False:
                data = sock.recv(1 << 20)
                if not data:
                    raise ConnectionError(_CLOSED)
                reader.feed(data)
                continue
            replies.append(reply)
        return replies

    def _connect(self) -> socket.socket:
        a = self.address
        self._reader = hiredis.Reader()
        if a.unix_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            sock.connect(a.unix_path)
        else:
            sock = socket.create_connection((a.host, a.port), timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if a.tls:
            sock = self._tls.context().wrap_socket(sock, server_hostname=a.host)
        self._sock = sock
        try:
            self._handshake(sock)
        except OSError as exc:
            if a.tls and not _refused(exc) and _closed(exc):
                # A server refusing our certificate (or its absence) under TLS 1.3 sends an alert and
                # closes; whether we read the alert or only the close depends on timing.
                raise FeatureStoreUnavailable(f"Redis at {a.redacted()} closed the TLS connection before its first "
                                              f"reply ({exc})", "client_certificate") from exc
            raise
        return sock

    def _handshake(self, sock: socket.socket) -> None:
        a = self.address
        commands: list[bytes] = []
        if a.password is not None:
            auth = [a.username.encode()] if a.username else []
            commands.append(pack(b"AUTH", *auth, a.password.encode()))
        if a.db:
            commands.append(pack(b"SELECT", str(a.db).encode()))
        if self._readonly:  # a cluster replica answers reads for its master's slots only after READONLY
            commands.append(pack(b"READONLY"))
        if a.tls:
            commands.append(pack(b"PING"))  # a first exchange on every TLS connection: see _connect
        if not commands:
            return
        sock.sendall(b"".join(commands))
        for reply in self._read_replies(sock, len(commands)):
            if isinstance(reply, Exception):
                text = str(reply)
                refused = "credentials" if _is_auth_error(text) else "permissions" if text.startswith("NOPERM") else ""
                raise FeatureStoreUnavailable(f"Redis at {a.redacted()} refused the connection setup: {text}", refused)


class RedisFeatureStore:
    """``FeatureStore`` over one Redis connection, reconnecting lazily after a failure."""

    def __init__(self, address: RedisAddress, timeout_s: float = 2.0, tls: TlsFiles | None = None) -> None:
        self._connection = RedisConnection(address, timeout_s, tls)

    @property
    def address(self) -> RedisAddress:
        return self._connection.address

    def fetch(self, requests: Requests) -> list[list[KeyValues]]:
        payload, counts = pack_hmgets(requests)
        replies = self._connection.round_trip(payload, sum(counts))
        return split_replies(replies, counts)

    def ping(self) -> None:
        reply = self._connection.round_trip(pack(b"PING"), 1)[0]
        if reply != b"PONG":
            refused = "permissions" if str(reply).startswith("NOPERM") else ""
            raise FeatureStoreUnavailable(f"Redis at {self.address.redacted()} answered PING with {reply}", refused)

    def close(self) -> None:
        self._connection.close()

    def redacted(self) -> str:
        return self.address.redacted()


@dataclass(frozen=True)
class TlsFiles:
    """What a ``rediss://`` connection verifies the server with (``ca_file``, default the system's CAs)
    and, for mutual TLS, proves itself with (``cert_file``, ``key_file``, ``key_password``)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: str | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            try:
                context.load_cert_chain(self.cert_file, self.key_file, self.key_password)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise FeatureStoreUnavailable(f"cannot load the client certificate {self.cert_file}: {exc}",
                                              "client_key") from exc
        return context


# OpenSSL's reasons when a server refuses our certificate (it can only say so with an alert).
_CLIENT_CERTIFICATE_ALERTS = ("CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN")


def _refused(exc: BaseException) -> str:
    """Which refusal ``exc`` is (see ``worker.startup.REFUSALS``), or "" for an outage."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "server_certificate"
    reason = getattr(exc, "reason", None) or ""
    if isinstance(exc, ssl.SSLError) and any(alert in reason for alert in _CLIENT_CERTIFICATE_ALERTS):
        return "client_certificate"
    return ""


def _closed(exc: OSError) -> bool:
    return isinstance(exc, ssl.SSLEOFError | ConnectionResetError | BrokenPipeError) or str(exc) == _CLOSED


_CLOSED = "connection closed by Redis"


def _is_auth_error(text: str) -> bool:
    # WRONGPASS (ACL users, Redis 6+); "ERR AUTH ... without any password configured"; "ERR invalid password" (older)
    return text.startswith(("WRONGPASS", "ERR AUTH", "ERR invalid password", "ERR invalid username"))


def pack_hmgets(requests: Requests) -> tuple[bytes, list[int]]:
    """Every HMGET of ``requests`` in one RESP payload, and how many keys each request has."""
    commands, _, counts = hmget_commands(requests)
    return b"".join(commands), counts


def hmget_commands(requests: Requests) -> tuple[list[bytes], list[bytes], list[int]]:
    """One RESP HMGET per key, in order; the keys as bytes; how many keys each request has."""
    commands: list[bytes] = []
    keys: list[bytes] = []
    counts: list[int] = []
    for fields, names in requests:
        head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)
        tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in map(_bytes, fields))
        for key in names:
            kb = key if isinstance(key, bytes) else key.encode()
            commands.append(b"%s$%d\r\n%s\r\n%s" % (head, len(kb), kb, tail))
            keys.append(kb)
        counts.append(len(names))
    return commands, keys, counts


def split_replies(replies: list[object], counts: list[int]) -> list[list[KeyValues]]:
    """The flat replies cut back into one list per request, each reply checked."""
    out: list[list[KeyValues]] = []
    start = 0
    for n in counts:
        out.append([_key_values(r) for r in replies[start:start + n]])
        start += n
    return out


def _bytes(name: Name) -> bytes:
    return name if isinstance(name, bytes) else name.encode()


def _key_values(reply: object) -> KeyValues:
    if isinstance(reply, list):
        return reply
    if isinstance(reply, Exception):
        if str(reply).startswith("WRONGTYPE"):
            return reply  # this key holds another type: only the events using it fail
        # NOAUTH, NOPERM, LOADING, BUSY, ...: the server cannot answer now; retry the batch
        raise FeatureStoreUnavailable(f"Redis answered: {reply}")
    return ValueError(f"unexpected Redis reply {reply!r}")


class Reachable(Protocol):
    """A Redis feature store, one server's or a cluster's."""

    def ping(self) -> None: ...
    def redacted(self) -> str: ...


def wait_for_redis(store: Reachable, timeout_s: float, settings_of: Mapping[str, str] | None = None) -> None:
    """Block until Redis answers PING, logging progress; else ``StartupError``: at once when it
    refuses this client (a certificate, the credentials), naming the settings ``settings_of`` gives
    for that refusal, since waiting cannot mend a configuration."""
    wait_until_ready(lambda: _ping_problem(store, settings_of or {}), "Redis", store.redacted(), timeout_s)


def _ping_problem(store: Reachable, settings_of: Mapping[str, str]) -> str | None:
    try:
        store.ping()
    except FeatureStoreUnavailable as exc:
        if exc.refused:
            raise StartupError(refusal_line(f"Redis at {store.redacted()}", exc.refused, str(exc),
                                            settings_of)) from exc
        return str(exc)
    return None
