"""The device's local store: sessions, safety events, the outbox and the desired state, in SQLite
(WAL, ``synchronous=FULL``), one transaction per record, health data sealed at rest.

A session (or safety event) record and its outbox message are written in the same transaction, so
a crash leaves either both or neither. The per-device sequence number lives in the same database
and is taken in that transaction too, so it never repeats across restarts. Outbox rows are deleted
only when the server's application ack names them, or, for ``metrics`` only, when the outbox passes
its size or age bound (oldest first): sessions, safety events and reports are never dropped.

The programs a clinician prescribed (issue 20) are kept per desired-state version, one sealed row
per program this device accepted (``prescribed_programs``), written in the transaction that keeps
the document, so the set in force changes whole or not at all and plays offline after a restart.

Sessions, safety events, check-in answers, outbox payloads and desired-state documents are sealed
with AES-GCM under the device data key (``crypto_store``), which lives in a file apart from the
database. A safety event keeps nothing in clear but its place in the order of recording. The file
is the device user's alone (0600, its folder 0700: ``localdb.open_sealed``, the dose ledger's
opener too). The layout is versioned (``migrations``): opening an older store upgrades it in
place, keeping its data.

Why one module of some 500 lines: ``DeviceStore`` is one database behind one class, and its parts
are not apart: a record of any kind, its outbox message and the sequence number are written in one
transaction, under one seal; the outbox's bounds (``OutboxLimits``) are applied in that transaction
too. The connection, the sealing and the opener (``localdb``, ``crypto_store``, ``migrations``) are
already modules of their own; what is left is the tables' SQL.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field

from resonera.common import topics
from resonera.common.clock import Clock, utc_now
from resonera.common.envelope import Envelope
from resonera.common.errors import ResoneraError
from resonera.common.prescription import ProgramReport
from resonera.common.profile import HearingProfile
from resonera.common.records import CheckInRecord, SafetyEventRecord, SessionRecord
from resonera.common.signing import sign_envelope
from resonera.device import migrations
from resonera.device.crypto_store import DataKey
from resonera.device.localdb import (
    LocalDB,
    from_db_time,
    open_data_file,
    to_db_time,
)
from resonera.device.prescriptions import AssignedProgram

log = logging.getLogger(__name__)

DesiredStatus = Literal["applied", "pending", "superseded"]


class StoreError(ResoneraError):
    """The local store cannot be opened or written."""


class OutboxLimits(BaseModel):
    """How big and how old the outbox may grow before ``metrics`` are thinned (oldest first);
    sessions, safety events and reports are never dropped."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    max_age_s: float = Field(default=30 * 24 * 3600.0, gt=0.0)


@dataclass(frozen=True)
class OutboxMessage:
    """One queued message, its payload opened (the signed envelope's JSON bytes)."""

    message_id: str
    seq: int
    kind: str
    topic: str
    payload: bytes
    created_at: datetime


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    bytes: int
    by_kind: dict[str, int]
    oldest: datetime | None
    metrics_thinned: int


@dataclass(frozen=True)
class StoredDesired:
    version: int
    status: str
    content: dict[str, Any]
    profile: HearingProfile | None
    received_at: datetime
    applied_at: datetime | None
    #: What became of each prescribed program of this version (None: kept before issue 20).
    programs: tuple[ProgramReport, ...] | None = None


def default_key_path(store_path: Path) -> Path:
    return store_path.parent / "keys" / "data.key"


class DeviceStore:
    """Thread-safe: each call opens its own short transaction."""

    def __init__(
        self,
        path: Path,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
        *,
        data_key_path: Path | None = None,
        outbox_limits: OutboxLimits | None = None,
        clock: Clock = utc_now,
        read_only: bool = False,
    ) -> None:
        """``signing_key``: the device's own key (that of its certificate); every queued message is
        then signed with it, so the server can tell it came from this device and was not altered.

        ``clock`` dates what the store stamps itself (queue times, acks, applied desired states)
        and the outbox's age bound.

        ``data_key_path``: the data key (default ``keys/data.key`` next to the database). It is
        created with a new store; when sealed records exist and it is gone, ``DataKeyMissing``.

        ``read_only``: for a command that only looks (``localdb.open_read_only``): nothing is
        created or migrated; ``NothingStored`` ("no store at …") when there is no store, a
        ``StoreError`` when its layout is older than this software's (the service upgrades it). A
        write through such a store fails.
        """
        self.path = path
        self.signing_key = signing_key
        self.limits = outbox_limits or OutboxLimits()
        self.clock = clock
        self.data_key_path = data_key_path or default_key_path(path)
        self.key = open_data_file(
            path,
            self.data_key_path,
            read_only=read_only,
            name="the device store",
            absent=f"no store at {path}: nothing recorded on this device yet",
            error=StoreError,
            recorded_key=_recorded_key,
            sealed_rows=migrations.sealed_record_count,
            migrate=self._migrate,
            check_schema=self._check_schema,
        )
        self._db = LocalDB(path, busy_timeout_ms=10_000, foreign_keys=True, read_only=read_only)

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        """A store opened read-only must already be at this software's layout: reading never
        migrates (the service, or ``resonera-device run``, does)."""
        version = migrations.current_version(conn)
        if version > migrations.LATEST:
            raise migrations.SchemaTooNew(
                f"the device store {self.path} is at schema version {version}, newer than this "
                f"software ({migrations.LATEST}); install the newer release again"
            )
        if version < migrations.LATEST:
            raise StoreError(
                f"the device store {self.path} is at schema version {version}, older than this "
                f"software's ({migrations.LATEST}): start the service (resonera-device run) once "
                "to upgrade it; this command only reads and changes nothing"
            )

    def _migrate(self, conn: sqlite3.Connection, key: DataKey) -> str | None:
        """Bring the schema up to date (inside ``open_sealed``'s transaction)."""
        applied = migrations.migrate(conn, key)
        _set_meta(conn, "data_key_id", key.key_id)
        return f"device store {self.path} migrated to schema {applied[-1]}" if applied else None

    def close(self) -> None:
        self._db.close()

    # --- sealing ---------------------------------------------------------------------------------

    def _seal(self, table: str, row_id: str, plaintext: bytes) -> bytes:
        return self.key.seal(plaintext, f"{table}:{row_id}")

    def _open(self, table: str, row_id: str, sealed: bytes) -> bytes:
        return self.key.open(sealed, f"{table}:{row_id}")

    # --- records ---------------------------------------------------------------------------------

    def _next_seq(self, db: sqlite3.Connection) -> int:
        return self._bump(db, "seq") - 1

    def _bump(self, db: sqlite3.Connection, name: str, by: int = 1) -> int:
        row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        value = (int(row[0]) if row else 0) + by
        db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", (name, value))
        return value

    def counter(self, name: str) -> int:
        with self._db.read() as db:
            row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def record_session(self, device_id: str, record: SessionRecord) -> Envelope:
        """Store the session and queue its message, atomically; return the queued envelope."""
        sealed = self._seal("sessions", record.session_id, record.model_dump_json().encode())
        with self._db.write() as db:
            envelope = self._queue(db, device_id, "session", record.model_dump(mode="json"))
            db.execute(
                "INSERT INTO sessions (session_id, started_at, sealed) VALUES (?, ?, ?)",
                (record.session_id, to_db_time(record.started_at), sealed),
            )
        return envelope

    def record_event(self, device_id: str, record: SafetyEventRecord) -> Envelope:
        """Store a safety event and queue its ``event`` message, atomically (like sessions).

        Only its place in the order of recording (``n``) is in clear: its time, type and id (a
        UUIDv7, which holds the time) are in the seal, which is bound to ``n``."""
        plaintext = record.model_dump_json().encode()
        with self._db.write() as db:
            envelope = self._queue(db, device_id, "event", record.model_dump(mode="json"))
            n = int(db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM safety_events").fetchone()[0])
            db.execute(
                "INSERT INTO safety_events (n, sealed) VALUES (?, ?)",
                (n, self._seal("safety_events", str(n), plaintext)),
            )
        return envelope

    def record_checkin(self, device_id: str, record: CheckInRecord) -> Envelope:
        """Store a check-in answer and queue its ``checkin`` message, atomically (like sessions:
        never thinned). Why a skipped one was skipped (``skip_reason``) goes to the server in the
        record; the ``reason`` column keeps it readable without opening the seal."""
        sealed = self._seal("checkins", record.id, record.model_dump_json().encode())
        with self._db.write() as db:
            envelope = self._queue(db, device_id, "checkin", record.model_dump(mode="json"))
            db.execute(
                "INSERT INTO checkins (record_id, session_id, answered_at, reason, sealed) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.session_id,
                    to_db_time(record.answered_at),
                    record.skip_reason or "",
                    sealed,
                ),
            )
        return envelope

    def checkins(self, limit: int = 100) -> list[tuple[CheckInRecord, str]]:
        """Check-in answers with why each skipped one was (""), most recent first."""
        with self._db.read() as db:
            rows = db.execute(
                "SELECT record_id, reason, sealed FROM checkins "
                "ORDER BY answered_at DESC, record_id LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            (CheckInRecord.model_validate_json(self._open("checkins", row_id, sealed)), reason)
            for row_id, reason, sealed in rows
        ]

    def events(self, limit: int = 100) -> list[SafetyEventRecord]:
        """Safety events, the most recently recorded first (events are recorded as they happen;
        one recorded late, e.g. a dose ledger reset whose event is written after a restart,
        comes first and its ``at`` says when it happened)."""
        with self._db.read() as db:
            rows = db.execute(
                "SELECT n, sealed FROM safety_events ORDER BY n DESC LIMIT ?", (limit,)
            ).fetchall()
        return [
            SafetyEventRecord.model_validate_json(self._open("safety_events", str(n), sealed))
            for n, sealed in rows
        ]

    def sessions(self, limit: int = 100) -> list[SessionRecord]:
        """Most recent first."""
        with self._db.read() as db:
            rows = db.execute(
                "SELECT session_id, sealed FROM sessions ORDER BY started_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            SessionRecord.model_validate_json(self._open("sessions", session_id, sealed))
            for session_id, sealed in rows
        ]

    def sessions_since(self, since: datetime) -> int:
        with self._db.read() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM sessions WHERE started_at >= ?", (to_db_time(since),)
            ).fetchone()
        return int(row[0])

    # --- outbox ----------------------------------------------------------------------------------

    def queue_message(self, device_id: str, kind: topics.UpKind, body: dict[str, Any]) -> Envelope:
        """Queue one message of ``kind`` on its own; a ``metrics`` message may thin older ones."""
        with self._db.write() as db:
            envelope = self._queue(db, device_id, kind, body)
            if kind == "metrics":
                self._thin(db, self.clock())
        return envelope

    def _queue(
        self, db: sqlite3.Connection, device_id: str, kind: topics.UpKind, body: dict[str, Any]
    ) -> Envelope:
        envelope = Envelope.create(device=device_id, seq=self._next_seq(db), kind=kind, body=body)
        if self.signing_key is not None:
            envelope = sign_envelope(envelope, self.signing_key)
        payload = envelope.to_bytes()
        db.execute(
            "INSERT INTO outbox (message_id, seq, kind, topic, sealed, size, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                envelope.id,
                envelope.seq,
                kind,
                topics.up(device_id, kind),
                self._seal("outbox", envelope.id, payload),
                len(payload),
                to_db_time(self.clock()),
            ),
        )
        return envelope

    def pending(
        self, limit: int = 100, exclude: Iterable[str] = (), after_seq: int | None = None
    ) -> list[OutboxMessage]:
        """Oldest unacknowledged messages first, payloads opened."""
        excluded = list(exclude)
        where: list[str] = []
        params: list[Any] = []
        if excluded:
            where.append(f"message_id NOT IN ({_marks(excluded)})")
            params.extend(excluded)
        if after_seq is not None:
            where.append("seq > ?")
            params.append(after_seq)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self._db.read() as db:
            rows = db.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox {clause}ORDER BY seq LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [self._message(row) for row in rows]

    def messages(self, message_ids: Sequence[str]) -> list[OutboxMessage]:
        """The queued messages among ``message_ids`` (those acknowledged meanwhile are absent)."""
        if not message_ids:
            return []
        ids = list(message_ids)
        with self._db.read() as db:
            rows = db.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE message_id IN ({_marks(ids)})", ids
            ).fetchall()
        return [self._message(row) for row in rows]

    def _message(self, row: tuple[Any, ...]) -> OutboxMessage:
        message_id, seq, kind, topic, sealed, created_at = row
        return OutboxMessage(
            message_id=message_id,
            seq=int(seq),
            kind=kind,
            topic=topic,
            payload=self._open("outbox", message_id, sealed),
            created_at=from_db_time(created_at),
        )

    def acknowledge(self, message_ids: Sequence[str]) -> int:
        """Delete acknowledged messages; unknown ids (already deleted) are ignored."""
        if not message_ids:
            return 0
        ids = list(message_ids)
        with self._db.write() as db:
            deleted = db.execute(
                f"DELETE FROM outbox WHERE message_id IN ({_marks(ids)})", ids
            ).rowcount
            if deleted:
                _set_meta(db, "last_ack_at", self.clock().isoformat())
        return int(deleted)

    def outbox_depth(self) -> int:
        with self._db.read() as db:
            return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def outbox_stats(self) -> OutboxStats:
        with self._db.read() as db:
            rows = db.execute(
                "SELECT kind, COUNT(*), SUM(size) FROM outbox GROUP BY kind"
            ).fetchall()
            oldest = db.execute("SELECT MIN(created_at) FROM outbox").fetchone()[0]
        by_kind = {str(kind): int(count) for kind, count, _ in rows}
        return OutboxStats(
            depth=sum(by_kind.values()),
            bytes=sum(int(size or 0) for _, _, size in rows),
            by_kind=by_kind,
            oldest=from_db_time(oldest) if oldest is not None else None,
            metrics_thinned=self.counter("metrics_thinned"),
        )

    def thin_outbox(self) -> int:
        """Apply the size and age bounds now; the number of ``metrics`` messages dropped."""
        with self._db.write() as db:
            return self._thin(db, self.clock())

    def _thin(self, db: sqlite3.Connection, now: datetime) -> int:
        """Drop ``metrics`` older than the age bound, then the oldest ``metrics`` while the outbox
        is over its size bound. Nothing else is ever dropped."""
        cutoff = datetime.fromtimestamp(now.timestamp() - self.limits.max_age_s, UTC)
        dropped = int(
            db.execute(
                "DELETE FROM outbox WHERE kind = 'metrics' AND created_at < ?",
                (to_db_time(cutoff),),
            ).rowcount
        )
        total = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])
        while total > self.limits.max_bytes:
            oldest = db.execute(
                "SELECT message_id, size FROM outbox WHERE kind = 'metrics' ORDER BY seq LIMIT 100"
            ).fetchall()
            if not oldest:
                log.warning(
                    "the outbox holds %d bytes, over its %d-byte bound, with no metrics left to "
                    "thin: sessions and safety events are kept all the same",
                    total,
                    self.limits.max_bytes,
                )
                break
            chosen: list[str] = []
            for message_id, size in oldest:
                if total <= self.limits.max_bytes:
                    break
                chosen.append(message_id)
                total -= size
            db.execute(f"DELETE FROM outbox WHERE message_id IN ({_marks(chosen)})", chosen)
            dropped += len(chosen)
        if dropped:
            self._bump(db, "metrics_thinned", dropped)
            log.info("outbox bound: %d metrics message(s) thinned, oldest first", dropped)
        return dropped

    # --- desired state ---------------------------------------------------------------------------

    def desired_version(self) -> int:
        """The newest version accepted (applied or waiting for the session to end): a document
        must be newer than this to be taken."""
        with self._db.read() as db:
            value = db.execute("SELECT MAX(version) FROM desired_state").fetchone()[0]
        return int(value or 0)

    def save_desired(
        self,
        version: int,
        content: dict[str, Any],
        profile: HearingProfile | None,
        status: DesiredStatus,
        *,
        assigned: Sequence[AssignedProgram] = (),
        programs: Sequence[ProgramReport] | None = None,
    ) -> None:
        """Keep an accepted document with the prescribed programs it brings (``assigned``, in the
        clinician's order) and what became of each (``programs``), in one transaction;
        ``applied`` supersedes any one still pending, and its programs replace those in force."""
        now = to_db_time(self.clock())
        sealed = self._seal(
            "desired_state", str(version), _desired_body(content, profile, programs)
        )
        with self._db.write() as db:
            if status == "applied":
                db.execute(
                    "UPDATE desired_state SET status = 'superseded' WHERE status = 'pending'"
                )
                db.execute("DELETE FROM prescribed_programs WHERE desired_version != ?", (version,))
            db.execute(
                "INSERT INTO desired_state (version, status, sealed, received_at, applied_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (version, status, sealed, now, now if status == "applied" else None),
            )
            self._insert_assigned(db, version, assigned)

    def _insert_assigned(
        self, db: sqlite3.Connection, version: int, assigned: Sequence[AssignedProgram]
    ) -> None:
        for program in assigned:
            row_id = f"{version}:{program.position}"
            sealed = self._seal(
                "prescribed_programs", row_id, json.dumps(program.to_json()).encode()
            )
            db.execute(
                "INSERT INTO prescribed_programs (desired_version, position, sealed) "
                "VALUES (?, ?, ?)",
                (version, program.position, sealed),
            )

    def reassess_desired(
        self,
        version: int,
        assigned: Sequence[AssignedProgram],
        programs: Sequence[ProgramReport],
    ) -> bool:
        """The applied document ``version``'s programs reviewed again (an engine changed, a file
        fetched): its set and outcomes replaced, in one transaction. False when ``version`` is
        no longer the one applied (a newer one came meanwhile): nothing is changed."""
        with self._db.write() as db:
            row = db.execute(
                f"SELECT {_DESIRED_COLUMNS} FROM desired_state WHERE status = 'applied' "
                "ORDER BY version DESC LIMIT 1"
            ).fetchone()
            if row is None or int(row[0]) != version:
                return False
            stored = self._stored(row)
            body = _desired_body(stored.content, stored.profile, programs)
            db.execute(
                "UPDATE desired_state SET sealed = ? WHERE version = ?",
                (self._seal("desired_state", str(version), body), version),
            )
            db.execute("DELETE FROM prescribed_programs WHERE desired_version = ?", (version,))
            self._insert_assigned(db, version, assigned)
        return True

    def assigned_programs(self) -> list[AssignedProgram]:
        """The prescribed programs in force (the applied document's that this device accepted),
        in the clinician's order."""
        with self._db.read() as db:
            rows = db.execute(
                "SELECT desired_version, position, sealed FROM prescribed_programs "
                "WHERE desired_version = (SELECT MAX(version) FROM desired_state "
                "WHERE status = 'applied') ORDER BY position"
            ).fetchall()
        return [
            AssignedProgram.from_json(
                json.loads(self._open("prescribed_programs", f"{version}:{position}", sealed))
            )
            for version, position, sealed in rows
        ]

    def apply_pending_desired(self) -> StoredDesired | None:
        """Between sessions: the newest pending document becomes the applied one."""
        with self._db.write() as db:
            row = db.execute(
                f"SELECT {_DESIRED_COLUMNS} FROM desired_state WHERE status = 'pending' "
                "ORDER BY version DESC LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            applied_at = to_db_time(self.clock())
            db.execute(
                "UPDATE desired_state SET status = 'applied', applied_at = ? WHERE version = ?",
                (applied_at, row[0]),
            )
            db.execute("DELETE FROM prescribed_programs WHERE desired_version != ?", (row[0],))
        version, _status, sealed, received_at, _applied_at = row
        return self._stored((version, "applied", sealed, received_at, applied_at))

    def applied_desired(self) -> StoredDesired | None:
        return self._latest("applied")

    def pending_desired(self) -> StoredDesired | None:
        return self._latest("pending")

    def _latest(self, status: str) -> StoredDesired | None:
        with self._db.read() as db:
            row = db.execute(
                f"SELECT {_DESIRED_COLUMNS} FROM desired_state WHERE status = ? "
                "ORDER BY version DESC LIMIT 1",
                (status,),
            ).fetchone()
        return self._stored(row) if row is not None else None

    def _stored(self, row: tuple[Any, ...]) -> StoredDesired:
        version, status, sealed, received_at, applied_at = row
        body = json.loads(self._open("desired_state", str(version), sealed))
        profile = body.get("profile")
        programs = body.get("programs")
        return StoredDesired(
            version=int(version),
            status=status,
            content=body["document"],
            profile=HearingProfile.model_validate(profile) if profile is not None else None,
            received_at=from_db_time(received_at),
            applied_at=from_db_time(applied_at) if applied_at is not None else None,
            programs=(
                tuple(ProgramReport.model_validate(p) for p in programs)
                if programs is not None
                else None
            ),
        )

    def applied_profile(self) -> HearingProfile | None:
        """The person's profile from the applied desired state (limits folded in), if any: it
        overrides the profile in the settings."""
        applied = self.applied_desired()
        return applied.profile if applied is not None else None

    # --- small facts -----------------------------------------------------------------------------

    def meta(self, name: str) -> str | None:
        with self._db.read() as db:
            row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row is not None else None

    def set_meta(self, name: str, value: str) -> None:
        with self._db.write() as db:
            _set_meta(db, name, value)

    def integrity_check(self) -> str:
        with self._db.read() as db:
            return str(db.execute("PRAGMA integrity_check").fetchone()[0])


_OUTBOX_COLUMNS: Final = "message_id, seq, kind, topic, sealed, created_at"
_DESIRED_COLUMNS: Final = "version, status, sealed, received_at, applied_at"


def _desired_body(
    content: dict[str, Any],
    profile: HearingProfile | None,
    programs: Sequence[ProgramReport] | None,
) -> bytes:
    """What a desired-state row seals: the document, the profile it means, its programs' fates."""
    return json.dumps(
        {
            "document": content,
            "profile": profile.model_dump() if profile else None,
            "programs": (
                [p.model_dump(mode="json") for p in programs] if programs is not None else None
            ),
        }
    ).encode()


def _recorded_key(conn: sqlite3.Connection) -> str | None:
    """The id of the key the store was sealed with (schema 2 on), None before."""
    if migrations.current_version(conn) < 2:
        return None
    row = conn.execute("SELECT value FROM meta WHERE name = 'data_key_id'").fetchone()
    return str(row[0]) if row else None


def _marks(values: Sequence[object]) -> str:
    """``?, ?, …``: one placeholder per value of an ``IN (…)``."""
    return ", ".join("?" * len(values))


def _set_meta(db: sqlite3.Connection, name: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))
