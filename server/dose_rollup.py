"""The daily dose roll-up, ``dose_daily``: per patient and UTC day, the dose fraction, the
sessions and the seconds played.

Every session adds its dose and its seconds, however short; only a session that counts
(``common.session_count.counts_as_session`` under the patient's latest profile: 60 s or 10 % of
its plan by default) adds to ``sessions``, which adherence reads ("N of M" a week), so an
accidental 0.05 s start is no session there, as it is none for the device's daily limit.

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

from resonera.common.profile import HearingProfile
from resonera.common.records import SessionRecord
from resonera.common.session_count import counting_profile, counts_as_session
from resonera.server.db import upsert
from resonera.server.models import DoseDailyRow, PatientConfigRow, SessionRow, table_of


def session_dose(record: SessionRecord, body: dict[str, Any]) -> float:
    """The dose fraction a session used, as the device reported it (0 until devices report it)."""
    value = getattr(record, "dose_fraction", None)
    if value is None:
        value = body.get("dose_fraction")
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return 0.0
    return float(value)


def counting_profiles(conn: Connection, patient_ids: Iterable[str]) -> dict[str, HearingProfile]:
    """Per patient, a profile carrying what counts as a session in their latest configuration
    (the defaults where it sets nothing, or something the profile refuses)."""
    ids = sorted(set(patient_ids))
    if not ids:
        return {}
    config = table_of(PatientConfigRow)
    latest: dict[str, Any] = {}
    query = (
        select(config.c.patient_id, config.c.profile)
        .where(config.c.patient_id.in_(ids))
        .order_by(config.c.patient_id, config.c.version)
    )
    for patient_id, profile in conn.execute(query):
        latest[patient_id] = profile  # the last version wins
    return {patient_id: counting_profile(latest.get(patient_id)) for patient_id in ids}


def _daily_rows(
    sessions: Iterable[tuple[str, datetime, float, float, float]],
    profiles: dict[str, HearingProfile],
) -> list[dict[str, Any]]:
    """``dose_daily`` rows totalling ``sessions`` (patient, started at, dose fraction, seconds
    played, seconds planned), in (patient, day) order; ``profiles`` say which count."""
    totals: dict[tuple[str, date], list[float]] = {}
    default = HearingProfile()
    for patient_id, started_at, dose_fraction, played_s, planned_s in sessions:
        total = totals.setdefault((patient_id, started_at.astimezone(UTC).date()), [0.0, 0.0, 0.0])
        total[0] += dose_fraction  # every second played counts toward the dose
        counted = counts_as_session(played_s, planned_s, profiles.get(patient_id, default))
        total[1] += 1 if counted else 0
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
    attributed = [row for row in sessions if row["patient_id"] is not None]
    profiles = counting_profiles(conn, (row["patient_id"] for row in attributed))
    rows = _daily_rows(
        (
            (
                row["patient_id"],
                row["started_at"],
                row["dose_fraction"],
                row["played_s"],
                row["planned_s"],
            )
            for row in attributed
        ),
        profiles,
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
    query = select(
        sessions.c.started_at,
        sessions.c.dose_fraction,
        sessions.c.played_s,
        sessions.c.planned_s,
    ).where(sessions.c.patient_id == patient_id)
    rows = _daily_rows(
        (
            (patient_id, row.started_at, row.dose_fraction, row.played_s, row.planned_s)
            for row in conn.execute(query)
        ),
        counting_profiles(conn, [patient_id]),
    )
    if rows:
        conn.execute(dose.insert(), rows)
