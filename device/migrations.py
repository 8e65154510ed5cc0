"""The device store's schema, as ordered migrations, so a device upgraded in the field keeps its data.

``schema_version`` holds one row per migration applied. A store from before migrations existed (the
first release: ``sessions``, ``safety_events``, ``outbox``, ``counters`` with plaintext JSON) has no
``schema_version`` table but has an ``outbox``: it is at version 1. A new, empty file is at 0 and
goes through the same steps, so a fresh device and an upgraded one end with the same layout.

The caller runs ``migrate`` inside one ``BEGIN IMMEDIATE`` transaction (plain ``sqlite3`` with
``isolation_level=None``, so DDL is transactional too): a power cut mid-migration leaves the previous
version, whole, and two processes opening the store at once migrate it once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from resonera.common.errors import ResoneraError
from resonera.device.crypto_store import DataKey, SealedDataCorrupt


class SchemaTooNew(ResoneraError):
    """The store was written by a newer release than this one."""


Migration = Callable[[sqlite3.Connection, DataKey], None]


def _v1_first_release(conn: sqlite3.Connection, _key: DataKey) -> None:
    """The layout of the first release (plaintext JSON), kept as it was created then."""
    for ddl in (
        "CREATE TABLE sessions (session_id VARCHAR NOT NULL, started_at DATETIME NOT NULL, "
        "record_json VARCHAR NOT NULL, PRIMARY KEY (session_id))",
        "CREATE INDEX ix_sessions_started_at ON sessions (started_at)",
        "CREATE TABLE safety_events (event_id VARCHAR NOT NULL, at DATETIME NOT NULL, "
        "type VARCHAR NOT NULL, record_json VARCHAR NOT NULL, PRIMARY KEY (event_id))",
        "CREATE INDEX ix_safety_events_at ON safety_events (at)",
        "CREATE INDEX ix_safety_events_type ON safety_events (type)",
        "CREATE TABLE outbox (message_id VARCHAR NOT NULL, seq INTEGER NOT NULL, "
        "kind VARCHAR NOT NULL, topic VARCHAR NOT NULL, payload BLOB NOT NULL, "
        "created_at DATETIME NOT NULL, PRIMARY KEY (message_id), UNIQUE (seq))",
        "CREATE TABLE counters (name VARCHAR NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (name))",
    ):
        conn.execute(ddl)


def _v2_sealed_health_data(conn: sqlite3.Connection, key: DataKey) -> None:
    """Sessions, safety events and outbox payloads sealed (AES-GCM); the desired state and a small
    key-value table (``meta``: the data key's id, last sync) added."""
    conn.execute(
        "CREATE TABLE sessions_v2 (session_id VARCHAR NOT NULL PRIMARY KEY, "
        "started_at DATETIME NOT NULL, sealed BLOB NOT NULL)"
    )
    for session_id, started_at, record_json in conn.execute(
        "SELECT session_id, started_at, record_json FROM sessions"
    ).fetchall():
        conn.execute(
            ("INSERT INTO sessions_v2 VALUES (:i, :t, :s)"),
            {
                "i": session_id,
                "t": started_at,
                "s": key.seal(record_json.encode(), f"sessions:{session_id}"),
            },
        )
    conn.execute(
        "CREATE TABLE safety_events_v2 (event_id VARCHAR NOT NULL PRIMARY KEY, "
        "at DATETIME NOT NULL, type VARCHAR NOT NULL, sealed BLOB NOT NULL)"
    )
    for event_id, at, kind, record_json in conn.execute(
        "SELECT event_id, at, type, record_json FROM safety_events"
    ).fetchall():
        conn.execute(
            ("INSERT INTO safety_events_v2 VALUES (:i, :a, :k, :s)"),
            {
                "i": event_id,
                "a": at,
                "k": kind,
                "s": key.seal(record_json.encode(), f"safety_events:{event_id}"),
            },
        )
    conn.execute(
        "CREATE TABLE outbox_v2 (message_id VARCHAR NOT NULL PRIMARY KEY, seq INTEGER NOT NULL "
        "UNIQUE, kind VARCHAR NOT NULL, topic VARCHAR NOT NULL, sealed BLOB NOT NULL, "
        "size INTEGER NOT NULL, created_at DATETIME NOT NULL)"
    )
    for message_id, seq, kind, topic, payload, created_at in conn.execute(
        "SELECT message_id, seq, kind, topic, payload, created_at FROM outbox"
    ).fetchall():
        conn.execute(
            ("INSERT INTO outbox_v2 VALUES (:i, :q, :k, :t, :s, :n, :c)"),
            {
                "i": message_id,
                "q": seq,
                "k": kind,
                "t": topic,
                "s": key.seal(bytes(payload), f"outbox:{message_id}"),
                "n": len(payload),
                "c": created_at,
            },
        )
    for table in ("sessions", "safety_events", "outbox"):
        conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE {table}_v2 RENAME TO {table}")
    for ddl in (
        "CREATE INDEX ix_sessions_started_at ON sessions (started_at)",
        "CREATE INDEX ix_safety_events_at ON safety_events (at)",
        "CREATE INDEX ix_safety_events_type ON safety_events (type)",
        "CREATE INDEX ix_outbox_kind_seq ON outbox (kind, seq)",
        "CREATE TABLE desired_state (version INTEGER NOT NULL PRIMARY KEY, "
        "status VARCHAR NOT NULL, sealed BLOB NOT NULL, received_at DATETIME NOT NULL, "
        "applied_at DATETIME)",
        "CREATE TABLE meta (name VARCHAR NOT NULL PRIMARY KEY, value VARCHAR NOT NULL)",
    ):
        conn.execute(ddl)


def _v3_checkins(conn: sqlite3.Connection, _key: DataKey) -> None:
    """Check-in answers (issue 12), sealed like sessions; ``reason`` says why one was skipped
    (device-side only: the synced record says just that it was)."""
    for ddl in (
        "CREATE TABLE checkins (record_id VARCHAR NOT NULL PRIMARY KEY, "
        "session_id VARCHAR NOT NULL, answered_at DATETIME NOT NULL, "
        "reason VARCHAR NOT NULL DEFAULT '', sealed BLOB NOT NULL)",
        "CREATE INDEX ix_checkins_answered_at ON checkins (answered_at)",
    ):
        conn.execute(ddl)


def _v4_events_only_sealed(conn: sqlite3.Connection, key: DataKey) -> None:
    """Safety events keep nothing in clear (issue 26): their time and type were columns beside
    the seal, and the row's key was the event's id, a UUIDv7, whose first 48 bits are its time to
    the millisecond. All three are inside the seal already; a row is now keyed by ``n``, its place
    in the order of recording, all a listing ("newest first") needs, and its seal is bound to
    that. Existing rows are re-sealed in the order of their times, so they list as before; one
    that does not open (damaged) is copied as it is and stays unreadable, as it was. The old
    table's pages are overwritten (the caller's ``secure_delete``), not just freed."""
    conn.execute(
        "CREATE TABLE safety_events_v4 (n INTEGER NOT NULL PRIMARY KEY, sealed BLOB NOT NULL)"
    )
    rows = conn.execute(
        "SELECT event_id, sealed FROM safety_events ORDER BY at, event_id"
    ).fetchall()
    for n, (event_id, sealed) in enumerate(rows, start=1):
        try:
            resealed = key.seal(key.open(sealed, f"safety_events:{event_id}"), f"safety_events:{n}")
        except SealedDataCorrupt:
            resealed = sealed
        conn.execute("INSERT INTO safety_events_v4 (n, sealed) VALUES (?, ?)", (n, resealed))
    conn.execute("DROP TABLE safety_events")  # and its indexes on the time and the type
    conn.execute("ALTER TABLE safety_events_v4 RENAME TO safety_events")


def _v5_prescribed_programs(conn: sqlite3.Connection, _key: DataKey) -> None:
    """The programs a clinician prescribed (issue 20): each applied (or pending) desired state's
    programs this device accepted, one row per program, its entry (definition, library id and
    version, SHA-256) sealed and bound to its version and place in the clinician's order; nothing
    about it in clear but those two numbers. An applied document of before keeps no rows: the
    agent reviews its programs again at its next start (its engine was never reported)."""
    conn.execute(
        "CREATE TABLE prescribed_programs (desired_version INTEGER NOT NULL, "
        "position INTEGER NOT NULL, sealed BLOB NOT NULL, PRIMARY KEY (desired_version, position))"
    )


#: In order; index + 1 is the version a migration brings the store to. Append only.
MIGRATIONS: Final[tuple[Migration, ...]] = (
    _v1_first_release,
    _v2_sealed_health_data,
    _v3_checkins,
    _v4_events_only_sealed,
    _v5_prescribed_programs,
)
LATEST: Final = len(MIGRATIONS)


def current_version(conn: sqlite3.Connection) -> int:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "schema_version" in tables:
        value = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        return int(value or 0)
    return 1 if "outbox" in tables else 0


def sealed_record_count(conn: sqlite3.Connection) -> int:
    """Rows that need the data key to be read (0 before migration 2)."""
    version = current_version(conn)
    if version < 2:
        return 0
    total = 0
    tables: tuple[str, ...] = ("sessions", "safety_events", "outbox", "desired_state")
    if version >= 3:
        tables = (*tables, "checkins")
    if version >= 5:
        tables = (*tables, "prescribed_programs")
    for table in tables:
        total += int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] or 0)
    return total


def migrate(conn: sqlite3.Connection, key: DataKey) -> list[int]:
    """Bring the store to ``LATEST`` inside the caller's transaction; the versions applied."""
    version = current_version(conn)
    if version > LATEST:
        raise SchemaTooNew(
            f"the device store is at schema version {version}, newer than this software "
            f"({LATEST}); install the newer release again"
        )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL PRIMARY KEY, "
        "applied_at DATETIME NOT NULL)"
    )
    now = datetime.now(UTC).isoformat()
    if version == 1 and not conn.execute("SELECT 1 FROM schema_version").fetchone():
        conn.execute(("INSERT INTO schema_version VALUES (1, :t)"), {"t": now})
    applied = []
    for target in range(version + 1, LATEST + 1):
        MIGRATIONS[target - 1](conn, key)
        conn.execute(("INSERT INTO schema_version VALUES (:v, :t)"), {"v": target, "t": now})
        applied.append(target)
    return applied
