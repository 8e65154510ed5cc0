"""``/audit`` (auditors): the append-only record of who read or changed what. Read-only: the API
has no route that edits or deletes it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from resonera.server import crud
from resonera.server.api.deps import AuditorUser, SessionDep, Since, Until
from resonera.server.schemas import INT32_MAX, AuditPublic, PatientIdStr

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=list[AuditPublic])
def list_audit(
    *,
    auditor: AuditorUser,
    session: SessionDep,
    patient_id: Annotated[PatientIdStr | None, Query()] = None,
    actor_id: Annotated[int | None, Query(ge=1, le=INT32_MAX)] = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[AuditPublic]:
    """Newest first; filter by patient, actor, time."""
    rows = crud.list_audit(
        session,
        patient_id=patient_id,
        actor_id=actor_id,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    return [AuditPublic.model_validate(r, from_attributes=True) for r in rows]
