"""The database engine and the one write primitive ingest needs: insert-or-ignore.

SQLite on one machine, PostgreSQL when growing: the URL decides. Tables are created with
``create_all`` for now; migrations (Alembic) replace ``init_db`` when the schema first changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlmodel import SQLModel, create_engine

from resonera.common.errors import ConfigError, ResoneraError
from resonera.server import models  # noqa: F401  (registers the tables in SQLModel.metadata)

SQLITE_BUSY_TIMEOUT_MS = 5000


def make_engine(database_url: str) -> Engine:
    """An engine for ``database_url``; raise ``ConfigError`` for a URL SQLAlchemy cannot use."""
    try:
        engine = create_engine(database_url, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(f"database_url {database_url!r} is not usable: {exc}") from None
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"database_url {database_url!r} needs the Python package {exc.name!r}"
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL: the API reads while ingest writes; busy_timeout: writers from several processes wait
    # for each other instead of failing at once; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


class DatabaseUnavailableError(ResoneraError):
    """The database cannot be opened or refused us."""


def init_db(engine: Engine) -> None:
    """Create missing tables (idempotent); raise ``DatabaseUnavailableError`` (one line)."""
    try:
        SQLModel.metadata.create_all(engine)
    except SQLAlchemyError as exc:
        where = engine.url.render_as_string(hide_password=True)
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        raise DatabaseUnavailableError(f"cannot use the database {where}: {cause}") from None


def check_db(engine: Engine) -> None:
    """Run ``SELECT 1``; raise whatever the driver raises when the database is not usable."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def insert_ignore(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    returning: Sequence[str],
) -> list[tuple[Any, ...]]:
    """Insert ``rows``, skipping any whose ``key`` columns already exist; return ``returning``
    columns of the rows actually inserted. Works on SQLite and PostgreSQL (``ON CONFLICT DO
    NOTHING``); the caller owns the transaction."""
    if not rows:
        return []
    name = conn.dialect.name
    if name == "sqlite":
        stmt: Any = sqlite.insert(table).on_conflict_do_nothing(index_elements=list(key))
    elif name == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=list(key))
    else:
        raise ConfigError(f"database dialect {name!r} is not supported (use SQLite or PostgreSQL)")
    stmt = stmt.returning(*(table.c[column] for column in returning))
    result = conn.execute(stmt, list(rows))
    return [tuple(row) for row in result]
