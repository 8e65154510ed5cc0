"""The device's SQLite files (the store, the dose ledger) through plain ``sqlite3``.

Not SQLAlchemy, as on the server: the ORM and what it pulls in were ~20 MB of the agent's resident
memory (issue 6: ≤ 100 MB while playing) for a few fixed tables reached by simple queries. The
tables are created by migrations in plain SQL anyway.

Transactions are begun explicitly (``isolation_level=None``), not by the driver, which would begin
one only at the first write: a read-then-write (the sequence counter) could then interleave with
another writer's. Writers take the write lock at once (``BEGIN IMMEDIATE``, waiting up to the busy
timeout), readers get a consistent snapshot that blocks no writer (``BEGIN``, WAL).

Both files are opened first by ``open_sealed`` (one opener for the two): the data folder 0700 and
the file 0600, whatever the umask (SQLite gives the ``-wal``, ``-shm`` and ``-journal`` files it
creates the database file's mode), wider modes of an older install tightened; then the data key
found or made, and the layout created or migrated, in one ``BEGIN IMMEDIATE`` transaction.

The commands that only look (``resonera-device status``, ``history``, ``logs``, ``dose``) open them
with ``open_read_only`` instead: SQLite's ``mode=ro``, no folder, key or database made, no mode
changed, no migration. A missing file is ``NothingStored``; an older layout is refused with what
upgrades it (the service), since a reader that migrated would be a writer.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from resonera.common.errors import ResoneraError
from resonera.device.crypto_store import (
    DataKey,
    DataKeyMismatch,
    DataKeyMissing,
    create_key_file,
    missing_key_message,
    read_key_file,
)

log = logging.getLogger(__name__)

#: Idle connections kept for reuse; a thread more at once opens one of its own, closed after use.
MAX_IDLE = 4
#: The files SQLite keeps beside a database (WAL mode, and the rollback journal before it).
SIDECARS: Final = ("-wal", "-shm", "-journal")
FILE_MODE: Final = 0o600
FOLDER_MODE: Final = 0o700


class NothingStored(ResoneraError):
    """A read-only open found no file: nothing was recorded there yet (and nothing was created)."""


def read_only_uri(path: Path) -> str:
    """SQLite's URI for ``path`` opened read-only (``mode=ro``: it never creates the file)."""
    return f"{path.absolute().as_uri()}?mode=ro"


class LocalDB:
    """Short transactions on one SQLite file from any thread (a small pool of connections).

    ``read_only``: opened ``mode=ro`` (``query_only`` too), for a command that only looks; a write
    through it fails (``sqlite3.OperationalError``)."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_ms: int,
        foreign_keys: bool = False,
        read_only: bool = False,
    ) -> None:
        self.path = path
        self.read_only = read_only
        self._busy_timeout_ms = busy_timeout_ms
        self._foreign_keys = foreign_keys
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            read_only_uri(self.path) if self.read_only else str(self.path),
            isolation_level=None,
            check_same_thread=False,  # pooled: used by one thread at a time, not always the same
            timeout=self._busy_timeout_ms / 1000,
            uri=self.read_only,
        )
        if self.read_only:
            # The writer (the service) set WAL and FULL on the file; a reader changes nothing.
            conn.execute("PRAGMA query_only=ON")
        else:
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed record survives a power cut, which is the point of the outbox and
            # of the dose ledger.
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        if self._foreign_keys:
            conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            conn.execute(begin)
        except BaseException:
            conn.close()
            raise
        try:
            yield conn
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # a connection in an unknown state is not handed out again
                conn.close()
                raise
            self._give_back(conn)
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._give_back(conn)

    def _give_back(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A snapshot (``BEGIN``): consistent reads that block no writer."""
        return self._transaction("BEGIN")

    def write(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``), committed when the block ends without an
        exception, rolled back otherwise."""
        return self._transaction("BEGIN IMMEDIATE")

    def close(self) -> None:
        """Close the idle connections (the object stays usable: the next call opens anew)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def restrict_to_owner(path: Path, *, name: str, error: Callable[[str], ResoneraError]) -> None:
    """Make ``path``'s folder 0700 and ``path`` 0600 (created so when missing, whatever the umask),
    and any ``-wal``/``-shm``/``-journal`` beside it 0600. A wider mode (an install of before, or
    a file copied in) is tightened and logged; a file or folder whose mode cannot be changed (not
    the device user's) is refused with ``error``: it is never opened as it is."""
    folder = path.parent
    try:
        folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"cannot create data directory {folder}: {exc.strerror}") from None
    _tighten(folder, FOLDER_MODE, f"the data folder {folder}", error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise error(f"cannot open {name} {path}: {exc.strerror}") from None
    os.close(fd)
    _tighten(path, FILE_MODE, f"{name} {path}", error)
    for suffix in SIDECARS:
        _tighten(path.with_name(path.name + suffix), FILE_MODE, f"{name} {path}{suffix}", error)


def _tighten(path: Path, mode: int, what: str, error: Callable[[str], ResoneraError]) -> None:
    try:
        found = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:  # a sidecar SQLite has not made (or has just removed)
        return
    if found & 0o777 == mode:
        return
    try:
        path.chmod(found & ~0o777 | mode)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise error(
            f"{what} has mode {found:o} and cannot be restricted to its owner ({mode:o}): "
            f"{exc.strerror}; it must belong to the device's user"
        ) from None
    if found & 0o077:
        log.warning(
            "%s was open to others (mode %o): restricted to its owner (%o)", what, found, mode
        )


def open_sealed(
    path: Path,
    key_path: Path,
    *,
    name: str,
    error: Callable[[str], ResoneraError],
    recorded_key: Callable[[sqlite3.Connection], str | None],
    sealed_rows: Callable[[sqlite3.Connection], int],
    migrate: Callable[[sqlite3.Connection, DataKey], str | None],
) -> DataKey:
    """Open the sealed SQLite file ``path`` (the store, the dose ledger) for the first time in
    this process: owner-only modes (``restrict_to_owner``), then, in one ``BEGIN IMMEDIATE``
    transaction (two processes opening it at once migrate it once), find the data key at
    ``key_path`` or make one, and ``migrate`` the layout. Returns the key.

    ``recorded_key``: the key id the file records (None: none yet); ``sealed_rows``: how many rows
    need the key (asked only when the key file is missing: then a new key is made only if there
    are none). ``migrate(conn, key)`` creates or upgrades the layout and records the key's id; it
    returns a line to log when it rewrote rows (their old pages are overwritten: ``secure_delete``,
    and the WAL is checkpointed and emptied), else None. ``name`` ("the device store") and
    ``error`` (its exception type) make the messages."""
    restrict_to_owner(path, name=name, error=error)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    except sqlite3.Error as exc:
        raise error(f"cannot open {name} {path}: {exc}") from None
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        # rows rewritten by a migration (plaintext before sealing) are overwritten, not freed
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("BEGIN IMMEDIATE")
        try:
            key = _data_key(
                conn,
                path=path,
                key_path=key_path,
                name=name,
                recorded_key=recorded_key,
                sealed_rows=sealed_rows,
            )
            rewritten = migrate(conn, key)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if rewritten is not None:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            log.info("%s", rewritten)
        return key
    except sqlite3.DatabaseError as exc:
        raise error(f"cannot open {name} {path}: {exc}") from None
    finally:
        conn.close()


def open_read_only(
    path: Path,
    key_path: Path,
    *,
    name: str,
    absent: str,
    error: Callable[[str], ResoneraError],
    recorded_key: Callable[[sqlite3.Connection], str | None],
    sealed_rows: Callable[[sqlite3.Connection], int],
    check_schema: Callable[[sqlite3.Connection], None],
) -> DataKey:
    """Open the sealed SQLite file ``path`` to read it only: nothing is created (no folder, key or
    database; SQLite may add its ``-wal``/``-shm`` beside an existing file), no mode changed,
    nothing migrated. Returns the data key at ``key_path``.

    ``NothingStored(absent)`` when ``path`` does not exist. ``check_schema(conn)`` raises when the
    layout is not this software's (older: the service upgrades it; newer: a newer release's). A
    missing key is ``DataKeyMissing``, another store's key ``DataKeyMismatch``, as in
    ``open_sealed``. The other arguments are ``open_sealed``'s."""
    if not path.is_file():
        raise NothingStored(absent)
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None, timeout=10.0)
    except sqlite3.Error as exc:
        raise error(f"cannot open {name} {path}: {exc}") from None
    try:
        conn.execute("BEGIN")
        check_schema(conn)
        if not key_path.exists():
            raise DataKeyMissing(missing_key_message(key_path, sealed_rows(conn)))
        return _key_of(path, key_path, name=name, recorded=recorded_key(conn))
    except sqlite3.DatabaseError as exc:
        raise error(f"cannot open {name} {path}: {exc}") from None
    finally:
        conn.close()


def _key_of(path: Path, key_path: Path, *, name: str, recorded: str | None) -> DataKey:
    """The key file at ``key_path``, which must be the one ``path`` records (``recorded``)."""
    key = read_key_file(key_path)
    if recorded is not None and recorded != key.key_id:
        raise DataKeyMismatch(
            f"the data key {key_path} (id {key.key_id}) is not the key {name} {path} was "
            f"sealed with (id {recorded}); restore the right key file"
        )
    return key


def _data_key(
    conn: sqlite3.Connection,
    *,
    path: Path,
    key_path: Path,
    name: str,
    recorded_key: Callable[[sqlite3.Connection], str | None],
    sealed_rows: Callable[[sqlite3.Connection], int],
) -> DataKey:
    recorded = recorded_key(conn)
    if key_path.exists():
        return _key_of(path, key_path, name=name, recorded=recorded)
    sealed = sealed_rows(conn)
    if sealed:
        raise DataKeyMissing(missing_key_message(key_path, sealed))
    if recorded is not None:
        log.warning(
            "the data key %s was missing; %s holds no sealed record, so a new key is created",
            key_path,
            name,
        )
    try:
        return create_key_file(key_path)
    except FileExistsError:
        # The store and the ledger share the key, and each makes it when it finds none: the
        # other one (another process, or this one's other file) made it meanwhile. Take it.
        return read_key_file(key_path)


def to_db_time(value: datetime) -> str:
    """A time as the store has always kept it (SQLAlchemy's SQLite format): UTC, no zone."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def from_db_time(value: str) -> datetime:
    """A stored time (zone-less values are UTC), aware."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def open_data_file(
    path: Path,
    key_path: Path,
    *,
    read_only: bool,
    name: str,
    absent: str,
    error: Callable[[str], ResoneraError],
    recorded_key: Callable[[sqlite3.Connection], str | None],
    sealed_rows: Callable[[sqlite3.Connection], int],
    migrate: Callable[[sqlite3.Connection, DataKey], str | None],
    check_schema: Callable[[sqlite3.Connection], None],
) -> DataKey:
    """The store's and the ledger's one opener: ``open_read_only`` (``absent`` when there is no
    file, ``check_schema`` instead of migrating) or ``open_sealed`` (``migrate``)."""
    if read_only:
        return open_read_only(
            path,
            key_path,
            name=name,
            absent=absent,
            error=error,
            recorded_key=recorded_key,
            sealed_rows=sealed_rows,
            check_schema=check_schema,
        )
    return open_sealed(
        path,
        key_path,
        name=name,
        error=error,
        recorded_key=recorded_key,
        sealed_rows=sealed_rows,
        migrate=migrate,
    )
