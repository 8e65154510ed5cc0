"""The device's SQLite files (the store, the dose ledger) through plain ``sqlite3``.

Not SQLAlchemy, as on the server: the ORM and what it pulls in were ~20 MB of the agent's resident
memory (issue 6: ≤ 100 MB while playing) for a few fixed tables reached by simple queries. The
tables are created by migrations in plain SQL anyway.

Transactions are begun explicitly (``isolation_level=None``), not by the driver, which would begin
one only at the first write: a read-then-write (the sequence counter) could then interleave with
another writer's. Writers take the write lock at once (``BEGIN IMMEDIATE``, waiting up to the busy
timeout), readers get a consistent snapshot that blocks no writer (``BEGIN``, WAL).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

#: Idle connections kept for reuse; a thread more at once opens one of its own, closed after use.
MAX_IDLE = 4


class LocalDB:
    """Short transactions on one SQLite file from any thread (a small pool of connections)."""

    def __init__(self, path: Path, *, busy_timeout_ms: int, foreign_keys: bool = False) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._foreign_keys = foreign_keys
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,  # pooled: used by one thread at a time, not always the same
            timeout=self._busy_timeout_ms / 1000,
        )
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


def to_db_time(value: datetime) -> str:
    """A time as the store has always kept it (SQLAlchemy's SQLite format): UTC, no zone."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def from_db_time(value: str) -> datetime:
    """A stored time (zone-less values are UTC), aware."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
