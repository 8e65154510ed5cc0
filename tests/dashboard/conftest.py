"""Fixtures for the dashboard: the server suite's database and settings fixtures, a seeded world
(``helpers.py``), the app for TestClient, the real server on a loopback port (uvicorn in a thread, as
``resonera-server api`` runs it) and headless Debian Chromium driven by Playwright.

Screenshots go to ``tests/artifacts/dashboard/`` (gitignored; CI keeps it as an artifact), or to
``$RESONERA_TEST_ARTIFACTS/dashboard`` when that is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dashboard.helpers import (
    Browsing,
    Seeded,
    form_token,
    html_client,
    seed_world,
    server_helpers,
    sign_in_as,
)
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import Browser
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from resonera.server.crypto import FieldCipher, new_key_line, write_signing_key
from resonera.server.db import make_engine
from resonera.server.desired import MemoryPublisher
from resonera.server.runner import ServerProcess, run_server_in_thread
from resonera.server.settings import ServerSettings

_helpers = server_helpers()
# The server suite's fixtures, reused as they are (a migrated SQLite copy per test, settings, keys).
_no_server_env = _helpers._no_server_env
sqlite_template = _helpers.sqlite_template
sqlite_url = _helpers.sqlite_url
cipher = _helpers.cipher
postgres = _helpers.postgres
pg_database = _helpers.pg_database
engine = _helpers.sqlite_engine  # the dashboard's tests run on SQLite
publisher = _helpers.publisher


@pytest.fixture
def server_settings(tmp_path: Path) -> ServerSettings:
    """The server suite's settings, with a signing key file (the real server loads it)."""
    key = tmp_path / "desired.pem"
    write_signing_key(key)
    return ServerSettings(
        database_url=f"sqlite:///{tmp_path / 'server.db'}",
        http_port=0,
        jwt_secret=SecretStr(_helpers.JWT_SECRET),
        patient_keys=SecretStr(new_key_line("t1")),
        desired_signing_key_file=key,
        data_dir=tmp_path / "data",
        preview_max_s=2.0,  # enough to hear (and measure) a program; quick to render
    )


@pytest.fixture
def pg_engine(pg_database: str) -> Iterator[Engine]:
    """The server suite's PostgreSQL database, emptied (skipped locally, failed in CI, without
    PostgreSQL)."""
    _helpers._empty_postgres(pg_database)
    engine = make_engine(pg_database)
    yield engine
    engine.dispose()


@pytest.fixture
def seeded(engine: Engine, cipher: FieldCipher) -> Seeded:
    return seed_world(engine, cipher, days=90)


@pytest.fixture
def app(
    server_settings: ServerSettings,
    engine: Engine,
    cipher: FieldCipher,
    publisher: MemoryPublisher,
    seeded: Seeded,
) -> FastAPI:
    app: FastAPI = _helpers.make_app(server_settings.checked_for_start(), engine, cipher, publisher)
    return app


@pytest.fixture
def pg_app(server_settings: ServerSettings, pg_engine: Engine, cipher: FieldCipher) -> FastAPI:
    """The app on PostgreSQL (``pg_engine``, empty: the test seeds it)."""
    app: FastAPI = _helpers.make_app(
        server_settings.checked_for_start(), pg_engine, cipher, MemoryPublisher()
    )
    return app


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with html_client(app) as client:
        yield client


@pytest.fixture
def sign_in(client: TestClient) -> Callable[[str], str]:
    """Sign ``email`` in through the form; returns the CSRF token of the page it lands on."""

    def do(email: str) -> str:
        landing = client.get(sign_in_as(client, email))
        assert landing.status_code == 200, landing.text
        return form_token(landing.text)

    return do


# -- the real server and the browser ---------------------------------------------------------


@pytest.fixture
def live_server(
    server_settings: ServerSettings, engine: Engine, publisher: MemoryPublisher, seeded: Seeded
) -> Iterator[ServerProcess]:
    settings = server_settings.model_copy(update={"http_port": 0})
    with run_server_in_thread(settings, ingest=False, engine=engine, publisher=publisher) as server:
        yield server


@pytest.fixture(scope="session")
def artifacts() -> Path:
    root = os.environ.get("RESONERA_TEST_ARTIFACTS")
    base = Path(root) if root else Path(__file__).resolve().parents[1] / "artifacts"
    folder = base / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browsing(
    browser: Browser, live_server: ServerProcess, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Browsing]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield Browsing(page, live_server.url, artifacts, request.node.name, errors)
    finally:
        context.close()
