"""Session effectiveness (``server/analytics.py``): a patient's outcome view, a clinician's cohort
view, and the check-ins as CSV.

Who: a clinician for their own patients, an admin for any (an unlinked patient is a 404, as on
every patient route); auditors read the audit log instead. The cohort is a clinician's own
patients, every patient for an admin. Every read is an audit row.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Final

from fastapi import APIRouter, Query, Request
from sqlmodel import Session, col, select

from resonera.server import analytics, crud
from resonera.server.api.deps import (
    AdminOrClinician,
    PatientId,
    SessionDep,
    StateDep,
    own_patient,
)
from resonera.server.api.routes.exports import add_patient_csv
from resonera.server.audit import audit
from resonera.server.export.checkins_csv import checkin_csv_chunks
from resonera.server.models import CheckInRow
from resonera.server.schemas import CohortOutcomes, PatientOutcomes, SkippedCheckIn
from resonera.server.security import now_utc

router = APIRouter(tags=["outcomes"])
Days = Annotated[
    int, Query(ge=1, le=366, description="UTC days up to and including today (default 90)")
]
#: Skips listed with the outcomes at most (the latest): the CSV export has every one.
SKIPS_LISTED: Final = 500


def skipped_checkins(
    session: Session, patient_id: str, first_day: date, last_day: date
) -> list[SkippedCheckIn]:
    """The patient's skipped check-ins answered in ``first_day``–``last_day`` (UTC days), with
    why each was skipped: oldest first, the latest ``SKIPS_LISTED``."""
    start = datetime.combine(first_day, time(), tzinfo=UTC)
    end = datetime.combine(last_day + timedelta(days=1), time(), tzinfo=UTC)
    rows = session.exec(
        select(CheckInRow)
        .where(
            CheckInRow.patient_id == patient_id,
            col(CheckInRow.skipped).is_(True),
            CheckInRow.answered_at >= start,
            CheckInRow.answered_at < end,
        )
        .order_by(col(CheckInRow.answered_at).desc(), col(CheckInRow.id).desc())
        .limit(SKIPS_LISTED)
    ).all()
    return [SkippedCheckIn.model_validate(row, from_attributes=True) for row in reversed(rows)]


@router.get("/patients/{patient_id}/outcomes", response_model=PatientOutcomes)
def patient_outcomes(
    *,
    patient_id: PatientId,
    user: AdminOrClinician,
    state: StateDep,
    session: SessionDep,
    request: Request,
    days: Days = 90,
) -> PatientOutcomes:
    """Adherence per ISO week against the prescribed sessions per week, check-in trends per
    question (daily means, rolling 7-day means), the before → after change per program and
    question (a 95 % interval only from 5 pairs on; fewer are flagged ``too_few``), per day
    the sessions, dose and signal level, and the skipped check-ins with why each was skipped
    (declined by the person, or the device could not ask)."""
    own_patient(session, user, patient_id)
    current = state.desired.current(session, patient_id)
    report = analytics.patient_outcomes(
        session,
        patient_id=patient_id,
        today=crud.utc_today(now_utc()),
        days=days,
        sessions_per_week=current.sessions_per_week if current is not None else 0,
        profile=current.profile if current is not None else None,
    )
    report.skipped_checkins = skipped_checkins(
        session, patient_id, report.first_day, report.last_day
    )
    audit(session, request, user, "read", "outcomes", patient_id=patient_id)
    session.commit()
    return report


@router.get("/cohort/outcomes", response_model=CohortOutcomes)
def cohort_outcomes(
    *,
    user: AdminOrClinician,
    session: SessionDep,
    request: Request,
    days: Days = 90,
) -> CohortOutcomes:
    """Per program over the cohort (a clinician's patients; every patient for an admin): the
    patients using it, sessions, completion rate and the mean before → after improvement with
    its number of pairs."""
    report = analytics.cohort_outcomes(
        session,
        clinician_id=user.id if user.role == "clinician" else None,
        today=crud.utc_today(now_utc()),
        days=days,
    )
    audit(session, request, user, "read", "cohort_outcomes")
    session.commit()
    return report


export_checkins_csv = add_patient_csv(
    router,
    "/patients/{patient_id}/export/checkins.csv",
    what="checkins",
    chunks=checkin_csv_chunks,
    rows="one row per check-in answer",
    doc="The patient's check-in answers (and skips) in the period, oldest first.",
)
