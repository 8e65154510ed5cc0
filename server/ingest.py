"""Turning batches of received MQTT messages into stored rows, without any MQTT.

``IngestProcessor.process`` takes (topic, payload) pairs, stores the whole batch in one transaction
and says which message ids each device may now delete. It never raises for a bad message: a
message that is not a valid envelope, names another device than its topic, or carries an invalid
body goes to the quarantine table with a one-line reason. It does raise (``StoreError``) when the
database itself fails; then nothing of the batch is committed and nothing may be acknowledged.

The MQTT side (subscribing, batching, acknowledging) is ``resonera.server.ingest_mqtt``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Table
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from resonera.common.envelope import (
    Envelope,
    check_topic_matches,
    decode_envelope,
    describe_validation_error,
)
from resonera.common.errors import ProtocolError, ResoneraError
from resonera.common.records import SessionRecord
from resonera.server.db import insert_ignore
from resonera.server.models import (
    QUARANTINE_PAYLOAD_MAX,
    QUARANTINE_REASON_MAX,
    QUARANTINE_TOPIC_MAX,
    MessageRow,
    QuarantineRow,
    SessionRow,
)

log = logging.getLogger(__name__)

_KEY = ("device_id", "message_id")
#: Counter names, always present in ``IngestProcessor.counters``.
COUNTERS = ("received", "stored", "duplicates", "quarantined")


class StoreError(ResoneraError):
    """The database refused or failed a batch; nothing of it was committed."""


@dataclass(frozen=True)
class Received:
    """One message as it came off the broker."""

    topic: str
    payload: bytes


@dataclass
class BatchResult:
    """What a committed batch means for the devices."""

    #: Per device, the message ids now in the store (new and already stored), in arrival order.
    #: The device may delete exactly these from its outbox.
    committed: dict[str, list[str]] = field(default_factory=dict)
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0


@dataclass
class _Plan:
    """A batch sorted into rows, before it touches the database."""

    rows: dict[Table, list[dict[str, Any]]] = field(default_factory=dict)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    #: (device, message id) of every valid message, first occurrence first.
    valid: list[tuple[str, str]] = field(default_factory=list)
    keys: set[tuple[str, str]] = field(default_factory=set)


def _now() -> datetime:
    return datetime.now(UTC)


class IngestProcessor:
    """Validates and stores batches idempotently. Not thread-safe: one worker calls ``process``."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = _now) -> None:
        self._engine = engine
        self._clock = clock
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    def process(self, batch: Iterable[Received]) -> BatchResult:
        """Store ``batch`` in one transaction; raise ``StoreError`` if the database fails."""
        now = self._clock()
        plan = _Plan()
        count = 0
        for message in batch:
            count += 1
            self._sort(message, now, plan)
        inserted = self._commit(plan)
        result = BatchResult(quarantined=len(plan.quarantine))
        seen: set[tuple[str, str]] = set()
        for key in plan.valid:
            if key in seen:
                result.duplicates += 1
                continue
            seen.add(key)
            if key in inserted:
                result.stored += 1
            else:
                result.duplicates += 1
            result.committed.setdefault(key[0], []).append(key[1])
        self.counters["received"] += count
        self.counters["stored"] += result.stored
        self.counters["duplicates"] += result.duplicates
        self.counters["quarantined"] += result.quarantined
        return result

    def _sort(self, message: Received, now: datetime, plan: _Plan) -> None:
        try:
            envelope = decode_envelope(message.payload)
            check_topic_matches(message.topic, envelope)
            table, row = _row_for(envelope, now)
        except ProtocolError as exc:
            reason = str(exc)
            log.warning("quarantined a message on %r: %s", message.topic[:200], reason)
            plan.quarantine.append(
                {
                    "received_at": now,
                    "topic": message.topic[:QUARANTINE_TOPIC_MAX],
                    "payload": message.payload[:QUARANTINE_PAYLOAD_MAX],
                    "reason": reason[:QUARANTINE_REASON_MAX],
                }
            )
            return
        key = (envelope.device, envelope.id)
        if key not in plan.keys:  # the same message twice in one batch: one row, acked once
            plan.keys.add(key)
            plan.rows.setdefault(table, []).append(row)
        plan.valid.append(key)

    def _commit(self, plan: _Plan) -> set[tuple[str, str]]:
        inserted: set[tuple[str, str]] = set()
        try:
            with self._engine.begin() as conn:
                for table, rows in plan.rows.items():
                    for device_id, message_id in insert_ignore(
                        conn, table, rows, key=_KEY, returning=_KEY
                    ):
                        inserted.add((device_id, message_id))
                if plan.quarantine:
                    conn.execute(_table(QuarantineRow).insert(), plan.quarantine)
        except SQLAlchemyError as exc:
            raise StoreError(f"storing a batch failed: {type(exc).__name__}: {exc}") from exc
        return inserted


def _table(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


def _envelope_fields(envelope: Envelope, now: datetime) -> dict[str, Any]:
    return {
        "device_id": envelope.device,
        "message_id": envelope.id,
        "seq": envelope.seq,
        "device_time": envelope.time,
        "received_at": now,
    }


def _row_for(envelope: Envelope, now: datetime) -> tuple[Table, dict[str, Any]]:
    """The table and row for a valid envelope; raise ``ProtocolError`` for an invalid body."""
    if envelope.kind == "session":
        try:
            # Strict, through JSON: "48000" is not an int, but an ISO time string is a datetime.
            record = SessionRecord.model_validate_json(json.dumps(envelope.body), strict=True)
        except ValidationError as exc:
            raise ProtocolError(f"invalid session body: {describe_validation_error(exc)}") from None
        return _table(SessionRow), {**_envelope_fields(envelope, now), **record.model_dump()}
    body = json.dumps(envelope.body, separators=(",", ":"), ensure_ascii=False)
    return _table(MessageRow), {
        **_envelope_fields(envelope, now),
        "kind": envelope.kind,
        "body": body,
    }
