"""The HTTP API through FastAPI's TestClient, on a throwaway SQLite store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.server.app import create_app
from resonera.server.db import make_engine
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.settings import ServerSettings

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SESSION_PUBLIC_KEYS = {
    "id", "device_id", "message_id", "seq", "device_time", "received_at", "session_id",
    "program_name", "program_digest", "started_at", "ended_at", "planned_s", "played_s", "outcome",
    "reason", "sink", "sample_rate", "peak_dbfs", "rms_dbfs", "simulation", "hardware_board",
}  # fmt: skip


@pytest.fixture
def app(server_settings: ServerSettings, engine: Engine) -> FastAPI:
    return create_app(server_settings.checked_for_start(), engine)


@pytest.fixture
def token(server_settings: ServerSettings) -> str:
    return server_settings.api_token_value()


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def api(app: FastAPI, auth: dict[str, str]) -> Iterator[TestClient]:
    """A client that sends the right token."""
    with TestClient(app, headers=auth) as client:
        yield client


@pytest.fixture
def store(engine: Engine, make_body: Callable[..., dict[str, Any]]) -> Callable[..., Envelope]:
    """Store a session of ``device`` that started ``hours`` after T0, through ingest."""
    processor = IngestProcessor(engine)

    def add(device: str, hours: int) -> Envelope:
        body = make_body(start=T0 + timedelta(hours=hours))
        envelope = Envelope.create(device=device, seq=hours, kind="session", body=body)
        processor.process([Received(topics.up(device, "session"), envelope.to_bytes())])
        return envelope

    return add


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_healthz_reports_an_unusable_database(
    server_settings: ServerSettings, tmp_path: Path
) -> None:
    broken = make_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    with TestClient(create_app(server_settings.checked_for_start(), broken)) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["database"] != "ok"


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong-token", "Basic {token}", "Bearer {token}x", "Bearer "]
)
def test_sessions_need_the_token(client: TestClient, token: str, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header.format(token=token)}
    response = client.get("/api/v1/sessions", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "missing or wrong API token"}


def test_list_sessions_newest_first(api: TestClient, store: Callable[..., Envelope]) -> None:
    first, second, third = store("dev-a", 0), store("dev-b", 2), store("dev-a", 1)
    response = api.get("/api/v1/sessions")
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.json()
    assert [i["message_id"] for i in items] == [second.id, third.id, first.id]
    assert set(items[0]) == SESSION_PUBLIC_KEYS
    assert items[0]["device_id"] == "dev-b"
    assert datetime.fromisoformat(items[0]["started_at"]) == T0 + timedelta(hours=2)
    assert datetime.fromisoformat(items[0]["started_at"]).utcoffset() == timedelta(0)


def test_filter_by_device(api: TestClient, store: Callable[..., Envelope]) -> None:
    store("dev-a", 0)
    only = store("dev-b", 1)
    store("dev-a", 2)
    response = api.get("/api/v1/sessions", params={"device_id": "dev-b"})
    assert [i["message_id"] for i in response.json()] == [only.id]
    response = api.get("/api/v1/sessions", params={"device_id": "dev-z"})
    assert response.json() == []


def test_limit_and_offset(api: TestClient, store: Callable[..., Envelope]) -> None:
    ids = [store("dev-a", hours).id for hours in range(5)][::-1]  # newest first
    page = api.get("/api/v1/sessions", params={"limit": 2, "offset": 1})
    assert [i["message_id"] for i in page.json()] == ids[1:3]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 1001}, {"limit": "many"}, {"offset": -1}, {"device_id": "x" * 65}],
)
def test_bad_query_is_422(api: TestClient, params: dict[str, Any]) -> None:
    response = api.get("/api/v1/sessions", params=params)
    assert response.status_code == 422
    assert "detail" in response.json()


def test_limit_bounds_are_inclusive(api: TestClient) -> None:
    for limit in (1, 1000):
        response = api.get("/api/v1/sessions", params={"limit": limit})
        assert response.status_code == 200


def test_unexpected_error_is_a_plain_500(app: FastAPI) -> None:
    def boom() -> None:
        raise RuntimeError("secret internals")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert "secret" not in response.text


def test_openapi_names_the_product(client: TestClient) -> None:
    info = client.get("/openapi.json").json()["info"]
    assert info["title"] == "Resonera server"
    assert info["version"]
