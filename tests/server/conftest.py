"""Fixtures for the server tests: a throwaway database on SQLite *and* on a real PostgreSQL (the
``engine`` fixture is parametrized over both), settings, users with tokens, message factories.

Both backends start from a template migrated once per test session: SQLite copies a file,
PostgreSQL creates each test's database ``TEMPLATE`` the migrated one, so no test pays for the
migrations and none sees another's rows.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from factories import RECENT, event_body
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel
from support import Postgres, run_postgres

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.common.ids import new_id
from resonera.common.settings import MqttSettings
from resonera.server.app import create_app
from resonera.server.crypto import FieldCipher, HmacSigner, new_key_line, parse_keys
from resonera.server.db import head_revision, make_engine, migrate
from resonera.server.desired import MemoryPublisher
from resonera.server.models import (
    AssignmentRow,
    ClinicianPatientRow,
    DeviceRow,
    PatientRow,
    UserRow,
)
from resonera.server.security import hash_password, issue_access_token
from resonera.server.settings import ServerSettings

JWT_SECRET = "test-jwt-secret-0123456789-abcdefghijklmnop"
PASSWORD = "correct horse battery staple"
T0 = RECENT
BACKENDS = ["sqlite", "postgresql"]
_counter = itertools.count()


@pytest.fixture(autouse=True)
def _no_server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's or CI's RESONERA_SERVER_* variables must not change what the tests see."""
    for name in list(os.environ):
        if name.startswith("RESONERA_SERVER_") or name == "RESONERA_PASSWORD":
            monkeypatch.delenv(name)


# -- databases -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server for the whole test session (skipped locally, failed in CI, when
    PostgreSQL is not installed)."""
    with run_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def pg_database(postgres: Postgres) -> str:
    """One migrated database for the session; each test empties it (``database_url``)."""
    postgres.execute("CREATE DATABASE resonera_test")
    url = postgres.url("resonera_test")
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    return url


def _empty_postgres(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            names = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            conn.execute(
                text("UPDATE alembic_version SET version_num = :v"), {"v": head_revision()}
            )
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "server.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database; once on SQLite (a fresh file), once on PostgreSQL (the
    session's database, emptied)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url")
        return
    url: str = request.getfixturevalue("pg_database")
    _empty_postgres(url)
    yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


# -- settings and app ------------------------------------------------------------------------


@pytest.fixture
def server_settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(
        database_url=f"sqlite:///{tmp_path / 'server.db'}",
        http_port=0,
        jwt_secret=SecretStr(JWT_SECRET),
        patient_keys=SecretStr(new_key_line("t1")),
        mqtt=MqttSettings(),
        data_dir=tmp_path / "data",
    )


@pytest.fixture
def cipher(server_settings: ServerSettings) -> FieldCipher:
    assert server_settings.patient_keys is not None
    return FieldCipher(*parse_keys(server_settings.patient_keys.get_secret_value(), "test"))


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
def app(
    server_settings: ServerSettings,
    engine: Engine,
    cipher: FieldCipher,
    publisher: MemoryPublisher,
) -> FastAPI:
    return make_app(server_settings, engine, cipher, publisher)


def make_app(
    settings: ServerSettings, engine: Engine, cipher: FieldCipher, publisher: MemoryPublisher
) -> FastAPI:
    # HMAC signing keeps the tests independent of key files; Ed25519 has tests of its own.
    return create_app(
        settings, engine, cipher=cipher, publisher=publisher, signer=HmacSigner(b"test-secret")
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


# -- people and devices ----------------------------------------------------------------------

_FAST_HASH: dict[str, str] = {}


def _password_hash() -> str:
    # argon2id is slow on purpose; hash the shared test password once per process.
    if "h" not in _FAST_HASH:
        _FAST_HASH["h"] = hash_password(PASSWORD)
    return _FAST_HASH["h"]


@dataclass
class Actor:
    id: int
    email: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class World:
    """An admin, two clinicians with one patient each, an auditor; ``device`` is patient A's."""

    admin: Actor
    clinician: Actor
    other_clinician: Actor
    auditor: Actor
    patient: str
    other_patient: str
    device: str
    other_device: str

    def by_name(self, name: str) -> Actor | None:
        return None if name == "anonymous" else getattr(self, name)


@pytest.fixture
def make_actor(engine: Engine, server_settings: ServerSettings) -> Callable[[str], Actor]:
    settings = server_settings.checked_for_start()

    def make(role: str) -> Actor:
        email = f"{role}-{next(_counter)}@example.org"
        with Session(engine) as session:
            user = UserRow(
                email=email, password_hash=_password_hash(), role=role, created_at=datetime.now(UTC)
            )
            session.add(user)
            session.commit()
            session.refresh(user)
            token = issue_access_token(settings, user, datetime.now(UTC))
            assert user.id is not None
            return Actor(user.id, email, role, token)

    return make


def add_patient(
    engine: Engine, cipher: FieldCipher, clinician_id: int | None, name: str = "Ada"
) -> str:
    patient_id = new_id()
    now = datetime.now(UTC)
    with Session(engine) as session:
        session.add(
            PatientRow(
                id=patient_id,
                name_enc=cipher.encrypt(name, patient_id=patient_id, field="name"),
                birth_date_enc=cipher.encrypt(
                    "1970-01-02", patient_id=patient_id, field="birth_date"
                ),
                notes_enc=cipher.encrypt("", patient_id=patient_id, field="notes"),
                created_at=now,
                updated_at=now,
            )
        )
        session.flush()
        if clinician_id is not None:
            session.add(
                ClinicianPatientRow(user_id=clinician_id, patient_id=patient_id, created_at=now)
            )
        session.commit()
    return patient_id


def add_device(
    engine: Engine,
    device_id: str,
    *,
    patient_id: str | None = None,
    since: datetime = T0 - timedelta(days=365),
    public_key: str | None = None,
    revoked: bool = False,
) -> str:
    now = datetime.now(UTC)
    with Session(engine) as session:
        session.add(DeviceRow(id=device_id, public_key=public_key, revoked=revoked, created_at=now))
        session.flush()
        if patient_id is not None:
            session.add(
                AssignmentRow(
                    device_id=device_id, patient_id=patient_id, valid_from=since, created_at=now
                )
            )
        session.commit()
    return device_id


@pytest.fixture
def world(engine: Engine, cipher: FieldCipher, make_actor: Callable[[str], Actor]) -> World:
    admin, clinician, other, auditor = (
        make_actor(r) for r in ("admin", "clinician", "clinician", "auditor")
    )
    patient = add_patient(engine, cipher, clinician.id, "Ada Lovelace")
    other_patient = add_patient(engine, cipher, other.id, "Grace Hopper")
    return World(
        admin=admin,
        clinician=clinician,
        other_clinician=other,
        auditor=auditor,
        patient=patient,
        other_patient=other_patient,
        device=add_device(engine, "dev-a", patient_id=patient),
        other_device=add_device(engine, "dev-b", patient_id=other_patient),
    )


# -- device messages -------------------------------------------------------------------------


def session_body(
    *, start: datetime = T0, minutes: float = 10.0, **overrides: Any
) -> dict[str, Any]:
    """A valid ``SessionRecord`` body as a device sends it (JSON types)."""
    body: dict[str, Any] = {
        "session_id": new_id(),
        "program_name": "calm-40hz",
        "program_digest": "ab" * 32,
        "started_at": start.isoformat(),
        "ended_at": (start + timedelta(minutes=minutes)).isoformat(),
        "planned_s": minutes * 60,
        "played_s": minutes * 60,
        "outcome": "completed",
        "sink": "null",
        "sample_rate": 48000,
        "peak_dbfs": -6.0,
        "rms_dbfs": -20.0,
        "simulation": True,
    }
    body.update(overrides)
    return body


@pytest.fixture
def make_body() -> Callable[..., dict[str, Any]]:
    return session_body


def default_body(kind: topics.UpKind) -> dict[str, Any]:
    if kind == "session":
        return session_body()
    if kind == "event":
        return event_body()
    if kind == "reported":
        return {"desired_version": 1, "status": "applied"}
    return {"note": "hello"}


@pytest.fixture
def make_envelope() -> Callable[..., Envelope]:
    def make(
        device: str = "dev-a",
        kind: topics.UpKind = "session",
        body: dict[str, Any] | None = None,
        seq: int = 0,
        time: datetime | None = None,
    ) -> Envelope:
        """Stamped ``time``, else now by the real clock (a module on an injected clock passes
        its own: ``functools.partial(make_envelope, time=NOW)``)."""
        return Envelope.create(
            device=device,
            seq=seq,
            kind=kind,
            body=default_body(kind) if body is None else body,
            time=time,
        )

    return make


@pytest.fixture
def registered(engine: Engine) -> Callable[..., str]:
    """Register a device (optionally assigned to a patient) in the ``engine`` database."""

    def register(device_id: str, **kwargs: Any) -> str:
        return add_device(engine, device_id, **kwargs)

    return register


@pytest.fixture
def make_patient(engine: Engine, cipher: FieldCipher) -> Callable[..., str]:
    """Add a patient (optionally linked to a clinician) in the ``engine`` database."""

    def make(clinician_id: int | None = None, name: str = "Ada") -> str:
        return add_patient(engine, cipher, clinician_id, name)

    return make


_fresh = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database with no schema yet: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        postgres: Postgres = request.getfixturevalue("postgres")
        name = f"fresh_{next(_fresh)}"
        postgres.execute(f"CREATE DATABASE {name}")
        url = postgres.url(name)
    engine = make_engine(url)
    yield engine
    engine.dispose()
