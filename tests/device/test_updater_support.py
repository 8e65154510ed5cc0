"""What the updater's tests, its end-to-end test and its benchmark share (no tests here; load it
with ``load_support()`` of the caller, as ``tests/device`` is no package on the path):

- ``agent_bundle``: a real signed bundle of this tree at a version (``provisioning.update_build``,
  the session's update key of ``tests/updates_support.py``), optionally from a copy patched to be
  broken (an agent that exits at ``run``);
- ``BundleServer``: HTTPS on 127.0.0.1 requiring a client certificate of the fleet CA, serving
  bundles at ``/api/v1/device/updates/<sha256>`` with ``Range``;
- ``TlsPeer``: the server's side of MQTT over mutual TLS, acking every envelope;
- ``Unit``: the systemd unit as the tests run it: the launcher, started again after each exit
  (``Restart=always``) until stopped;
- ``agent_status``: what ``resonera-device status`` says of the running agent (None: none answers).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from fleet import mutual_tls_http_server

from resonera.common import topics
from resonera.common.envelope import Ack, Envelope, decode_envelope
from resonera.common.mqtt_client import build_client, connect, stop_loop
from resonera.common.settings import MqttSettings
from resonera.device.service import ServiceUnavailable, send_command

ROOT = Path(__file__).resolve().parents[2]
UPDATES_PATH = "/api/v1/device/updates/"
#: What the deliberately broken agent does first in ``resonera-device run``.
BROKEN = 'raise SystemExit("this agent is broken on purpose: it exits at start")'


def agent_bundle(workdir: Path, version: str, *, broken: bool = False, key: Any = None) -> Path:
    """The signed bundle of this tree at ``version`` (``tests/updates_support.build_bundle``);
    ``broken``: built from a copy whose ``resonera-device run`` exits at once; ``key``: signed by
    another key than the session's update key (a bad signature). Built in ``workdir`` once."""
    from updates_support import build_bundle, update_key

    from resonera.provisioning.update_build import build_update, copy_tree

    if not broken and key is None:
        return build_bundle(workdir / version, version)
    tag = f"{version}{'-broken' if broken else ''}{'-otherkey' if key is not None else ''}"
    out = workdir / tag
    built = list(out.glob("*.tar")) if out.exists() else []
    if built:
        return built[0]
    src = workdir / f"src-{tag}"
    copy_tree(ROOT, src, None)
    if broken:
        cli = src / "device" / "cli_service.py"
        head = "def run_command(args: argparse.Namespace) -> int:\n"
        cli.write_text(cli.read_text().replace(head, f"{head}    {BROKEN}\n", 1))
    session = update_key()
    return build_update(
        src,
        out,
        key if key is not None else session.private,
        update_keys=[session.public_key],
        version=version,
    ).path


@dataclass
class ServerState:
    url: str
    ca_file: Path
    files: dict[str, Path] = field(default_factory=dict)
    asked: list[tuple[str, str | None]] = field(default_factory=list)

    def serve(self, sha256: str, path: Path) -> None:
        self.files[sha256] = path


class _Handler(BaseHTTPRequestHandler):
    state: ServerState

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        self.state.asked.append((self.path, rng))
        path = self.state.files.get(self.path.removeprefix(UPDATES_PATH))
        if not self.path.startswith(UPDATES_PATH) or path is None:
            self.send_error(404)
            return
        body = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        start = int(match[1]) if match else 0
        if match:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        # the device may be killed mid-download
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.wfile.write(body[start:])

    def log_message(self, format: str, *args: object) -> None:
        pass


class BundleServer:
    """Start with the fleet CA's ``issue_service`` and its certificate (``ca_cert``)."""

    def __init__(self, ca: Any, passphrase: bytes, folder: Path) -> None:
        self.httpd = mutual_tls_http_server(ca, folder, _Handler, passphrase)
        port = self.httpd.server_address[1]
        self.state = ServerState(f"https://127.0.0.1:{port}/api/v1", ca.cert_path)
        self.httpd.RequestHandlerClass = type("Handler", (_Handler,), {"state": self.state})
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TlsPeer:
    """Acks every envelope it receives, keeps one per id; publishes desired states retained."""

    def __init__(self, settings: MqttSettings) -> None:
        self.stored: dict[str, Envelope] = {}
        self._lock = threading.Lock()
        self.client = build_client(settings, "test-server-peer", persistent_session=False)
        self.client.on_message = self._on_message
        connect(self.client, settings, clean_start=True, session_expiry_s=0)
        self.client.subscribe(topics.UP_WILDCARD, qos=1)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        envelope = decode_envelope(bytes(message.payload))
        with self._lock:
            self.stored.setdefault(envelope.id, envelope)
        client.publish(topics.ack(envelope.device), Ack.of([envelope.id]).to_bytes(), qos=1)

    def updates(self) -> list[dict[str, Any]]:
        with self._lock:
            found = sorted(
                (e for e in self.stored.values() if e.kind == "update"), key=lambda e: e.seq
            )
        return [e.body for e in found]

    def states(self) -> list[str]:
        return [str(r["state"]) for r in self.updates()]

    def publish_desired(self, device_id: str, payload: bytes) -> None:
        info = self.client.publish(topics.desired(device_id), payload, qos=1, retain=True)
        info.wait_for_publish(timeout=5)

    def close(self) -> None:
        stop_loop(self.client)
        self.client.disconnect()


class Unit:
    """The unit file's ``ExecStart`` (the launcher, by the system's Python) and ``Restart=always``:
    each exit is recorded in ``exits`` and the launcher started again, until ``stop``."""

    def __init__(self, launcher: Path, config: Path, log: Path) -> None:
        self.argv = [sys.executable, str(launcher), "--config", str(config)]
        self.log = log
        self.exits: list[int] = []
        self.process: subprocess.Popen[bytes] | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Unit:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.is_set():
            with self.log.open("ab") as out:
                # a process group of its own: a kill reaches the agent, the launcher's child
                self.process = subprocess.Popen(
                    self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
                code = self.process.wait()
            self._kill_group()  # KillMode=mixed: what is left of the unit (a pip) goes too
            if not self._stopped.is_set():
                self.exits.append(code)
                self._stopped.wait(0.5)  # RestartSec

    def kill(self) -> None:
        """SIGKILL to the launcher and the agent (its process group), as a power loss does."""
        if self.process is not None and self.process.poll() is None:
            self._kill_group()

    def _kill_group(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self, timeout_s: float = 40.0) -> int | None:
        self._stopped.set()
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            code = process.wait()
        self._thread.join(timeout=5)
        return code


def agent_status(control_socket: Path) -> dict[str, Any] | None:
    """The running agent's ``status`` answer on its control socket; None while none answers (the
    launcher between two agents, a slot being switched)."""
    try:
        value = json.loads(send_command(control_socket, "status"))
    except (ServiceUnavailable, ValueError, OSError):
        return None
    return value if isinstance(value, dict) else None


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    from support import wait_until

    wait_until(predicate, timeout, what)
