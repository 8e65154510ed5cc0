"""``/assignments`` (admins): which device a patient uses, from when to when."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from sqlalchemy import or_
from sqlmodel import col, select

from resonera.server import crud
from resonera.server.api.deps import AdminUser, SessionDep, StateDep
from resonera.server.api.errors import ApiError
from resonera.server.api.paging import PAGED_RESPONSES, PageDep
from resonera.server.attribution import attribute_sessions
from resonera.server.audit import audit
from resonera.server.models import AssignmentRow, DeviceRow, PatientRow
from resonera.server.patient_archive import assignment_refusal
from resonera.server.schemas import (
    INT32_MAX,
    AssignmentCreate,
    AssignmentPublic,
    AssignmentUpdate,
    DeviceIdStr,
    PatientIdStr,
)
from resonera.server.security import now_utc

router = APIRouter(prefix="/assignments", tags=["assignments"])
AssignmentId = Annotated[int, Path(ge=1, le=INT32_MAX)]


def _public(row: AssignmentRow, attributed: int = 0) -> AssignmentPublic:
    out = AssignmentPublic.model_validate(row, from_attributes=True)
    out.attributed_sessions = attributed
    return out


@router.get("", response_model=list[AssignmentPublic], responses=PAGED_RESPONSES)
def list_assignments(
    *,
    admin: AdminUser,
    session: SessionDep,
    request: Request,
    response: Response,
    page: PageDep,
    device_id: Annotated[DeviceIdStr | None, Query()] = None,
    patient_id: Annotated[PatientIdStr | None, Query()] = None,
) -> list[AssignmentPublic]:
    """Assignments, newest first. Which device a patient uses is patient data: each assignment
    read is audited (``read``/``assignment``, with its patient), as patient reads are."""
    query = select(AssignmentRow)
    if device_id is not None:
        query = query.where(AssignmentRow.device_id == device_id)
    if patient_id is not None:
        query = query.where(AssignmentRow.patient_id == patient_id)
    page.describe(request, response, crud.count_rows(session, query))
    query = query.order_by(col(AssignmentRow.id).desc()).offset(page.offset).limit(page.limit)
    rows = session.exec(query).all()
    out = [_public(r) for r in rows]
    for row in rows:
        audit(
            session,
            request,
            admin,
            "read",
            "assignment",
            resource_id=str(row.id),
            patient_id=row.patient_id,
        )
    session.commit()
    return out


@router.post("", response_model=AssignmentPublic, status_code=status.HTTP_201_CREATED)
def create_assignment(
    *,
    body: AssignmentCreate,
    admin: AdminUser,
    state: StateDep,
    session: SessionDep,
    request: Request,
) -> AssignmentPublic:
    """Assign a device to a patient. Refused (409) if the device is assigned to anyone in an
    overlapping period, or (409) when the patient is archived (restored first). Sessions and
    events of the device in the period that nobody owned yet become the patient's, and the
    patient's desired state is published to the device."""
    if body.valid_to is not None and body.valid_to <= body.valid_from:
        raise ApiError(422, "valid_to must be after valid_from")
    if session.get(DeviceRow, body.device_id) is None:
        raise ApiError(404, f"no device {body.device_id}")
    patient = session.get(PatientRow, body.patient_id)
    if patient is None:
        raise ApiError(404, f"no patient {body.patient_id}")
    refusal = assignment_refusal(patient)
    if refusal is not None:
        raise ApiError(409, refusal)
    overlap = select(AssignmentRow).where(
        AssignmentRow.device_id == body.device_id,
        or_(col(AssignmentRow.valid_to).is_(None), col(AssignmentRow.valid_to) > body.valid_from),
    )
    if body.valid_to is not None:
        overlap = overlap.where(col(AssignmentRow.valid_from) < body.valid_to)
    if session.exec(overlap).first() is not None:
        raise ApiError(409, f"device {body.device_id} is assigned in an overlapping period")
    now = now_utc()
    row = AssignmentRow(**body.model_dump(), created_at=now)
    session.add(row)
    session.flush()
    attributed = attribute_sessions(session.connection(), row)
    outgoing = []
    if row.valid_from <= now and (row.valid_to is None or row.valid_to > now):
        document = state.desired.for_device(session, row.device_id, row.patient_id, now)
        outgoing = [document] if document is not None else []
    audit(
        session,
        request,
        admin,
        "create",
        "assignment",
        resource_id=str(row.id),
        patient_id=row.patient_id,
    )
    session.commit()
    state.desired.publish(outgoing)
    session.refresh(row)
    return _public(row, attributed)


@router.patch("/{assignment_id}", response_model=AssignmentPublic)
def end_assignment(
    *,
    assignment_id: AssignmentId,
    body: AssignmentUpdate,
    admin: AdminUser,
    session: SessionDep,
    request: Request,
) -> AssignmentPublic:
    """Set when the device stopped being the patient's (only to end or shorten a period).

    An assignment that has not started yet is cancelled by a ``valid_to`` at or before its
    ``valid_from``: the row is deleted (audited ``cancel``), since nothing happened under it, and
    the answer is the assignment as it was with its period emptied (``valid_to`` =
    ``valid_from``). Without this a patient given a device from next month could be archived
    only once that month had begun. A period that has begun can only end after its start."""
    row = session.get(AssignmentRow, assignment_id)
    if row is None:
        raise ApiError(404, f"no assignment {assignment_id}")
    cancel = body.valid_to <= row.valid_from
    if cancel and row.valid_from <= now_utc():
        raise ApiError(
            422,
            "valid_to must be after valid_from (only an assignment that has not started yet "
            "can be cancelled)",
        )
    if row.valid_to is not None and body.valid_to > row.valid_to:
        raise ApiError(409, "an assignment can be ended or shortened, not extended")
    answer = _public(row)
    if cancel:
        answer.valid_to = row.valid_from
        session.delete(row)
    else:
        row.valid_to = body.valid_to
        session.add(row)
    audit(
        session,
        request,
        admin,
        "cancel" if cancel else "update",
        "assignment",
        resource_id=str(assignment_id),
        patient_id=answer.patient_id,
    )
    session.commit()
    if cancel:
        return answer
    session.refresh(row)
    return _public(row)
