"""Reads and writes the API needs, as keyword-only functions over a database session."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, union_all
from sqlmodel import Session, col, select

from resonera.common.routine_events import ROUTINE_TYPE_PREFIX
from resonera.server.crypto import FieldCipher
from resonera.server.models import (
    AuditRow,
    ClinicianPatientRow,
    DoseDailyRow,
    PatientRow,
    SafetyEventRow,
    SessionRow,
)
from resonera.server.schemas import (
    AdherenceReport,
    AdherenceWeek,
    DoseDay,
    DoseReport,
    PatientPublic,
)

#: Mode 1 (ITU-T H.870): 80 dBA for 40 h uses the whole weekly allowance.
WEEKLY_ALLOWANCE = 1.0


def dose_fraction_per_second(mel_dba: float) -> float:
    """Fraction of the weekly allowance one second at ``mel_dba`` uses (mode 1)."""
    return float(10.0 ** ((mel_dba - 80.0) / 10.0) / (40.0 * 3600.0))


def clinician_patient_ids(
    session: Session, user_id: int, *, include_archived: bool = False
) -> list[str]:
    """The patients linked to clinician ``user_id``; archived ones only with ``include_archived``
    (their lists, attention list and ``GET /sessions`` leave them out; their pages still open)."""
    query = select(ClinicianPatientRow.patient_id).where(ClinicianPatientRow.user_id == user_id)
    if not include_archived:
        query = query.join(PatientRow, col(PatientRow.id) == ClinicianPatientRow.patient_id).where(
            col(PatientRow.archived_at).is_(None)
        )
    return list(session.exec(query).all())


def patient_public(session: Session, cipher: FieldCipher, patient: PatientRow) -> PatientPublic:
    links = session.exec(
        select(ClinicianPatientRow.user_id).where(ClinicianPatientRow.patient_id == patient.id)
    ).all()
    return PatientPublic(
        id=patient.id,
        name=cipher.decrypt(patient.name_enc, patient_id=patient.id, field="name"),
        birth_date=date.fromisoformat(
            cipher.decrypt(patient.birth_date_enc, patient_id=patient.id, field="birth_date")
        ),
        notes=cipher.decrypt(patient.notes_enc, patient_id=patient.id, field="notes"),
        created_at=patient.created_at,
        updated_at=patient.updated_at,
        clinician_ids=sorted(links),
        archived_at=patient.archived_at,
    )


#: Above this many patients (or rows to skip), one IN query instead of a merge of per-patient lists.
MERGE_MAX_PATIENTS = 200
MERGE_MAX_ROWS = 5000


def _session_conditions(
    device_id: str | None, program: str | None, since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if device_id is not None:
        conditions.append(col(SessionRow.device_id) == device_id)
    if program is not None:
        conditions.append(col(SessionRow.program_name) == program)
    if since is not None:
        conditions.append(col(SessionRow.started_at) >= since)
    if until is not None:
        conditions.append(col(SessionRow.started_at) < until)
    return conditions


def count_sessions(
    session: Session,
    *,
    patient_ids: Sequence[str],
    device_id: str | None = None,
    program: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """How many sessions ``list_sessions`` pages through with the same filters."""
    if not patient_ids:
        return 0
    query = (
        select(func.count())
        .select_from(SessionRow)
        .where(col(SessionRow.patient_id).in_(patient_ids))
        .where(*_session_conditions(device_id, program, since, until))
    )
    return int(session.exec(query).one())


def list_sessions(
    session: Session,
    *,
    patient_ids: Sequence[str],
    device_id: str | None = None,
    program: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Sequence[SessionRow]:
    """Sessions of ``patient_ids``, newest start first (ties: latest stored first).

    For several patients, each patient's newest ``offset + limit`` come from the (patient,
    started_at) index and only those are merged, so the cost does not grow with history."""
    if not patient_ids:
        return []

    conditions = _session_conditions(device_id, program, since, until)

    def filtered(query: Any) -> Any:
        return query.where(*conditions)

    newest_first = (col(SessionRow.started_at).desc(), col(SessionRow.id).desc())
    query = filtered(select(SessionRow))
    if len(patient_ids) == 1:
        query = query.where(SessionRow.patient_id == patient_ids[0])
    elif len(patient_ids) > MERGE_MAX_PATIENTS or offset + limit > MERGE_MAX_ROWS:
        query = query.where(col(SessionRow.patient_id).in_(patient_ids))
    else:
        per_patient = [
            filtered(select(col(SessionRow.started_at), col(SessionRow.id)))
            .where(SessionRow.patient_id == patient_id)
            .order_by(*newest_first)
            .limit(offset + limit)
            .subquery()
            for patient_id in patient_ids
        ]
        candidates = union_all(
            *(select(sub.c.started_at, sub.c.id) for sub in per_patient)
        ).subquery()
        # The page is chosen among the candidates from the index alone; only its rows are read.
        page = (
            select(candidates.c.id)
            .order_by(candidates.c.started_at.desc(), candidates.c.id.desc())
            .offset(offset)
            .limit(limit)
        )
        query = select(SessionRow).where(col(SessionRow.id).in_(page))
        return session.exec(query.order_by(*newest_first)).all()
    query = query.order_by(*newest_first)
    rows: Sequence[SessionRow] = session.exec(query.offset(offset).limit(limit)).all()
    return rows


def _event_conditions(
    patient_id: str, event_type: str | None, since: datetime | None, until: datetime | None
) -> list[ColumnElement[bool]]:
    # Routine hand-overs old agents sent are kept but are no safety events (docs/safety-events.md)
    conditions = [
        col(SafetyEventRow.patient_id) == patient_id,
        col(SafetyEventRow.event_type).not_like(f"{ROUTINE_TYPE_PREFIX}%"),
    ]
    if event_type is not None:
        conditions.append(col(SafetyEventRow.event_type) == event_type)
    if since is not None:
        conditions.append(col(SafetyEventRow.device_time) >= since)
    if until is not None:
        conditions.append(col(SafetyEventRow.device_time) < until)
    return conditions


def count_events(
    session: Session,
    *,
    patient_id: str,
    event_type: str | None,
    since: datetime | None,
    until: datetime | None,
) -> int:
    """How many safety events ``list_events`` pages through with the same filters."""
    query = (
        select(func.count())
        .select_from(SafetyEventRow)
        .where(*_event_conditions(patient_id, event_type, since, until))
    )
    return int(session.exec(query).one())


def list_events(
    session: Session,
    *,
    patient_id: str,
    event_type: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
) -> Sequence[SafetyEventRow]:
    query = select(SafetyEventRow).where(*_event_conditions(patient_id, event_type, since, until))
    query = query.order_by(col(SafetyEventRow.device_time).desc(), col(SafetyEventRow.id).desc())
    return session.exec(query.offset(offset).limit(limit)).all()


def dose_report(session: Session, *, patient_id: str, today: date, days: int) -> DoseReport:
    """Daily dose for ``days`` days up to ``today`` with the rolling 7-day sum of each day."""
    first = today - timedelta(days=days - 1 + 6)
    rows = session.exec(
        select(DoseDailyRow).where(
            DoseDailyRow.patient_id == patient_id,
            col(DoseDailyRow.day) >= first,
            col(DoseDailyRow.day) <= today,
        )
    ).all()
    by_day = {row.day: row for row in rows}
    out: list[DoseDay] = []
    for offset in range(days - 1, -1, -1):
        day = today - timedelta(days=offset)
        row = by_day.get(day)
        window = sum(
            by_day[d].dose_fraction
            for d in (day - timedelta(days=k) for k in range(7))
            if d in by_day
        )
        out.append(
            DoseDay(
                day=day,
                dose_fraction=row.dose_fraction if row else 0.0,
                sessions=row.sessions if row else 0,
                played_s=row.played_s if row else 0.0,
                rolling_7d=window,
            )
        )
    rolling = out[-1].rolling_7d if out else 0.0
    return DoseReport(
        patient_id=patient_id,
        allowance_fraction=WEEKLY_ALLOWANCE,
        rolling_7d=rolling,
        remaining_fraction=max(0.0, WEEKLY_ALLOWANCE - rolling),
        days=out,
    )


def adherence_report(
    session: Session, *, patient_id: str, today: date, weeks: int, per_week: int
) -> AdherenceReport:
    """Sessions that count (``common.session_count``: the daily roll-up counts only those) per
    ISO week (Monday first) against the prescription."""
    this_monday = today - timedelta(days=today.weekday())
    first = this_monday - timedelta(weeks=weeks - 1)
    rows = session.exec(
        select(col(DoseDailyRow.day), col(DoseDailyRow.sessions)).where(
            DoseDailyRow.patient_id == patient_id, col(DoseDailyRow.day) >= first
        )
    ).all()
    done: dict[date, int] = {}
    for day, count in rows:
        monday = day - timedelta(days=day.weekday())
        done[monday] = done.get(monday, 0) + count
    out = []
    for k in range(weeks):
        monday = first + timedelta(weeks=k)
        count = done.get(monday, 0)
        out.append(
            AdherenceWeek(
                week_start=monday,
                done=count,
                prescribed=per_week,
                ratio=(count / per_week) if per_week else None,
            )
        )
    return AdherenceReport(patient_id=patient_id, sessions_per_week=per_week, weeks=out)


def _audit_conditions(
    patient_id: str | None,
    actor_id: int | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if patient_id is not None:
        conditions.append(col(AuditRow.patient_id) == patient_id)
    if actor_id is not None:
        conditions.append(col(AuditRow.actor_id) == actor_id)
    if action is not None:
        conditions.append(col(AuditRow.action) == action)
    if since is not None:
        conditions.append(col(AuditRow.at) >= since)
    if until is not None:
        conditions.append(col(AuditRow.at) < until)
    return conditions


def count_audit(
    session: Session,
    *,
    patient_id: str | None,
    actor_id: int | None,
    since: datetime | None,
    until: datetime | None,
    action: str | None = None,
) -> int:
    """How many audit rows ``list_audit`` pages through with the same filters."""
    query = (
        select(func.count())
        .select_from(AuditRow)
        .where(*_audit_conditions(patient_id, actor_id, action, since, until))
    )
    return int(session.exec(query).one())


def count_rows(session: Session, query: Any) -> int:
    """How many rows ``query`` (a ``select``, before any offset or limit) would give."""
    return int(session.exec(select(func.count()).select_from(query.subquery())).one())


def list_audit(
    session: Session,
    *,
    patient_id: str | None,
    actor_id: int | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    offset: int,
    action: str | None = None,
) -> Sequence[AuditRow]:
    query = select(AuditRow).where(*_audit_conditions(patient_id, actor_id, action, since, until))
    query = query.order_by(col(AuditRow.id).desc())
    return session.exec(query.offset(offset).limit(limit)).all()


def utc_today(now: datetime) -> date:
    return now.astimezone(UTC).date()
