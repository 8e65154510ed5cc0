"""Patient exports: ``/patients/{id}/export/fhir`` (a FHIR R4 Bundle, ``server/export/fhir.py``)
and ``/patients/{id}/export/sessions.csv`` (``server/export/sessions_csv.py``), for a period
(``from`` inclusive, ``to`` exclusive, both optional).

Who: a clinician for their own patients, an admin for any (404 otherwise, as for every patient
route); auditors read the audit log instead. Every export is an audit row (action ``export``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import or_
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from resonera.server import crud
from resonera.server.api.deps import (
    AdminOrClinician,
    PatientId,
    SessionDep,
    Since,
    StateDep,
    Until,
    check_period,
    own_patient,
)
from resonera.server.audit import audit
from resonera.server.export.fhir import PatientIdentity, build_bundle
from resonera.server.export.sessions_csv import in_period, session_csv_chunks
from resonera.server.models import (
    AssignmentRow,
    AuditRow,
    CheckInRow,
    DeviceRow,
    SafetyEventRow,
    SessionRow,
)
from resonera.server.security import now_utc

router = APIRouter(prefix="/patients", tags=["exports"])
FHIR_JSON = "application/fhir+json"


#: A patient's rows in ``[since, until)`` as CSV text chunks, read as the response streams.
CsvChunks = Callable[[Engine, str, datetime | None, datetime | None], Iterator[str]]


def add_patient_csv(
    router: APIRouter, path: str, *, what: str, chunks: CsvChunks, rows: str, doc: str
) -> Callable[..., StreamingResponse]:
    """Add ``GET path`` to ``router``: the patient's ``what`` in a period (``from``, ``to``) as a
    CSV download, ``export_{what}_csv``; its period and the caller's access checked, audited.
    ``rows`` says what a row is in the OpenAPI document, ``doc`` what the route answers."""

    def export(
        *,
        patient_id: PatientId,
        user: AdminOrClinician,
        state: StateDep,
        session: SessionDep,
        request: Request,
        since: Since = None,
        until: Until = None,
    ) -> StreamingResponse:
        check_period(since, until)
        own_patient(session, user, patient_id)
        # The query runs, and the first chunk is made, before the answer's status is sent: what
        # fails there is an error response, never a 200 whose body stops short.
        rows = chunks(state.engine, patient_id, since, until)
        first = next(rows)
        audit(session, request, user, "export", f"{what}_csv", patient_id=patient_id)
        session.commit()
        return StreamingResponse(
            itertools.chain([first], rows),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{what}-{patient_id}.csv"',
                # patient data: no cache keeps it
                "Cache-Control": "no-store",
            },
        )

    # The name is the OpenAPI operation id and summary, as for a route written out.
    export.__name__ = export.__qualname__ = f"export_{what}_csv"
    export.__doc__ = doc
    router.get(
        path,
        response_class=StreamingResponse,
        responses={200: {"content": {"text/csv": {}}, "description": rows}},
    )(export)
    return export


def _devices(
    session: Session,
    patient_id: str,
    used: set[str],
    since: datetime | None,
    until: datetime | None,
) -> list[DeviceRow]:
    """Devices assigned to the patient during the period, and any their records name."""
    query = select(AssignmentRow.device_id).where(AssignmentRow.patient_id == patient_id)
    if until is not None:
        query = query.where(col(AssignmentRow.valid_from) < until)
    if since is not None:
        query = query.where(
            or_(col(AssignmentRow.valid_to).is_(None), col(AssignmentRow.valid_to) > since)
        )
    ids = used | set(session.exec(query).all())
    if not ids:
        return []
    return list(
        session.exec(
            select(DeviceRow).where(col(DeviceRow.id).in_(ids)).order_by(col(DeviceRow.id))
        )
    )


@router.get(
    "/{patient_id}/export/fhir",
    response_class=JSONResponse,
    responses={200: {"content": {FHIR_JSON: {}}, "description": "a FHIR R4 Bundle (collection)"}},
)
def export_fhir(
    *,
    patient_id: PatientId,
    user: AdminOrClinician,
    state: StateDep,
    session: SessionDep,
    request: Request,
    since: Since = None,
    until: Until = None,
) -> JSONResponse:
    """The patient, their devices, sessions (with level and dose), safety events and audit trail
    in the period, as one FHIR R4 Bundle of type ``collection``."""
    check_period(since, until)
    patient = own_patient(session, user, patient_id)
    identity = crud.patient_public(session, state.cipher, patient)
    sessions = session.exec(
        select(SessionRow)
        .where(SessionRow.patient_id == patient_id, *in_period(SessionRow.started_at, since, until))
        .order_by(col(SessionRow.started_at), col(SessionRow.id))
    ).all()
    events = session.exec(
        select(SafetyEventRow)
        .where(
            SafetyEventRow.patient_id == patient_id,
            *in_period(SafetyEventRow.device_time, since, until),
        )
        .order_by(col(SafetyEventRow.device_time), col(SafetyEventRow.id))
    ).all()
    trail = session.exec(
        select(AuditRow)
        .where(AuditRow.patient_id == patient_id, *in_period(AuditRow.at, since, until))
        .order_by(col(AuditRow.id))
    ).all()
    checkins = session.exec(
        select(CheckInRow)
        .where(
            CheckInRow.patient_id == patient_id, *in_period(CheckInRow.answered_at, since, until)
        )
        .order_by(col(CheckInRow.answered_at), col(CheckInRow.id))
    ).all()
    used = {row.device_id for row in sessions} | {row.device_id for row in events}
    bundle = build_bundle(
        patient=PatientIdentity(identity.id, identity.name, identity.birth_date),
        devices=_devices(session, patient_id, used, since, until),
        sessions=sessions,
        events=events,
        audit=trail,
        now=now_utc(),
        checkins=checkins,
    )
    audit(session, request, user, "export", "fhir", patient_id=patient_id)
    session.commit()
    return JSONResponse(bundle, media_type=FHIR_JSON)


export_sessions_csv = add_patient_csv(
    router,
    "/{patient_id}/export/sessions.csv",
    what="sessions",
    chunks=session_csv_chunks,
    rows="one row per session",
    doc="The patient's sessions in the period, oldest first, with the session API's columns.",
)
