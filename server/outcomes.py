"""Storing check-in answers (``common.records.CheckInRecord``) as ``checkin`` rows.

Ingest calls ``parse_checkin`` on a ``checkin`` message's body (a bad body is quarantined like any
other) and ``store_checkins`` in the batch's transaction. Storing is idempotent by (device, record
id): a device that resends after a lost acknowledgement adds nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError
from sqlalchemy import Connection
from sqlmodel import Session

from resonera.common.errors import ProtocolError, describe_validation_error
from resonera.common.records import CheckInRecord
from resonera.server.db import insert_ignore
from resonera.server.models import CheckInRow, table_of

__all__ = ["checkin_row", "parse_checkin", "store_checkins"]

_KEY: Final = ("device_id", "record_id")


def parse_checkin(body: dict[str, Any], device_id: str) -> CheckInRecord:
    """The record in a ``checkin`` body, strictly through JSON as ingest parses every body;
    ``ProtocolError`` when it is invalid or names another device."""
    try:
        record = CheckInRecord.model_validate_json(json.dumps(body), strict=True)
    except ValidationError as exc:
        raise ProtocolError(f"invalid checkin body: {describe_validation_error(exc)}") from None
    if record.device_id != device_id:
        raise ProtocolError(
            f"invalid checkin body: device_id {record.device_id!r} is not the sender {device_id!r}"
        )
    return record


def checkin_row(
    record: CheckInRecord, device_id: str, patient_id: str | None, now: datetime
) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "record_id": record.id,
        "session_id": record.session_id,
        "patient_id": patient_id,
        "question_id": record.question_id,
        "phase": record.phase,
        "value": record.value,
        "skipped": record.skipped,
        "skip_reason": record.skip_reason,
        "higher_is_better": record.better == "higher",
        "answered_at": record.answered_at,
        "received_at": now,
    }


def store_checkins(
    session: Connection | Session,
    device_id: str,
    patient_id: str | None,
    records: Iterable[CheckInRecord],
    *,
    now: datetime,
) -> None:
    """Keep ``records`` of ``device_id`` for ``patient_id`` (None: the device served nobody then),
    received at ``now``, skipping those already stored; the caller owns the transaction. Raises
    ``ProtocolError``, storing nothing, when a record names another device."""
    received = now
    rows = []
    for record in records:
        if record.device_id != device_id:
            raise ProtocolError(
                f"check-in {record.id} names device {record.device_id!r}, not {device_id!r}"
            )
        rows.append(checkin_row(record, device_id, patient_id, received))
    if not rows:
        return
    conn = session if isinstance(session, Connection) else session.connection()
    insert_ignore(conn, table_of(CheckInRow), rows, key=_KEY, returning=_KEY)
