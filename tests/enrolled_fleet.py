"""A fleet with enrollment on, for tests: a two-tier CA, a mutual-TLS mosquitto admitting the issuing
CA's devices, and the server's API over HTTPS (uvicorn with a certificate from the fleet root)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import tomli_w
from fastapi import FastAPI
from fleet import PASSPHRASE
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session
from support import Mosquitto, free_port, require_tool, run_mosquitto_config

from resonera.common.clock import utc_now
from resonera.common.mqtt_client import BrokerUnavailable, build_client, connect, stop_loop
from resonera.common.settings import MqttSettings
from resonera.device.enroll import enroll
from resonera.device.settings import DeviceSettings
from resonera.provisioning.broker import SERVER_IDENTITY, provision_broker
from resonera.server.app import create_app
from resonera.server.crypto import (
    FieldCipher,
    HmacSigner,
    new_key_line,
    parse_keys,
    write_signing_key,
)
from resonera.server.db import make_engine
from resonera.server.desired import DesiredService, MemoryPublisher
from resonera.server.enrollment import register_code
from resonera.server.fleet_ca import FleetCA
from resonera.server.models import UserRow
from resonera.server.runner import run_server_in_thread
from resonera.server.security import hash_password, issue_access_token
from resonera.server.settings import EnrollmentSettings, ServerSettings

#: The issuing CA's own passphrase (the root's is fleet.PASSPHRASE).
ISSUING_PASSPHRASE = b"issuing ca passphrase 42"
JWT_SECRET = "enrollment-test-jwt-secret-0123456789abcdef"


@dataclass
class Fleet:
    """Two-tier CA, a mutual-TLS mosquitto that admits the issuing CA's devices, and the server
    (API over HTTPS with enrollment on) on one migrated SQLite database."""

    workdir: Path
    root: FleetCA
    issuing: FleetCA
    broker: Mosquitto
    engine: Engine
    settings: ServerSettings
    config_path: Path
    https_ca: Path
    url: str

    def mqtt(self, key: Path, cert: Path) -> MqttSettings:
        return MqttSettings(
            host="127.0.0.1",
            port=self.broker.port,
            ca_file=self.issuing.chain_path,
            cert_file=cert,
            key_file=key,
        )

    def server_mqtt(self) -> MqttSettings:
        folder = self.workdir / "server-identity"
        folder.mkdir(exist_ok=True)
        self.issuing.issue_service(
            SERVER_IDENTITY, folder / "server.key", folder / "server.crt", ISSUING_PASSPHRASE
        )
        return self.mqtt(folder / "server.key", folder / "server.crt")


def fleet_app(
    fleet: Fleet,
    broker_reload_command: list[str] | None,
    desired: DesiredService | None = None,
) -> FastAPI:
    """The fleet's API app (for a TestClient) on its database and issuing CA, with this
    ``enrollment.broker_reload_command``; its desired states and notices signed and published
    as ``desired`` does (default: an HMAC test key, kept in memory)."""
    enrollment = fleet.settings.enrollment.model_copy(
        update={"broker_reload_command": broker_reload_command}
    )
    settings = fleet.settings.model_copy(update={"enrollment": enrollment}).checked_for_start()
    assert settings.patient_keys is not None
    cipher = FieldCipher(*parse_keys(settings.patient_keys.get_secret_value(), "test"))
    return create_app(
        settings,
        fleet.engine,
        cipher=cipher,
        publisher=desired.publisher if desired is not None else MemoryPublisher(),
        signer=desired.signer if desired is not None else HmacSigner(b"t"),
    )


def add_admin(fleet: Fleet, password: str) -> tuple[str, str]:
    """An admin who signs in with ``password``: (email, API access token)."""
    email = f"admin-{secrets.token_hex(4)}@example.org"
    with Session(fleet.engine) as session:
        user = UserRow(
            email=email,
            password_hash=hash_password(password),
            role="admin",
            created_at=datetime.now(UTC),
        )
        session.add(user)
        session.commit()
        session.refresh(user)
        return email, issue_access_token(
            fleet.settings.checked_for_start(), user, datetime.now(UTC)
        )


def sighup_command(broker: Mosquitto) -> list[str]:
    """A broker reload command for the test mosquitto (``systemctl reload`` on a real one)."""
    return [require_tool("kill"), "-HUP", str(broker.process.pid)]


def broker_admits(settings: MqttSettings, client_id: str) -> bool:
    """True when the broker lets this identity in (TLS handshake and CONNACK)."""
    answered = threading.Event()
    accepted = threading.Event()

    def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        if not getattr(reason, "is_failure", True):
            accepted.set()
        answered.set()

    client = build_client(settings, client_id)
    client.on_connect = on_connect
    client.on_disconnect = lambda *_a: answered.set()
    try:
        connect(client, settings, clean_start=True, session_expiry_s=0)
    except BrokerUnavailable:
        return False
    client.loop_start()
    try:
        answered.wait(timeout=10)
        return accepted.is_set()
    finally:
        stop_loop(client)
        client.disconnect()


@contextmanager
def run_fleet(tmp_path: Path) -> Iterator[Fleet]:
    root = FleetCA.init(tmp_path / "root", PASSPHRASE)
    issuing = root.issue_intermediate(PASSPHRASE, tmp_path / "issuing", ISSUING_PASSPHRASE)
    port = free_port()
    config = provision_broker(root, tmp_path / "broker", PASSPHRASE, port=port, issuing=issuing)
    https = tmp_path / "https"
    https.mkdir()
    root.issue_service(
        "service:resonera-https",
        https / "https.key",
        https / "https.crt",
        PASSPHRASE,
        server_names=["127.0.0.1", "localhost"],
        client=False,
    )
    signing_key = tmp_path / "signing.key"
    write_signing_key(signing_key)
    database_url = f"sqlite:///{tmp_path / 'server.db'}"
    settings = ServerSettings(
        database_url=database_url,
        http_port=0,
        jwt_secret=SecretStr(JWT_SECRET),
        patient_keys=SecretStr(new_key_line("t1")),
        desired_signing_key_file=signing_key,
        tls_cert_file=https / "https.crt",
        tls_key_file=https / "https.key",
        enrollment=EnrollmentSettings(
            issuing_ca_dir=issuing.directory,
            issuing_passphrase=SecretStr(ISSUING_PASSPHRASE.decode()),
            broker_port=port,
            max_failures_per_serial=3,
            max_failures_per_client=6,
        ),
    )
    config_path = tmp_path / "server.toml"
    config_path.write_text(
        tomli_w.dumps(
            {
                "database_url": database_url,
                "desired_signing_key_file": str(signing_key),
                "enrollment": {"broker_port": port},
            }
        )
    )
    engine = make_engine(database_url)
    server = run_server_in_thread(
        settings, ingest=False, engine=engine, migrate=True, publisher=MemoryPublisher()
    )
    url = server.url
    try:
        with run_mosquitto_config(config, port) as broker:
            yield Fleet(
                tmp_path, root, issuing, broker, engine, settings, config_path, root.cert_path, url
            )
    finally:
        server.stop()
        engine.dispose()


def enrollment_code(
    fleet: Fleet, serial: str, *, ago: timedelta = timedelta(), **kwargs: Any
) -> str:
    """A one-time code for ``serial``, made ``ago`` as ``resonera-provision device add`` makes it:
    on the real clock, which the fleet's HTTPS server reads too."""
    code, _device_id, _expires = register_code(fleet.engine, serial, now=utc_now() - ago, **kwargs)
    return code


def enrolled(fleet: Fleet, device_id: str, serial: str) -> DeviceSettings:
    """A device enrolled over HTTPS as ``device_id``; its settings read again, as the agent does
    at its start (TLS files and broker from the identity)."""
    settings = DeviceSettings(device_id=device_id, data_dir=fleet.workdir / device_id)
    code = enrollment_code(fleet, serial, device_id=device_id)
    enroll(settings, fleet.url, code, serial=serial, ca_file=fleet.https_ca)
    return DeviceSettings(device_id=device_id, data_dir=fleet.workdir / device_id)
