"""Fixtures for the server tests: a throwaway SQLite store, settings, message factories."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.common.ids import new_id
from resonera.common.settings import MqttSettings
from resonera.server.db import init_db, make_engine
from resonera.server.settings import ServerSettings

TOKEN = "test-token-0123456789-abcdefghij"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's or CI's RESONERA_SERVER_* variables must not change what the tests see."""
    for name in list(os.environ):
        if name.startswith("RESONERA_SERVER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'server.db'}")
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def server_settings(tmp_path: Path) -> ServerSettings:
    return ServerSettings(
        database_url=f"sqlite:///{tmp_path / 'server.db'}",
        http_port=0,
        api_token=SecretStr(TOKEN),
        mqtt=MqttSettings(),
    )


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


@pytest.fixture
def make_envelope() -> Callable[..., Envelope]:
    def make(
        device: str = "dev-a",
        kind: topics.UpKind = "session",
        body: dict[str, Any] | None = None,
        seq: int = 0,
    ) -> Envelope:
        if body is None:
            body = session_body() if kind == "session" else {"note": "hello"}
        return Envelope.create(device=device, seq=seq, kind=kind, body=body)

    return make
