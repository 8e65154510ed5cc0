"""``/sessions``: a clinician's sessions across all their patients (newest first)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from resonera.server import crud
from resonera.server.api.deps import ClinicianUser, SessionDep, Since, Until
from resonera.server.api.paging import PAGED_RESPONSES, PageDep
from resonera.server.audit import audit
from resonera.server.schemas import DeviceIdStr, SessionPublic, Text

router = APIRouter(prefix="/sessions", tags=["sessions"])


@router.get("", response_model=list[SessionPublic], responses=PAGED_RESPONSES)
def list_sessions(
    *,
    user: ClinicianUser,
    session: SessionDep,
    request: Request,
    response: Response,
    page: PageDep,
    device_id: Annotated[DeviceIdStr | None, Query()] = None,
    program: Annotated[Text | None, Query(max_length=120)] = None,
    since: Since = None,
    until: Until = None,
) -> Any:
    """Sessions of the caller's patients; filter by device, program, start time; page."""
    assert user.id is not None
    patients = crud.clinician_patient_ids(session, user.id)
    total = crud.count_sessions(
        session,
        patient_ids=patients,
        device_id=device_id,
        program=program,
        since=since,
        until=until,
    )
    page.describe(request, response, total)
    rows = crud.list_sessions(
        session,
        patient_ids=patients,
        device_id=device_id,
        program=program,
        since=since,
        until=until,
        limit=page.limit,
        offset=page.offset,
    )
    for patient_id in sorted({r.patient_id for r in rows if r.patient_id is not None}):
        audit(session, request, user, "read", "sessions", patient_id=patient_id)
    session.commit()
    return rows  # FastAPI validates them into SessionPublic once (response_model)
