"""TLS in front of servers that cannot speak it: ``stunnel`` terminating TLS for a broker (tansu)
on a free port, with the certificates of ``tests.support.certs``; and two throwaway CAs, the
right one and a wrong one."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.support.certs import Pki, make_pki
from worker.devtools.local import LocalProcess, free_port


@dataclass(frozen=True)
class Pkis:
    """The CA the servers use, and a second one that signed nothing the servers know (the "wrong
    CA" to verify servers with, and the issuer of a client certificate servers must refuse)."""

    good: Pki
    other: Pki


def make_pkis(directory: Path) -> Pkis:
    return Pkis(make_pki(directory, "test"), make_pki(directory, "other"))


class TlsTerminator(LocalProcess):
    """``stunnel`` on a free port: TLS with ``pki``'s server certificate, passed on in plain TCP to
    ``target_port``; with ``require_client_cert`` it accepts only clients with a certificate from the CA."""

    def __init__(self, pki: Pki, target_port: int, directory: Path, require_client_cert: bool = False,
                 port: int | None = None) -> None:
        exe = shutil.which("stunnel4") or shutil.which("stunnel")
        if exe is None:
            raise RuntimeError("stunnel is not installed (make setup installs Debian's stunnel4)")
        self.port = port or free_port()
        conf = directory / f"stunnel-{self.port}.conf"
        verify = f"verifyChain = yes\nrequireCert = yes\nCAfile = {pki.ca}\n" if require_client_cert else ""
        conf.write_text(f"foreground = yes\npid =\ndebug = 4\n[tls]\naccept = 127.0.0.1:{self.port}\n"
                        f"connect = 127.0.0.1:{target_port}\ncert = {pki.server_cert}\nkey = {pki.server_key}\n"
                        f"{verify}")
        super().__init__("stunnel", [exe, str(conf)], directory / f"stunnel-{self.port}.log", ready_port=self.port)
