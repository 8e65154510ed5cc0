"""The device's local store: sessions, safety events, the outbox and the desired state, in SQLite
(WAL, ``synchronous=FULL``), one transaction per record, health data sealed at rest.

A session (or safety event) record and its outbox message are written in the same transaction, so
a crash leaves either both or neither. The per-device sequence number lives in the same database
and is taken in that transaction too, so it never repeats across restarts. Outbox rows are deleted
only when the server's application ack names them, or, for ``metrics`` only, when the outbox passes
its size or age bound (oldest first): sessions, safety events and reports are never dropped.

Sessions, safety events, check-in answers, outbox payloads and desired-state documents are sealed
with AES-GCM under the device data key (``crypto_store``), which lives in a file apart from the
database. The layout is versioned (``migrations``): opening an older store upgrades it in place,
keeping its data.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, event, func
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, col, create_engine, delete, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.common.errors import ResoneraError
from resonera.common.profile import HearingProfile
from resonera.common.records import CheckInRecord, SafetyEventRecord, SessionRecord
from resonera.common.signing import sign_envelope
from resonera.device import migrations
from resonera.device.crypto_store import (
    DataKey,
    DataKeyMismatch,
    DataKeyMissing,
    create_key_file,
    missing_key_message,
    read_key_file,
)
from resonera.device.settings import OutboxLimits

log = logging.getLogger(__name__)

DesiredStatus = Literal["applied", "pending", "superseded"]


class StoreError(ResoneraError):
    """The local store cannot be opened or written."""


class DeviceModel(SQLModel, registry=registry()):
    """The device's tables live in a metadata of their own, apart from the server's. The tables
    are created by ``migrations``, not by ``create_all``."""


class SessionEntry(DeviceModel, table=True):
    __tablename__ = "sessions"

    session_id: str = Field(primary_key=True)
    started_at: datetime = Field(index=True)
    sealed: bytes


class SafetyEventEntry(DeviceModel, table=True):
    __tablename__ = "safety_events"

    event_id: str = Field(primary_key=True)
    at: datetime = Field(index=True)
    type: str = Field(index=True)
    sealed: bytes


class CheckInEntry(DeviceModel, table=True):
    __tablename__ = "checkins"

    record_id: str = Field(primary_key=True)
    session_id: str
    answered_at: datetime = Field(index=True)
    reason: str = ""
    sealed: bytes


class OutboxEntry(DeviceModel, table=True):
    __tablename__ = "outbox"

    message_id: str = Field(primary_key=True)
    seq: int = Field(unique=True)
    kind: str
    topic: str
    sealed: bytes
    size: int
    created_at: datetime


class CounterEntry(DeviceModel, table=True):
    __tablename__ = "counters"

    name: str = Field(primary_key=True)
    value: int


class DesiredStateEntry(DeviceModel, table=True):
    __tablename__ = "desired_state"

    version: int = Field(primary_key=True)
    status: str
    sealed: bytes
    received_at: datetime
    applied_at: datetime | None = None


class MetaEntry(DeviceModel, table=True):
    __tablename__ = "meta"

    name: str = Field(primary_key=True)
    value: str


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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are begun by us (``_begin``/``_begin_immediate``), not by the driver, which
    # would begin one only at the first write: a read-then-write (the sequence counter) could
    # then interleave with another writer's.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed session survives a power cut, which is the point of the outbox.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


def _begin_immediate(conn: Any) -> None:
    """Writers take the write lock at once (waiting up to ``busy_timeout``), so two threads or
    processes queueing at the same moment never read the same sequence number."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


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
    ) -> None:
        """``signing_key``: the device's own key (that of its certificate); every queued message is
        then signed with it, so the server can tell it came from this device and was not altered.

        ``data_key_path``: the data key (default ``keys/data.key`` next to the database). It is
        created with a new store; when sealed records exist and it is gone, ``DataKeyMissing``.
        """
        self.path = path
        self.signing_key = signing_key
        self.limits = outbox_limits or OutboxLimits()
        self.data_key_path = data_key_path or default_key_path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create data directory {path.parent}: {exc.strerror}"
            ) from None
        self.key = self._open_and_migrate()
        #: Reads (deferred transactions: a consistent snapshot that blocks no writer).
        self.engine: Engine = create_engine(
            f"sqlite:///{path}", connect_args={"check_same_thread": False}
        )
        event.listen(self.engine, "connect", _sqlite_pragmas)
        event.listen(self.engine, "begin", _begin)
        #: Writes (``BEGIN IMMEDIATE``).
        self.write_engine: Engine = create_engine(
            f"sqlite:///{path}", connect_args={"check_same_thread": False}
        )
        event.listen(self.write_engine, "connect", _sqlite_pragmas)
        event.listen(self.write_engine, "begin", _begin_immediate)

    # --- opening ---------------------------------------------------------------------------------

    def _open_and_migrate(self) -> DataKey:
        """Find (or, for a store without sealed data, create) the data key and bring the schema up
        to date, in one ``BEGIN IMMEDIATE`` transaction."""
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the device store {self.path}: {exc}") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            # rows rewritten by a migration (plaintext before sealing) are overwritten, not freed
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("BEGIN IMMEDIATE")
            try:
                key = self._data_key(conn)
                applied = migrations.migrate(conn, key)
                conn.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES ('data_key_id', ?)",
                    (key.key_id,),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if applied:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                log.info("device store %s migrated to schema %s", self.path, applied[-1])
            return key
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the device store {self.path}: {exc}") from None
        finally:
            conn.close()

    def _data_key(self, conn: sqlite3.Connection) -> DataKey:
        recorded: str | None = None
        if migrations.current_version(conn) >= 2:
            row = conn.execute("SELECT value FROM meta WHERE name = 'data_key_id'").fetchone()
            recorded = row[0] if row else None
        if self.data_key_path.exists():
            key = read_key_file(self.data_key_path)
            if recorded is not None and recorded != key.key_id:
                raise DataKeyMismatch(
                    f"the data key {self.data_key_path} (id {key.key_id}) is not the key this "
                    f"store was sealed with (id {recorded}); restore the right key file"
                )
            return key
        sealed = migrations.sealed_record_count(conn)
        if sealed:
            raise DataKeyMissing(missing_key_message(self.data_key_path, sealed))
        if recorded is not None:
            log.warning(
                "the data key %s was missing; the store holds no sealed record, so a new key "
                "is created",
                self.data_key_path,
            )
        return create_key_file(self.data_key_path)

    def close(self) -> None:
        self.engine.dispose()
        self.write_engine.dispose()

    # --- sealing ---------------------------------------------------------------------------------

    def _seal(self, table: str, row_id: str, plaintext: bytes) -> bytes:
        return self.key.seal(plaintext, f"{table}:{row_id}")

    def _open(self, table: str, row_id: str, sealed: bytes) -> bytes:
        return self.key.open(sealed, f"{table}:{row_id}")

    # --- records ---------------------------------------------------------------------------------

    def _next_seq(self, db: Session) -> int:
        return self._bump(db, "seq") - 1

    def _bump(self, db: Session, name: str, by: int = 1) -> int:
        counter = db.get(CounterEntry, name) or CounterEntry(name=name, value=0)
        counter.value += by
        db.add(counter)
        return counter.value

    def counter(self, name: str) -> int:
        with Session(self.engine) as db:
            counter = db.get(CounterEntry, name)
            return counter.value if counter is not None else 0

    def record_session(self, device_id: str, record: SessionRecord) -> Envelope:
        """Store the session and queue its message, atomically; return the queued envelope."""
        with Session(self.write_engine) as db:
            envelope = self._queue(db, device_id, "session", record.model_dump(mode="json"))
            db.add(
                SessionEntry(
                    session_id=record.session_id,
                    started_at=record.started_at,
                    sealed=self._seal(
                        "sessions", record.session_id, record.model_dump_json().encode()
                    ),
                )
            )
            db.commit()
        return envelope

    def record_event(self, device_id: str, record: SafetyEventRecord) -> Envelope:
        """Store a safety event and queue its ``event`` message, atomically (like sessions)."""
        with Session(self.write_engine) as db:
            envelope = self._queue(db, device_id, "event", record.model_dump(mode="json"))
            db.add(
                SafetyEventEntry(
                    event_id=record.event_id,
                    at=record.at,
                    type=record.type,
                    sealed=self._seal(
                        "safety_events", record.event_id, record.model_dump_json().encode()
                    ),
                )
            )
            db.commit()
        return envelope

    def record_checkin(self, device_id: str, record: CheckInRecord, reason: str = "") -> Envelope:
        """Store a check-in answer and queue its ``checkin`` message, atomically (like sessions:
        never thinned). ``reason`` (why it was skipped) stays on the device."""
        with Session(self.write_engine) as db:
            envelope = self._queue(db, device_id, "checkin", record.model_dump(mode="json"))
            db.add(
                CheckInEntry(
                    record_id=record.id,
                    session_id=record.session_id,
                    answered_at=record.answered_at,
                    reason=reason,
                    sealed=self._seal("checkins", record.id, record.model_dump_json().encode()),
                )
            )
            db.commit()
        return envelope

    def checkins(self, limit: int = 100) -> list[tuple[CheckInRecord, str]]:
        """Check-in answers with why each skipped one was (""), most recent first."""
        with Session(self.engine) as db:
            rows = db.exec(
                select(CheckInEntry)
                .order_by(col(CheckInEntry.answered_at).desc(), col(CheckInEntry.record_id))
                .limit(limit)
            ).all()
            return [
                (
                    CheckInRecord.model_validate_json(
                        self._open("checkins", row.record_id, row.sealed)
                    ),
                    row.reason,
                )
                for row in rows
            ]

    def events(self, limit: int = 100) -> list[SafetyEventRecord]:
        """Safety events, most recent first."""
        with Session(self.engine) as db:
            rows = db.exec(
                select(SafetyEventEntry)
                .order_by(col(SafetyEventEntry.at).desc(), col(SafetyEventEntry.event_id).desc())
                .limit(limit)
            ).all()
            return [
                SafetyEventRecord.model_validate_json(
                    self._open("safety_events", row.event_id, row.sealed)
                )
                for row in rows
            ]

    def sessions(self, limit: int = 100) -> list[SessionRecord]:
        """Most recent first."""
        with Session(self.engine) as db:
            rows = db.exec(
                select(SessionEntry).order_by(col(SessionEntry.started_at).desc()).limit(limit)
            ).all()
            return [
                SessionRecord.model_validate_json(
                    self._open("sessions", row.session_id, row.sealed)
                )
                for row in rows
            ]

    def sessions_since(self, since: datetime) -> int:
        with Session(self.engine) as db:
            query = select(func.count()).select_from(SessionEntry)
            query = query.where(col(SessionEntry.started_at) >= since)
            return int(db.exec(query).one())

    # --- outbox ----------------------------------------------------------------------------------

    def queue_message(self, device_id: str, kind: topics.UpKind, body: dict[str, Any]) -> Envelope:
        """Queue one message of ``kind`` on its own; a ``metrics`` message may thin older ones."""
        with Session(self.write_engine) as db:
            envelope = self._queue(db, device_id, kind, body)
            if kind == "metrics":
                self._thin(db, datetime.now(UTC))
            db.commit()
        return envelope

    def _queue(
        self, db: Session, device_id: str, kind: topics.UpKind, body: dict[str, Any]
    ) -> Envelope:
        envelope = Envelope.create(device=device_id, seq=self._next_seq(db), kind=kind, body=body)
        if self.signing_key is not None:
            envelope = sign_envelope(envelope, self.signing_key)
        payload = envelope.to_bytes()
        db.add(
            OutboxEntry(
                message_id=envelope.id,
                seq=envelope.seq,
                kind=kind,
                topic=topics.up(device_id, kind),
                sealed=self._seal("outbox", envelope.id, payload),
                size=len(payload),
                created_at=datetime.now(UTC),
            )
        )
        return envelope

    def pending(
        self, limit: int = 100, exclude: Iterable[str] = (), after_seq: int | None = None
    ) -> list[OutboxMessage]:
        """Oldest unacknowledged messages first, payloads opened."""
        excluded = list(exclude)
        with Session(self.engine) as db:
            query = select(OutboxEntry).order_by(col(OutboxEntry.seq)).limit(limit)
            if excluded:
                query = query.where(col(OutboxEntry.message_id).not_in(excluded))
            if after_seq is not None:
                query = query.where(col(OutboxEntry.seq) > after_seq)
            return [self._message(row) for row in db.exec(query).all()]

    def messages(self, message_ids: Sequence[str]) -> list[OutboxMessage]:
        """The queued messages among ``message_ids`` (those acknowledged meanwhile are absent)."""
        if not message_ids:
            return []
        with Session(self.engine) as db:
            rows = db.exec(
                select(OutboxEntry).where(col(OutboxEntry.message_id).in_(list(message_ids)))
            ).all()
            return [self._message(row) for row in rows]

    def _message(self, row: OutboxEntry) -> OutboxMessage:
        return OutboxMessage(
            message_id=row.message_id,
            seq=row.seq,
            kind=row.kind,
            topic=row.topic,
            payload=self._open("outbox", row.message_id, row.sealed),
            created_at=_aware(row.created_at),
        )

    def acknowledge(self, message_ids: Sequence[str]) -> int:
        """Delete acknowledged messages; unknown ids (already deleted) are ignored."""
        if not message_ids:
            return 0
        with Session(self.write_engine) as db:
            result = db.exec(
                delete(OutboxEntry).where(col(OutboxEntry.message_id).in_(message_ids))
            )
            if result.rowcount:
                db.merge(MetaEntry(name="last_ack_at", value=datetime.now(UTC).isoformat()))
            db.commit()
            return int(result.rowcount)

    def outbox_depth(self) -> int:
        with Session(self.engine) as db:
            return int(db.exec(select(func.count()).select_from(OutboxEntry)).one())

    def outbox_stats(self) -> OutboxStats:
        with Session(self.engine) as db:
            rows = db.exec(
                select(OutboxEntry.kind, func.count(), func.sum(OutboxEntry.size)).group_by(
                    OutboxEntry.kind
                )
            ).all()
            oldest = db.exec(select(func.min(OutboxEntry.created_at))).one()
        by_kind = {str(kind): int(count) for kind, count, _ in rows}
        return OutboxStats(
            depth=sum(by_kind.values()),
            bytes=sum(int(size or 0) for _, _, size in rows),
            by_kind=by_kind,
            oldest=_aware(oldest) if oldest is not None else None,
            metrics_thinned=self.counter("metrics_thinned"),
        )

    def thin_outbox(self, now: datetime | None = None) -> int:
        """Apply the size and age bounds now; the number of ``metrics`` messages dropped."""
        with Session(self.write_engine) as db:
            dropped = self._thin(db, now or datetime.now(UTC))
            db.commit()
            return dropped

    def _thin(self, db: Session, now: datetime) -> int:
        """Drop ``metrics`` older than the age bound, then the oldest ``metrics`` while the outbox
        is over its size bound. Nothing else is ever dropped."""
        cutoff = datetime.fromtimestamp(now.timestamp() - self.limits.max_age_s, UTC)
        aged = db.exec(
            delete(OutboxEntry).where(
                col(OutboxEntry.kind) == "metrics", col(OutboxEntry.created_at) < cutoff
            )
        )
        dropped = int(aged.rowcount)
        total = int(db.exec(select(func.coalesce(func.sum(OutboxEntry.size), 0))).one())
        while total > self.limits.max_bytes:
            oldest = db.exec(
                select(OutboxEntry.message_id, OutboxEntry.size)
                .where(col(OutboxEntry.kind) == "metrics")
                .order_by(col(OutboxEntry.seq))
                .limit(100)
            ).all()
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
            db.exec(delete(OutboxEntry).where(col(OutboxEntry.message_id).in_(chosen)))
            dropped += len(chosen)
        if dropped:
            self._bump(db, "metrics_thinned", dropped)
            log.info("outbox bound: %d metrics message(s) thinned, oldest first", dropped)
        return dropped

    # --- desired state ---------------------------------------------------------------------------

    def desired_version(self) -> int:
        """The newest version accepted (applied or waiting for the session to end): a document
        must be newer than this to be taken."""
        with Session(self.engine) as db:
            value = db.exec(select(func.max(DesiredStateEntry.version))).one()
            return int(value or 0)

    def save_desired(
        self,
        version: int,
        content: dict[str, Any],
        profile: HearingProfile | None,
        status: DesiredStatus,
    ) -> None:
        """Keep an accepted document; ``applied`` supersedes any one still pending."""
        now = datetime.now(UTC)
        body = json.dumps(
            {"document": content, "profile": profile.model_dump() if profile else None}
        ).encode()
        with Session(self.write_engine) as db:
            if status == "applied":
                for row in db.exec(
                    select(DesiredStateEntry).where(col(DesiredStateEntry.status) == "pending")
                ).all():
                    row.status = "superseded"
                    db.add(row)
            db.add(
                DesiredStateEntry(
                    version=version,
                    status=status,
                    sealed=self._seal("desired_state", str(version), body),
                    received_at=now,
                    applied_at=now if status == "applied" else None,
                )
            )
            db.commit()

    def apply_pending_desired(self) -> StoredDesired | None:
        """Between sessions: the newest pending document becomes the applied one."""
        with Session(self.write_engine) as db:
            row = db.exec(
                select(DesiredStateEntry)
                .where(col(DesiredStateEntry.status) == "pending")
                .order_by(col(DesiredStateEntry.version).desc())
            ).first()
            if row is None:
                return None
            row.status = "applied"
            row.applied_at = datetime.now(UTC)
            db.add(row)
            db.commit()
            db.refresh(row)
            return self._stored(row)

    def applied_desired(self) -> StoredDesired | None:
        return self._latest("applied")

    def pending_desired(self) -> StoredDesired | None:
        return self._latest("pending")

    def _latest(self, status: str) -> StoredDesired | None:
        with Session(self.engine) as db:
            row = db.exec(
                select(DesiredStateEntry)
                .where(col(DesiredStateEntry.status) == status)
                .order_by(col(DesiredStateEntry.version).desc())
            ).first()
            return self._stored(row) if row is not None else None

    def _stored(self, row: DesiredStateEntry) -> StoredDesired:
        body = json.loads(self._open("desired_state", str(row.version), row.sealed))
        profile = body.get("profile")
        return StoredDesired(
            version=row.version,
            status=row.status,
            content=body["document"],
            profile=HearingProfile.model_validate(profile) if profile is not None else None,
            received_at=_aware(row.received_at),
            applied_at=_aware(row.applied_at) if row.applied_at is not None else None,
        )

    def applied_profile(self) -> HearingProfile | None:
        """The person's profile from the applied desired state (limits folded in), if any: it
        overrides the profile in the settings."""
        applied = self.applied_desired()
        return applied.profile if applied is not None else None

    # --- small facts -----------------------------------------------------------------------------

    def meta(self, name: str) -> str | None:
        with Session(self.engine) as db:
            row = db.get(MetaEntry, name)
            return row.value if row is not None else None

    def set_meta(self, name: str, value: str) -> None:
        with Session(self.write_engine) as db:
            db.merge(MetaEntry(name=name, value=value))
            db.commit()

    def integrity_check(self) -> str:
        with self.engine.connect() as conn:
            return str(conn.exec_driver_sql("PRAGMA integrity_check").scalar())
