"""Alembic owns the schema: the migrations build exactly the models' tables, on SQLite and on
PostgreSQL, and a server refuses a database that is behind (one line naming the command)."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from factories import ALPHA_TOML
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from resonera.common.prescription import definition_sha256
from resonera.common.program import parse_program
from resonera.server.db import (
    SchemaBehindError,
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    require_current_schema,
)
from resonera.server.models import ProgramLibraryRow, ProgramVersionRow, UserRow


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
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    with pytest.raises(SchemaBehindError, match="is at revision 0000, this server needs"):
        require_current_schema(engine)


def test_library_programs_become_their_version_1(empty_engine: Engine) -> None:
    """0012: an existing program (edited twice before versions were kept) becomes version 1,
    with its definition and the definition's SHA-256; the head's version and hash follow. 0015: it
    has no tags."""
    migrate(empty_engine, "0011")
    at = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    with empty_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO app_user (id, email, password_hash, role, active, created_at) "
                "VALUES (7, 'c@example.org', 'x', 'clinician', true, :at)"
            ),
            {"at": at},
        )
        conn.execute(
            text(
                "INSERT INTO program_library (id, name, version, document, format, content_hash,"
                " created_by, created_at, updated_by, updated_at) VALUES ('p1', 'Alpha drift', 3,"
                " :doc, 'toml', 'old', 7, :at, 7, :at)"
            ),
            {"doc": ALPHA_TOML, "at": at},
        )
    migrate(empty_engine)
    program = parse_program(tomllib.loads(ALPHA_TOML))
    with Session(empty_engine) as session:
        (version,) = session.exec(select(ProgramVersionRow)).all()
        head = session.get(ProgramLibraryRow, "p1")
    assert head is not None and (head.version, head.content_hash) == (1, program.digest())
    assert head.tags == []
    assert (version.program_id, version.version, version.name) == ("p1", 1, "Alpha drift")
    assert version.definition == program.model_dump(mode="json")
    assert version.sha256 == definition_sha256(version.definition) == program.digest()
    assert (version.created_by, version.created_at, version.document) == (7, at, ALPHA_TOML)


def test_migration_0018_indexes_received_at_and_names_users_stored_before(
    empty_engine: Engine,
) -> None:
    migrate(empty_engine, "0017")
    with empty_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO app_user (email, password_hash, role, active, created_at) "
                "VALUES ('dr@example.org', 'h', 'clinician', :yes, :at)"
            ),
            {"yes": True, "at": datetime.now(UTC)},
        )
    migrate(empty_engine)
    inspector = sa.inspect(empty_engine)
    for table in ("session_record", "safety_event", "device_message"):
        received = [i for i in inspector.get_indexes(table) if i["column_names"] == ["received_at"]]
        assert [i["name"] for i in received] == [f"ix_{table}_received"]
    with Session(empty_engine) as db:
        user = db.exec(select(UserRow)).one()
        assert user.display_name is None  # stored before: the email stands in
        user.display_name = "Dr Ada Byron"
        db.add(user)
        db.commit()
    with Session(empty_engine) as db:
        assert db.exec(select(UserRow.display_name)).one() == "Dr Ada Byron"

    config = alembic_config()
    with empty_engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0017")
    inspector = sa.inspect(empty_engine)
    assert "display_name" not in {c["name"] for c in inspector.get_columns("app_user")}
    for table in ("session_record", "safety_event", "device_message"):
        assert f"ix_{table}_received" not in {i["name"] for i in inspector.get_indexes(table)}
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT email FROM app_user")).scalars().all() == [
            "dr@example.org"
        ]
