"""The database: engine, schema migrations (Alembic, run in-process), and insert-or-ignore.

SQLite on one machine, PostgreSQL (``postgresql+psycopg://``) when growing: the URL decides. The
schema belongs to the migrations in ``resonera.server.migrations``: ``migrate`` brings a database to
the newest revision, ``require_current_schema`` refuses to serve a database that is behind (with the
command to run).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib.resources import files
from typing import Any, Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Table, event, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlmodel import create_engine

from resonera.common.errors import ConfigError, ResoneraError
from resonera.server import models  # noqa: F401  (registers the tables in SQLModel.metadata)

SQLITE_BUSY_TIMEOUT_MS: Final = 5000
# Alembic announces every connection at INFO; `migrate` prints its own one-line summary.
logging.getLogger("alembic").setLevel(logging.WARNING)
MIGRATE_HINT: Final = "resonera-server migrate --config <your config file>"


class DatabaseUnavailableError(ResoneraError):
    """The database cannot be opened or refused us."""


class SchemaBehindError(ResoneraError):
    """The database's schema is older (or other) than this server's; migrate first."""


def make_engine(database_url: str, *, pool_size: int = 10) -> Engine:
    """An engine for ``database_url``; raise ``ConfigError`` for a URL SQLAlchemy cannot use."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if database_url.startswith("postgresql"):
        kwargs.update(pool_size=pool_size, max_overflow=pool_size)
    try:
        engine = create_engine(database_url, **kwargs)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(f"database_url {database_url!r} is not usable: {exc}") from None
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"database_url {database_url!r} needs the Python package {exc.name!r}"
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    elif engine.dialect.name != "postgresql":
        raise ConfigError(
            f"database_url {database_url!r}: only SQLite and PostgreSQL are supported"
        )
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


def where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _unavailable(engine: Engine, exc: SQLAlchemyError) -> DatabaseUnavailableError:
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return DatabaseUnavailableError(f"cannot use the database {where(engine)}: {first_line}")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("resonera.server") / "migrations"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision, None for an empty (never migrated) database."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise _unavailable(engine, exc) from None


def migrate(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade to ``revision``; return (revision before, revision after)."""
    before = current_revision(engine)
    config = alembic_config()
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    except SQLAlchemyError as exc:
        raise _unavailable(engine, exc) from None
    return before, current_revision(engine) or ""


def require_current_schema(engine: Engine) -> None:
    """Raise ``SchemaBehindError`` (one line, with the command) unless the schema is at head."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    state = "empty (no schema yet)" if current is None else f"at revision {current}"
    raise SchemaBehindError(
        f"the database {where(engine)} is {state}, this server needs revision {head}; "
        f"run: {MIGRATE_HINT}"
    )


def init_db(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent); ``DatabaseUnavailableError``."""
    migrate(engine)


def check_db(engine: Engine) -> None:
    """Run ``SELECT 1``; raise whatever the driver raises when the database is not usable."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def lock_for_write(conn: Connection) -> None:
    """On SQLite, take the database's write lock now, at the start of the transaction: reads that
    follow then see a state no other writer can change before we commit (``insert_ignore`` relies
    on it there). PostgreSQL needs nothing (row locks and ``ON CONFLICT``)."""
    if conn.dialect.name == "sqlite":
        # A write statement takes the lock even when it changes no row.
        conn.execute(text("UPDATE alembic_version SET version_num = version_num WHERE 0"))


def insert_ignore(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    returning: Sequence[str],
) -> list[tuple[Any, ...]]:
    """Insert ``rows``, skipping any whose ``key`` columns already exist; return ``returning``
    columns of the rows actually inserted. PostgreSQL: ``ON CONFLICT DO NOTHING RETURNING``.
    SQLite, when ``returning`` names columns of ``rows``: the keys already present are read first,
    then one ``executemany`` (``RETURNING`` with many rows is several times slower there); exact
    because the caller's transaction holds the write lock (``lock_for_write``). The caller owns
    the transaction."""
    if not rows:
        return []
    stmt: Any = _dialect_insert(conn, table).on_conflict_do_nothing(index_elements=list(key))
    if conn.dialect.name == "sqlite" and all(name in rows[0] for name in returning):
        columns = [table.c[name] for name in key]
        wanted = [tuple(row[name] for name in key) for row in rows]
        present: set[tuple[Any, ...]] = set()
        for start in range(0, len(wanted), 500):
            query = select(*columns).where(tuple_(*columns).in_(wanted[start : start + 500]))
            present.update(tuple(r) for r in conn.execute(query))
        conn.execute(stmt, list(rows))
        out: list[tuple[Any, ...]] = []
        for row, row_key in zip(rows, wanted, strict=True):
            if row_key not in present:
                present.add(row_key)  # the same key twice in ``rows``: only the first is new
                out.append(tuple(row[name] for name in returning))
        return out
    stmt = stmt.returning(*(table.c[column] for column in returning))
    result = conn.execute(stmt, list(rows))
    return [tuple(row) for row in result]


def _dialect_insert(conn: Connection, table: Table) -> Any:
    name = conn.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise ConfigError(f"database dialect {name!r} is not supported (use SQLite or PostgreSQL)")


def upsert(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    update: dict[str, Any],
    where: Any = None,
) -> None:
    """``INSERT ... ON CONFLICT (key) DO UPDATE SET update [WHERE where]`` on either dialect.
    ``update`` values may refer to ``excluded`` columns via ``upsert_excluded``."""
    if not rows:
        return
    stmt: Any = _dialect_insert(conn, table)
    values = {name: fn(stmt.excluded) if callable(fn) else fn for name, fn in update.items()}
    condition = where(stmt.excluded) if callable(where) else where
    stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=values, where=condition)
    conn.execute(stmt, list(rows))
