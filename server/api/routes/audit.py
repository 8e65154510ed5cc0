"""``/audit`` (auditors): the append-only record of who read or changed what. Read-only: the API
has no route that edits or deletes it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from resonera.server import crud
from resonera.server.api.deps import AuditorUser, SessionDep, Since, Until
from resonera.server.api.paging import PAGED_RESPONSES, PageDep
from resonera.server.schemas import INT32_MAX, AuditPublic, PatientIdStr

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=list[AuditPublic], responses=PAGED_RESPONSES)
def list_audit(
    *,
    auditor: AuditorUser,
    session: SessionDep,
    request: Request,
    response: Response,
    page: PageDep,
    patient_id: Annotated[PatientIdStr | None, Query()] = None,
    actor_id: Annotated[int | None, Query(ge=1, le=INT32_MAX)] = None,
    since: Since = None,
    until: Until = None,
) -> list[AuditPublic]:
    """Newest first; filter by patient, actor, time."""
    total = crud.count_audit(
        session, patient_id=patient_id, actor_id=actor_id, since=since, until=until
    )
    page.describe(request, response, total)
    rows = crud.list_audit(
        session,
        patient_id=patient_id,
        actor_id=actor_id,
        since=since,
        until=until,
        limit=page.limit,
        offset=page.offset,
    )
    return [AuditPublic.model_validate(r, from_attributes=True) for r in rows]
