"""Tables and API shapes, one family per entity (``...Base``, ``...Row`` (table), ``...Public``).

Every device message is keyed by (device_id, message_id), never by time: storing the same message
twice is a no-op (insert-or-ignore). Times are stored in UTC and come back time-zone aware.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, LargeBinary, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

DEVICE_ID_MAX = 64
MESSAGE_ID_MAX = 36
#: Quarantined payloads are kept up to this size (enough to see what was wrong).
QUARANTINE_PAYLOAD_MAX = 64 * 1024
QUARANTINE_TOPIC_MAX = 1024
QUARANTINE_REASON_MAX = 2000


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (no zones) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        # SQLite stores text without a zone; keep it naive UTC there so text order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SessionBase(SQLModel):
    """A session record as the device reported it, with the envelope fields that identify it."""

    device_id: str = Field(max_length=DEVICE_ID_MAX, index=True)
    message_id: str = Field(max_length=MESSAGE_ID_MAX)
    seq: int
    device_time: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    session_id: str = Field(max_length=MESSAGE_ID_MAX)
    program_name: str = Field(max_length=120)
    program_digest: str = Field(max_length=64)
    started_at: datetime = Field(sa_type=UTCDateTime, index=True)
    ended_at: datetime = Field(sa_type=UTCDateTime)
    planned_s: float
    played_s: float
    outcome: str = Field(max_length=16)
    reason: str = Field(default="", max_length=500)
    sink: str = Field(max_length=16)
    sample_rate: int
    peak_dbfs: float
    rms_dbfs: float
    simulation: bool
    hardware_board: str = Field(default="", max_length=120)


class SessionRow(SessionBase, table=True):
    __tablename__ = "session_record"
    __table_args__ = (
        UniqueConstraint("device_id", "message_id", name="uq_session_record_device_message"),
    )

    id: int | None = Field(default=None, primary_key=True)


class SessionPublic(SessionBase):
    """What the API returns for a session."""

    id: int


class MessageRow(SQLModel, table=True):
    """Valid messages of kinds without a table of their own yet (event, metrics, reported): kept
    whole, so a later migration can parse them and nothing valid is ever dropped."""

    __tablename__ = "device_message"
    __table_args__ = (
        UniqueConstraint("device_id", "message_id", name="uq_device_message_device_message"),
    )

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=DEVICE_ID_MAX, index=True)
    message_id: str = Field(max_length=MESSAGE_ID_MAX)
    kind: str = Field(max_length=16, index=True)
    seq: int
    device_time: datetime = Field(sa_type=UTCDateTime)
    received_at: datetime = Field(sa_type=UTCDateTime)
    #: The envelope's body as JSON text.
    body: str = Field(sa_type=Text)


class QuarantineRow(SQLModel, table=True):
    """A message ingest refused, and why; the payload is cut to ``QUARANTINE_PAYLOAD_MAX``."""

    __tablename__ = "quarantine"

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(sa_type=UTCDateTime, index=True)
    topic: str = Field(max_length=QUARANTINE_TOPIC_MAX)
    payload: bytes = Field(sa_type=LargeBinary)
    reason: str = Field(max_length=QUARANTINE_REASON_MAX)
