"""The database: engine, schema migrations (Alembic, run in-process), and insert-or-ignore.

SQLite on one machine, PostgreSQL (``postgresql+psycopg://``) when growing: the URL decides. The
schema belongs to the migrations in ``resonera.server.migrations``: ``migrate`` brings a database to
the newest revision, ``require_current_schema`` refuses to serve a database that is behind (with the
command to run).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from operator import itemgetter
from typing import Any, Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlmodel import create_engine

from resonera.common.errors import ConfigError, ResoneraError
from resonera.server import models  # noqa: F401  (registers the tables in SQLModel.metadata)

SQLITE_BUSY_TIMEOUT_MS: Final = 5000
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
    the transaction.

    When the rows share their columns and the others have constant defaults, the statements go
    to the driver as text with values converted by the columns' own bind processors
    (``_driver_params``): SQLAlchemy's per-row work for a compiled many-row statement was most
    of an ingest batch's cost."""
    if not rows:
        return []
    stmt: Any = _dialect_insert(conn, table).on_conflict_do_nothing(index_elements=list(key))
    defaults = _scalar_defaults(table, rows[0]) if _same_columns(rows) else None
    if (
        conn.dialect.name == "postgresql"
        and defaults is not None
        and _raw_results(conn, table, returning)
    ):
        return _postgresql_insert_many(conn, table, rows, key, returning, defaults)
    if conn.dialect.name == "sqlite" and all(name in rows[0] for name in returning):
        pick = itemgetter(*key)
        wanted = [pick(row) for row in rows] if len(key) > 1 else [(row[key[0]],) for row in rows]
        present = _sqlite_present(conn, table, key, wanted)
        if defaults is not None:
            names, params = _driver_params(conn, table, rows, defaults)
            quote = conn.dialect.identifier_preparer.quote
            conn.exec_driver_sql(
                f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
                f"VALUES ({', '.join('?' * len(names))}) "
                f"ON CONFLICT ({', '.join(quote(n) for n in key)}) DO NOTHING",
                params,
            )
        else:
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


_KEYS_PER_QUERY: Final = 500


def _processor(conn: Connection, table: Table, name: str) -> Any:
    # The dialect's own type (SQLite's DATETIME writes "...:00.000000", what queries compare
    # with), not the generic one (whose None leaves the driver to write "...:00").
    return table.c[name].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)


def _raw_results(conn: Connection, table: Table, names: Sequence[str]) -> bool:
    """Whether the driver's values of these columns are already what SQLAlchemy would return."""
    return all(
        table.c[name].type.dialect_impl(conn.dialect).result_processor(conn.dialect, None) is None
        for name in names
    )


def _scalar_defaults(table: Table, row: dict[str, Any]) -> dict[str, Any] | None:
    """The Python-side defaults of the columns ``row`` leaves out; None if one is not a constant
    (a function: only SQLAlchemy's own execution runs those)."""
    out: dict[str, Any] = {}
    for column in table.columns:
        default = column.default
        if column.name in row or default is None:
            continue
        if not default.is_scalar:
            return None
        out[column.name] = default.arg  # type: ignore[attr-defined]
    return out


def _same_columns(rows: Sequence[dict[str, Any]]) -> bool:
    first = rows[0].keys()
    return all(row.keys() == first for row in rows)


def _sqlite_present(
    conn: Connection, table: Table, key: Sequence[str], wanted: list[tuple[Any, ...]]
) -> set[tuple[Any, ...]]:
    """Which of the ``wanted`` keys are stored. A join with the keys as a ``VALUES`` table: SQLite
    answers ``(a, b) IN (...)`` by scanning the whole unique index (a second per batch at a million
    sessions), the join with one index search per key."""
    processors = [_processor(conn, table, name) for name in key]
    driver_keys = [
        tuple(v if p is None else p(v) for v, p in zip(row_key, processors, strict=True))
        for row_key in wanted
    ]
    quote = conn.dialect.identifier_preparer.quote
    columns = ", ".join(f"t.{quote(name)}" for name in key)
    match = " AND ".join(
        f"t.{quote(name)} = v.column{number}" for number, name in enumerate(key, start=1)
    )
    one = "(" + ", ".join("?" * len(key)) + ")"
    found: set[tuple[Any, ...]] = set()
    for start in range(0, len(driver_keys), _KEYS_PER_QUERY):
        chunk = driver_keys[start : start + _KEYS_PER_QUERY]
        query = (
            f"SELECT {columns} FROM (VALUES {', '.join([one] * len(chunk))}) AS v "
            f"JOIN {quote(table.name)} AS t ON {match}"
        )
        flat = tuple(value for row_key in chunk for value in row_key)
        found.update(tuple(r) for r in conn.exec_driver_sql(query, flat))
    return {w for w, d in zip(wanted, driver_keys, strict=True) if d in found}


def _driver_params(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], defaults: dict[str, Any]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and, per row, the values as the driver takes them: converted by the columns'
    own bind processors, missing columns filled with their constant defaults."""
    names = [*rows[0], *defaults]
    count = len(rows)
    columns: list[list[Any]] = []
    # Column by column: one C-level map per column instead of a generator step per value.
    for name in names:
        process = _processor(conn, table, name)
        values = [row[name] for row in rows] if name in rows[0] else [defaults[name]] * count
        if process is not None:
            if values.count(values[0]) == count:  # e.g. received_at: one conversion per batch
                values = [process(values[0])] * count
            else:
                values = list(map(process, values))
        columns.append(values)
    return names, list(zip(*columns, strict=True))


#: PostgreSQL takes at most 65,535 parameters in one statement.
_PG_MAX_PARAMS: Final = 60_000


def _postgresql_insert_many(  # noqa: PLR0917 (the arguments of insert_ignore, passed on)
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    key: Sequence[str],
    returning: Sequence[str],
    defaults: dict[str, Any],
) -> list[tuple[Any, ...]]:
    """PostgreSQL's ``insert_ignore``: multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING``
    sent to the driver as it is, values converted as in ``_driver_params``."""
    names, params = _driver_params(conn, table, rows, defaults)
    quote = conn.dialect.identifier_preparer.quote
    head = f"INSERT INTO {quote(table.name)} ({', '.join(quote(name) for name in names)}) VALUES "
    tail = (
        f" ON CONFLICT ({', '.join(quote(name) for name in key)}) DO NOTHING "
        f"RETURNING {', '.join(quote(name) for name in returning)}"
    )
    one = "(" + ", ".join(["%s"] * len(names)) + ")"
    step = max(1, _PG_MAX_PARAMS // len(names))
    out: list[tuple[Any, ...]] = []
    for start in range(0, len(params), step):
        chunk = params[start : start + step]
        sql = head + ", ".join([one] * len(chunk)) + tail
        flat = tuple(value for row in chunk for value in row)
        out.extend(tuple(r) for r in conn.exec_driver_sql(sql, flat))
    return out


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
