"""``/sessions``: a clinician's sessions across all their patients (newest first)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from resonera.server import crud
from resonera.server.api.deps import ClinicianUser, SessionDep, Since, Until
from resonera.server.audit import audit
from resonera.server.schemas import DeviceIdStr, SessionPublic, Text

MAX_LIMIT = 1000
router = APIRouter(prefix="/sessions", tags=["sessions"])


@router.get("", response_model=list[SessionPublic])
def list_sessions(
    *,
    user: ClinicianUser,
    session: SessionDep,
    request: Request,
    device_id: Annotated[DeviceIdStr | None, Query()] = None,
    program: Annotated[Text | None, Query(max_length=120)] = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Any:
    """Sessions of the caller's patients; filter by device, program, start time; page."""
    assert user.id is not None
    patients = crud.clinician_patient_ids(session, user.id)
    rows = crud.list_sessions(
        session,
        patient_ids=patients,
        device_id=device_id,
        program=program,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    for patient_id in sorted({r.patient_id for r in rows if r.patient_id is not None}):
        audit(session, request, user, "read", "sessions", patient_id=patient_id)
    session.commit()
    return rows  # FastAPI validates them into SessionPublic once (response_model)
