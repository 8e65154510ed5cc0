"""The device's local store: sessions, safety events and the outbox, in SQLite (WAL), one
transaction per record.

A session (or safety event) record and its outbox message are written in the same transaction, so
a crash leaves either both or neither. The per-device sequence number lives in the same database
and is taken in that transaction too, so it never repeats across restarts. Outbox
rows are deleted only when the server's application ack names them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, event, func
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, col, create_engine, delete, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.common.errors import ResoneraError
from resonera.common.records import SafetyEventRecord, SessionRecord
from resonera.common.signing import sign_envelope


class StoreError(ResoneraError):
    """The local store cannot be opened or written."""


class DeviceModel(SQLModel, registry=registry()):
    """The device's tables live in a metadata of their own, apart from the server's."""


class SessionEntry(DeviceModel, table=True):
    __tablename__ = "sessions"

    session_id: str = Field(primary_key=True)
    started_at: datetime = Field(index=True)
    record_json: str


class SafetyEventEntry(DeviceModel, table=True):
    __tablename__ = "safety_events"

    event_id: str = Field(primary_key=True)
    at: datetime = Field(index=True)
    type: str = Field(index=True)
    record_json: str


class OutboxEntry(DeviceModel, table=True):
    __tablename__ = "outbox"

    message_id: str = Field(primary_key=True)
    seq: int = Field(unique=True)
    kind: str
    topic: str
    payload: bytes
    created_at: datetime


class CounterEntry(DeviceModel, table=True):
    __tablename__ = "counters"

    name: str = Field(primary_key=True)
    value: int


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed session survives a power cut, which is the point of the outbox.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class DeviceStore:
    """Thread-safe: each call opens its own short transaction."""

    def __init__(self, path: Path, signing_key: ec.EllipticCurvePrivateKey | None = None) -> None:
        """``signing_key``: the device's own key (that of its certificate); every queued message is
        then signed with it, so the server can tell it came from this device and was not altered."""
        self.path = path
        self.signing_key = signing_key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create data directory {path.parent}: {exc.strerror}"
            ) from None
        self.engine: Engine = create_engine(
            f"sqlite:///{path}", connect_args={"check_same_thread": False}
        )
        event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            DeviceModel.metadata.create_all(self.engine)
        except Exception as exc:
            raise StoreError(f"cannot open the device store {path}: {exc}") from None

    def close(self) -> None:
        self.engine.dispose()

    def _next_seq(self, db: Session) -> int:
        counter = db.get(CounterEntry, "seq")
        if counter is None:
            counter = CounterEntry(name="seq", value=0)
        seq = counter.value
        counter.value = seq + 1
        db.add(counter)
        return seq

    def record_session(self, device_id: str, record: SessionRecord) -> Envelope:
        """Store the session and queue its message, atomically; return the queued envelope."""
        with Session(self.engine) as db:
            envelope = self._queue(db, device_id, "session", record.model_dump(mode="json"))
            db.add(
                SessionEntry(
                    session_id=record.session_id,
                    started_at=record.started_at,
                    record_json=record.model_dump_json(),
                )
            )
            db.commit()
        return envelope

    def record_event(self, device_id: str, record: SafetyEventRecord) -> Envelope:
        """Store a safety event and queue its ``event`` message, atomically (like sessions)."""
        with Session(self.engine) as db:
            envelope = self._queue(db, device_id, "event", record.model_dump(mode="json"))
            db.add(
                SafetyEventEntry(
                    event_id=record.event_id,
                    at=record.at,
                    type=record.type,
                    record_json=record.model_dump_json(),
                )
            )
            db.commit()
        return envelope

    def events(self, limit: int = 100) -> list[SafetyEventRecord]:
        """Safety events, most recent first."""
        with Session(self.engine) as db:
            rows = db.exec(
                select(SafetyEventEntry)
                .order_by(col(SafetyEventEntry.at).desc(), col(SafetyEventEntry.event_id).desc())
                .limit(limit)
            ).all()
            return [SafetyEventRecord.model_validate_json(row.record_json) for row in rows]

    def queue_message(self, device_id: str, kind: topics.UpKind, body: dict[str, Any]) -> Envelope:
        """Queue one message of ``kind`` on its own."""
        with Session(self.engine) as db:
            envelope = self._queue(db, device_id, kind, body)
            db.commit()
        return envelope

    def _queue(
        self, db: Session, device_id: str, kind: topics.UpKind, body: dict[str, Any]
    ) -> Envelope:
        envelope = Envelope.create(device=device_id, seq=self._next_seq(db), kind=kind, body=body)
        if self.signing_key is not None:
            envelope = sign_envelope(envelope, self.signing_key)
        db.add(
            OutboxEntry(
                message_id=envelope.id,
                seq=envelope.seq,
                kind=kind,
                topic=topics.up(device_id, kind),
                payload=envelope.to_bytes(),
                created_at=datetime.now(UTC),
            )
        )
        return envelope

    def pending(self, limit: int = 100, exclude: Iterable[str] = ()) -> list[OutboxEntry]:
        """Oldest unacknowledged messages first."""
        excluded = list(exclude)
        with Session(self.engine) as db:
            query = select(OutboxEntry).order_by(col(OutboxEntry.seq)).limit(limit)
            if excluded:
                query = query.where(col(OutboxEntry.message_id).not_in(excluded))
            return list(db.exec(query).all())

    def acknowledge(self, message_ids: Sequence[str]) -> int:
        """Delete acknowledged messages; unknown ids (already deleted) are ignored."""
        if not message_ids:
            return 0
        with Session(self.engine) as db:
            result = db.exec(
                delete(OutboxEntry).where(col(OutboxEntry.message_id).in_(message_ids))
            )
            db.commit()
            return int(result.rowcount)

    def outbox_depth(self) -> int:
        with Session(self.engine) as db:
            return int(db.exec(select(func.count()).select_from(OutboxEntry)).one())

    def sessions(self, limit: int = 100) -> list[SessionRecord]:
        """Most recent first."""
        with Session(self.engine) as db:
            rows = db.exec(
                select(SessionEntry).order_by(col(SessionEntry.started_at).desc()).limit(limit)
            ).all()
            return [SessionRecord.model_validate_json(row.record_json) for row in rows]
