from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Table, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common.errors import ConfigError
from resonera.server.db import DatabaseUnavailableError, init_db, insert_ignore, make_engine
from resonera.server.models import MessageRow

MESSAGES: Table = MessageRow.__table__  # type: ignore[attr-defined]


def _row(message_id: str, when: datetime) -> dict[str, object]:
    return {
        "device_id": "dev-db",
        "message_id": message_id,
        "kind": "event",
        "seq": 1,
        "device_time": when,
        "received_at": when,
        "body": "{}",
    }


def test_sqlite_pragmas(sqlite_engine: Engine) -> None:
    engine = sqlite_engine
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000


def test_insert_ignore_returns_only_new_rows(engine: Engine) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        first = insert_ignore(
            conn,
            MESSAGES,
            [_row("a", now), _row("b", now)],
            key=("device_id", "message_id"),
            returning=("message_id",),
        )
    with engine.begin() as conn:
        second = insert_ignore(
            conn,
            MESSAGES,
            [_row("b", now), _row("c", now)],
            key=("device_id", "message_id"),
            returning=("message_id",),
        )
    assert sorted(first) == [("a",), ("b",)]
    assert second == [("c",)]
    with Session(engine) as session:
        assert len(session.exec(select(MessageRow)).all()) == 3


def test_times_come_back_aware_utc(engine: Engine) -> None:
    local = datetime(2026, 3, 1, 10, 30, tzinfo=timezone(timedelta(hours=1)))
    with engine.begin() as conn:
        insert_ignore(
            conn, MESSAGES, [_row("t", local)], key=("device_id", "message_id"), returning=("id",)
        )
    with Session(engine) as session:
        row = session.exec(select(MessageRow)).one()
    assert row.device_time == datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    assert row.device_time.tzinfo == UTC


def test_unusable_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="database_url"):
        make_engine("nosuchdb://x")


def test_unopenable_database_is_one_clear_error(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    with pytest.raises(DatabaseUnavailableError, match="cannot use the database"):
        init_db(engine)
