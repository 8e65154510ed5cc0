from __future__ import annotations

import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from device_peer import Peer
from fleet import PASSPHRASE
from support import Mosquitto, real_clock_env, require_tool, wait_until

from resonera.server.fleet_ca import FleetCA

PULSE_TEST_SINK = "resonera_test"


def _pactl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("pactl"), *args], capture_output=True, text=True, timeout=10, check=False
    )


@pytest.fixture(scope="session")
def pulse_null_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PulseAudio null sink named ``resonera_test`` (48 kHz) as the default sink; yields its name.

    The daemon is started as docs/architecture.md §9 describes (it works as root without ``--system``),
    but in a runtime folder of its own (``PULSE_RUNTIME_PATH``, ``PULSE_SERVER``), so it never
    meets a desktop's or another test session's PulseAudio, and ``pulseaudio --kill`` stops only
    this one.
    PortAudio (through ALSA's ``pulse`` plugin) and ``parec`` find it through the environment.
    """
    pulseaudio = require_tool("pulseaudio")
    require_tool("parec")
    require_tool("pactl")
    runtime = tmp_path_factory.mktemp("pulse")
    socket = runtime / "native"
    env = {
        "PULSE_RUNTIME_PATH": str(runtime),
        "PULSE_STATE_PATH": str(runtime / "state"),
        "PULSE_SERVER": f"unix:{socket}",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        started = subprocess.run(
            [
                pulseaudio,
                "--daemonize=yes",
                "--exit-idle-time=-1",
                "-n",
                f"--load=module-null-sink sink_name={PULSE_TEST_SINK} rate=48000",
                f"--load=module-native-protocol-unix auth-anonymous=1 socket={socket}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=real_clock_env(),  # a sound server needs no date, and faketime stalls its timers
        )
        if started.returncode != 0:
            pytest.fail(f"pulseaudio did not start: {started.stderr.strip()[-500:]}")
        try:
            wait_until(lambda: _pactl("info").returncode == 0, what="pulseaudio to answer")
            default = _pactl("set-default-sink", PULSE_TEST_SINK)
            assert default.returncode == 0, default.stderr
            yield PULSE_TEST_SINK
        finally:
            subprocess.run([pulseaudio, "--kill"], capture_output=True, timeout=10, check=False)


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
        folder = tmp_path / f"https-{len(servers)}"
        folder.mkdir()
        ca.issue_service(
            "resonera-https",
            folder / "https.key",
            folder / "https.crt",
            PASSPHRASE,
            server_names=["127.0.0.1"],
            client=False,
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert_path))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(folder / "https.crt", folder / "https.key")
        server = ThreadingHTTPServer(("127.0.0.1", 0), _BackgroundHandler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
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
