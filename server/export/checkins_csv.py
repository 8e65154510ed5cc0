"""A patient's check-in answers as CSV: one row per answer (or skip), oldest first, with the
session each belongs to; the cells made safe as for the sessions CSV (``sessions_csv``)."""

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
