"""The server side of an end-to-end test: a server on loopback (API and ingest on the test's broker,
SQLite) that signs desired states, with a clinician whose demo patient has the device assigned, and
that clinician's API client for the patient."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from support import Mosquitto

from resonera.common.settings import MqttSettings
from resonera.server.bootstrap import demo_setup
from resonera.server.crypto import new_key_line, write_signing_key
from resonera.server.runner import ServerProcess, run_server_in_thread
from resonera.server.settings import ServerSettings

PASSWORD = "e2e clinician password"
EMAIL = "dr@e2e.test"


@dataclass(frozen=True)
class Clinic:
    server: ServerProcess
    #: The server's database file (SQLite), to count what was stored.
    database: Path
    patient_id: str
    #: Authenticated as the clinician, rooted at ``/patients/{patient_id}``.
    api: httpx.Client


def signing_key(tmp_path: Path) -> tuple[Path, str]:
    """The server's desired-state signing key file, and the public key a device pins."""
    path = tmp_path / "signing.pem"
    return path, write_signing_key(path)


@contextmanager
def clinic(broker: Mosquitto, tmp_path: Path, device_id: str, key_file: Path) -> Iterator[Clinic]:
    database = tmp_path / "server.db"
    settings = ServerSettings(
        database_url=f"sqlite:///{database}",
        http_port=0,
        mqtt=MqttSettings(host=broker.host, port=broker.port),
        demo=True,
        patient_keys=new_key_line("e2e"),
        desired_signing_key_file=key_file,
    )
    with run_server_in_thread(settings) as server:
        setup = demo_setup(
            server.engine, settings, device_id=device_id, email=EMAIL, password=PASSWORD
        )
        token = httpx.post(
            f"{server.api_url}/auth/login", json={"email": EMAIL, "password": PASSWORD}
        ).json()["access_token"]
        with httpx.Client(
            base_url=f"{server.api_url}/patients/{setup.patient_id}",
            headers={"Authorization": f"Bearer {token}"},
        ) as api:
            yield Clinic(server, database, setup.patient_id, api)
