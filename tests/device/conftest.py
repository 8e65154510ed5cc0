from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from device_peer import Peer
from fleet import mutual_tls_http_server
from support import Mosquitto

from resonera.server.fleet_ca import FleetCA


@pytest.fixture
def peer(mosquitto: Mosquitto) -> Iterator[Peer]:
    """The server's side of sync on the test's broker: acks every envelope, keeps one per id."""
    p = Peer(mosquitto)
    yield p
    p.close()


#: Where the server half serves background files, under its API root (``server_url``).
BACKGROUNDS_PATH = "/api/v1/device/backgrounds/"


@dataclass(frozen=True)
class Answer:
    """What the test server answers for one file: ``body`` with ``status``; ``length``: say the
    body's length in ``Content-Length`` (False: close-delimited, HTTP/1.0)."""

    body: bytes
    status: int = 200
    length: bool = True


@dataclass
class BackgroundServer:
    """An HTTPS server on 127.0.0.1 that requires a client certificate of ``ca`` and serves
    ``files`` (SHA-256 → ``Answer``; 404 for others) at ``BACKGROUNDS_PATH``; ``requests`` lists
    the paths asked for, ``clients`` the certificates' subjects that asked."""

    api_url: str
    ca_file: Path
    files: dict[str, Answer] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)

    def serve(self, sha256: str, body: bytes, *, status: int = 200, length: bool = True) -> None:
        self.files[sha256] = Answer(body, status, length)


class _BackgroundHandler(BaseHTTPRequestHandler):
    state: BackgroundServer

    def do_GET(self) -> None:
        state = self.state
        state.requests.append(self.path)
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        state.clients.append(str(peer.get("subject") if peer else None))
        answer = state.files.get(self.path.removeprefix(BACKGROUNDS_PATH))
        if not self.path.startswith(BACKGROUNDS_PATH) or answer is None:
            self.send_error(404, "no such background file")
            return
        self.send_response(answer.status)
        if answer.length:
            self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def background_server(tmp_path: Path) -> Iterator[Callable[[FleetCA], BackgroundServer]]:
    """Start, for a fleet ``ca``, an HTTPS background-file server (``BackgroundServer``) whose
    certificate that CA signed for 127.0.0.1 and which admits only clients with a certificate of
    it; stopped after the test."""
    servers: list[ThreadingHTTPServer] = []

    def start(ca: FleetCA) -> BackgroundServer:
        server = mutual_tls_http_server(ca, tmp_path / f"https-{len(servers)}", _BackgroundHandler)
        state = BackgroundServer(
            f"https://127.0.0.1:{server.server_address[1]}/api/v1", ca.cert_path
        )
        server.RequestHandlerClass = type("Handler", (_BackgroundHandler,), {"state": state})
        threading.Thread(target=server.serve_forever, name="https", daemon=True).start()
        servers.append(server)
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
