"""A patient's check-in answers as CSV: one row per answer (or skip), oldest first, with the
session each belongs to; the cells made safe as for the sessions CSV (``sessions_csv``).

``skip_reason`` (last, so readers of the earlier columns by position are unaffected) says why a
skipped question got no answer, in the device's words: "skipped by the person" (declined), "no
answer in time", or why the device could not ask it; empty for answers and for skips from devices
that do not send it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Final

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from resonera.server.export.sessions_csv import csv_chunks, in_period
from resonera.server.models import CheckInRow

__all__ = ["CHECKIN_COLUMNS", "checkin_csv_chunks"]

CHECKIN_COLUMNS: Final = (
    "answered_at",
    "session_id",
    "question_id",
    "phase",
    "value",
    "skipped",
    "higher_is_better",
    "device_id",
    "record_id",
    "received_at",
    "skip_reason",
)


def checkin_csv_chunks(
    engine: Engine, patient_id: str, since: datetime | None, until: datetime | None
) -> Iterator[str]:
    """The header, then chunks of rows (answer time in ``[since, until)``)."""
    query = (
        select(CheckInRow)
        .where(
            CheckInRow.patient_id == patient_id, *in_period(CheckInRow.answered_at, since, until)
        )
        .order_by(col(CheckInRow.answered_at), col(CheckInRow.id))
    )
    return csv_chunks(engine, query, CHECKIN_COLUMNS)
