"""A fleet on loopback for tests: a fresh CA, a TLS mosquitto, devices provisioned like enrollment."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from support import Mosquitto, free_port, run_mosquitto_config

from resonera.common.settings import MqttSettings
from resonera.provisioning.broker import SERVER_IDENTITY, provision_broker
from resonera.server.fleet_ca import FleetCA
from resonera.stack.fleet_sim import Fleet, LocalStack, build_fleet, issue_device

PASSPHRASE = b"correct horse battery staple"


def mutual_tls_http_server(
    ca: FleetCA,
    folder: Path,
    handler: type[BaseHTTPRequestHandler],
    passphrase: bytes = PASSPHRASE,
) -> ThreadingHTTPServer:
    """An HTTPS server on loopback (not started) with a certificate from ``ca`` for 127.0.0.1,
    asking every client for a certificate ``ca`` issued: a stand-in for the server's API where
    devices fetch files with theirs."""
    folder.mkdir(parents=True, exist_ok=True)
    ca.issue_service(
        "resonera-https",
        folder / "https.key",
        folder / "https.crt",
        passphrase,
        server_names=["127.0.0.1"],
        client=False,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert_path))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(folder / "https.crt", folder / "https.key")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.daemon_threads = True
    return httpd


@dataclass
class TlsBroker:
    ca: FleetCA
    broker: Mosquitto
    workdir: Path

    def device(self, device_id: str, **issue: object) -> MqttSettings:
        """Provision a device the way enrollment does: key made here, CSR signed by the CA."""
        made = issue_device(self.ca, PASSPHRASE, device_id, self.workdir / device_id, **issue)
        return self.settings(made.key_file, made.cert_file)

    def server(self) -> MqttSettings:
        folder = self.workdir / "server"
        folder.mkdir(exist_ok=True)
        self.ca.issue_service(
            SERVER_IDENTITY, folder / "server.key", folder / "server.crt", PASSPHRASE
        )
        return self.settings(folder / "server.key", folder / "server.crt")

    def settings(self, key: Path, cert: Path, ca: Path | None = None) -> MqttSettings:
        return MqttSettings(
            host="127.0.0.1",
            port=self.broker.port,
            ca_file=ca or self.ca.cert_path,
            cert_file=cert,
            key_file=key,
        )


@contextmanager
def run_tls_broker(workdir: Path) -> Iterator[TlsBroker]:
    """A fresh fleet CA and a mosquitto configured by ``provision_broker`` (mutual TLS, ACL, CRL)."""
    ca = FleetCA.init(workdir / "ca", PASSPHRASE)
    port = free_port()
    config = provision_broker(ca, workdir / "broker", PASSPHRASE, port=port)
    with run_mosquitto_config(config, port) as broker:
        yield TlsBroker(ca, broker, workdir)


def assert_exactly_once(stack: LocalStack, fleet: Fleet) -> None:
    """Every produced message is stored once and nothing else is: no loss, no duplicate."""
    produced = {(d, m) for d, ids in fleet.produced().items() for m in ids}
    stored = stack.stored_ids()
    assert len(stored) == len(set(stored)), "a record was stored twice"
    missing = produced - set(stored)
    assert not missing, f"{len(missing)} records lost, e.g. {sorted(missing)[:3]}"
    assert set(stored) == produced
    assert fleet.outbox_depths() == (0, 0)


@contextmanager
def connected_fleet(stack: LocalStack, devices: int, **options: Any) -> Iterator[Fleet]:
    """``devices`` simulated devices of ``stack``, every one connected; closed on leaving."""
    fleet = build_fleet(stack, devices, **options)
    try:
        assert fleet.connect_all() == devices
        yield fleet
    finally:
        fleet.close()
