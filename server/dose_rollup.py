"""The daily dose roll-up, ``dose_daily``: per patient and UTC day, the dose fraction, the
sessions and the seconds played.

Ingest adds each newly stored session of an attributed patient (``add_session_doses``, in the
batch's transaction, so a resent session never counts twice); re-attributing sessions after an
assignment rebuilds a patient's days from their sessions (``rebuild_dose``). Both total the same
way (``_daily_rows``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, select

from resonera.common.records import SessionRecord
from resonera.server.db import upsert
from resonera.server.models import DoseDailyRow, SessionRow, table_of


def session_dose(record: SessionRecord, body: dict[str, Any]) -> float:
    """The dose fraction a session used, as the device reported it (0 until devices report it)."""
    value = getattr(record, "dose_fraction", None)
    if value is None:
        value = body.get("dose_fraction")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return 0.0
    return float(value)


def _daily_rows(sessions: Iterable[tuple[str, datetime, float, float]]) -> list[dict[str, Any]]:
    """``dose_daily`` rows totalling ``sessions`` (patient, started at, dose fraction, seconds
    played), in (patient, day) order."""
    totals: dict[tuple[str, date], list[float]] = {}
    for patient_id, started_at, dose_fraction, played_s in sessions:
        total = totals.setdefault((patient_id, started_at.astimezone(UTC).date()), [0.0, 0.0, 0.0])
        total[0] += dose_fraction
        total[1] += 1
        total[2] += played_s
    return [
        {
            "patient_id": patient_id,
            "day": day,
            "dose_fraction": total[0],
            "sessions": int(total[1]),
            "played_s": total[2],
        }
        for (patient_id, day), total in sorted(totals.items())
    ]


def add_session_doses(conn: Connection, sessions: list[dict[str, Any]]) -> None:
    """Add newly stored ``session_record`` rows to their patients' days (unattributed ones to
    nobody's)."""
    rows = _daily_rows(
        (row["patient_id"], row["started_at"], row["dose_fraction"], row["played_s"])
        for row in sessions
        if row["patient_id"] is not None
    )
    if not rows:
        return
    table = table_of(DoseDailyRow)
    upsert(
        conn,
        table,
        rows,
        key=("patient_id", "day"),
        update={
            "dose_fraction": lambda ex: table.c.dose_fraction + ex.dose_fraction,
            "sessions": lambda ex: table.c.sessions + ex.sessions,
            "played_s": lambda ex: table.c.played_s + ex.played_s,
        },
    )


def rebuild_dose(conn: Connection, patient_id: str) -> None:
    """Recompute ``dose_daily`` of one patient from their sessions (after re-attribution)."""
    dose = table_of(DoseDailyRow)
    sessions = table_of(SessionRow)
    conn.execute(dose.delete().where(dose.c.patient_id == patient_id))
    query = select(sessions.c.started_at, sessions.c.dose_fraction, sessions.c.played_s).where(
        sessions.c.patient_id == patient_id
    )
    rows = _daily_rows(
        (patient_id, row.started_at, row.dose_fraction, row.played_s) for row in conn.execute(query)
    )
    if rows:
        conn.execute(dose.insert(), rows)
