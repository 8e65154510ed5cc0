"""Alembic owns the schema: the migrations build exactly the models' tables, on SQLite and on
PostgreSQL, and a server refuses a database that is behind (one line naming the command)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from resonera.server.db import (
    SchemaBehindError,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    require_current_schema,
)


def test_migrations_match_the_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []


def test_migrate_is_idempotent(engine: Engine) -> None:
    assert migrate(engine) == (head_revision(), head_revision())
    require_current_schema(engine)


def test_empty_database_is_refused_with_the_command(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SchemaBehindError) as caught:
        require_current_schema(engine)
    message = str(caught.value)
    assert "is empty (no schema yet)" in message
    assert "run: resonera-server migrate --config" in message
    assert "\n" not in message
    before, after = migrate(engine)
    assert (before, after) == (None, head_revision())
    require_current_schema(engine)
    engine.dispose()


def test_database_at_an_unknown_revision_is_refused(engine: Engine) -> None:
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    with pytest.raises(SchemaBehindError, match="is at revision 0000, this server needs"):
        require_current_schema(engine)
