"""Clinician reset of a device's corrupted dose ledger, carried by the signed desired state.

``POST /patients/{id}/dose-ledger/reset`` (a clinician linked to the patient, or an admin; a reason is
required; audited) makes one request per device the patient uses now (or the one named), and
publishes each device a new signed document carrying it. The device carries a request out once, by
its id, between sessions, and only on a ledger that is corrupted: a reset removes the minutes that no
longer open and keeps the week's intact exposure, so it never gives back allowance really used. Its
``dose_ledger_reset`` safety event (with the week before and after) is what turns the request from
``pending`` into ``applied`` or ``refused`` in ``GET .../dose-ledger/reset``; until then every new
document of the device carries the request again (harmless: once by id).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from sqlmodel import col, select

from resonera.common.ids import new_id
from resonera.server.api.deps import (
    AdminOrClinician,
    PatientId,
    SessionDep,
    StateDep,
    own_patient,
)
from resonera.server.api.errors import ApiError
from resonera.server.api.paging import PAGED_RESPONSES, PageDep
from resonera.server.audit import audit
from resonera.server.desired import DesiredService, reset_outcomes
from resonera.server.models import DoseLedgerResetRow, SafetyEventRow
from resonera.server.schemas import DoseLedgerResetIn, DoseLedgerResetPublic
from resonera.server.security import now_utc

router = APIRouter(prefix="/patients", tags=["dose"])


def _public(row: DoseLedgerResetRow, answer: SafetyEventRow | None) -> DoseLedgerResetPublic:
    out = DoseLedgerResetPublic(
        id=row.id,
        patient_id=row.patient_id,
        device_id=row.device_id,
        reason=row.reason,
        requested_by=row.requested_by,
        requested_by_email=row.requested_by_email,
        requested_at=row.requested_at,
        status="pending",
    )
    if answer is None:
        return out
    detail = answer.body.get("dose_reset") or {}
    applied = detail.get("applied") is True

    def number(name: str) -> float | None:
        value = detail.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    removed = number("removed_rows")
    return out.model_copy(
        update={
            "status": "applied" if applied else "refused",
            "done_at": answer.device_time,
            "removed_rows": int(removed) if removed is not None else None,
            "week_fraction_before": number("week_fraction_before"),
            "week_fraction_after": number("week_fraction_after"),
            "device_note": str(answer.body.get("cause", ""))[:500],
        }
    )


def _list(session: SessionDep, patient_id: str) -> list[DoseLedgerResetPublic]:
    rows = session.exec(
        select(DoseLedgerResetRow)
        .where(DoseLedgerResetRow.patient_id == patient_id)
        .order_by(col(DoseLedgerResetRow.requested_at).desc(), col(DoseLedgerResetRow.id).desc())
    ).all()
    answers = reset_outcomes(session, {row.device_id for row in rows}) if rows else {}
    return [_public(row, answers.get((row.device_id, row.id))) for row in rows]


@router.post(
    "/{patient_id}/dose-ledger/reset",
    response_model=list[DoseLedgerResetPublic],
    status_code=status.HTTP_202_ACCEPTED,
)
def request_reset(
    *,
    patient_id: PatientId,
    body: DoseLedgerResetIn,
    user: AdminOrClinician,
    state: StateDep,
    session: SessionDep,
    request: Request,
) -> list[DoseLedgerResetPublic]:
    """Ask the patient's devices (or ``device_id``) to reset a corrupted dose ledger. Accepted
    (202): each device acts when it next gets its desired state, between sessions; a device whose
    ledger is intact refuses. 409 when the patient uses no device now."""
    own_patient(session, user, patient_id)
    assert user.id is not None
    now = now_utc()
    devices = DesiredService.devices_of(session, patient_id, now)
    if body.device_id is not None:
        if body.device_id not in devices:
            raise ApiError(404, f"device {body.device_id} is not in use by patient {patient_id}")
        devices = [body.device_id]
    if not devices:
        raise ApiError(409, f"patient {patient_id} uses no device now: there is no ledger to reset")
    rows = [
        DoseLedgerResetRow(
            id=new_id(),
            patient_id=patient_id,
            device_id=device_id,
            reason=body.reason,
            requested_by=user.id,
            requested_by_email=user.email,
            requested_at=now,
        )
        for device_id in devices
    ]
    session.add_all(rows)
    session.flush()  # the documents built next carry the new requests
    outgoing = state.desired.reissue(session, patient_id, devices, now)
    for row in rows:
        audit(
            session,
            request,
            user,
            "reset",
            "dose_ledger",
            resource_id=f"{row.device_id}:{row.id}",
            patient_id=patient_id,
        )
    session.commit()
    state.desired.publish(outgoing)
    return [_public(row, None) for row in rows]


@router.get(
    "/{patient_id}/dose-ledger/reset",
    response_model=list[DoseLedgerResetPublic],
    responses=PAGED_RESPONSES,
)
def list_resets(
    *,
    patient_id: PatientId,
    user: AdminOrClinician,
    session: SessionDep,
    request: Request,
    response: Response,
    page: PageDep,
) -> list[DoseLedgerResetPublic]:
    """The patient's reset requests, newest first: ``pending`` until the device answers, then
    ``applied`` (with what it removed and the week before and after) or ``refused``."""
    own_patient(session, user, patient_id)
    every = _list(session, patient_id)
    page.describe(request, response, len(every))
    out = page.slice_of(every)
    audit(session, request, user, "read", "dose_ledger_reset", patient_id=patient_id)
    session.commit()
    return out
