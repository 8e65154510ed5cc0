"""``/devices`` (admins): the registry ingest checks every message against."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from sqlmodel import Session, col, select

from resonera.common.topics import DEVICE_ID_PATTERN
from resonera.server import crud
from resonera.server.api.deps import AdminUser, AppState, SessionDep, StateDep
from resonera.server.api.errors import ApiError
from resonera.server.api.paging import PAGED_RESPONSES, PageDep
from resonera.server.audit import audit
from resonera.server.models import DeviceDesiredRow, DeviceRow, DeviceStateRow, UserRow
from resonera.server.revocation import DeviceRevocation, revoke_device
from resonera.server.schemas import DeviceCreate, DevicePublic, DeviceUpdate
from resonera.server.security import now_utc
from resonera.server.settings import EnrollmentSettings

router = APIRouter(prefix="/devices", tags=["devices"])
DeviceId = Annotated[str, Path(pattern=f"^{DEVICE_ID_PATTERN}$", max_length=64)]


def _public(session: Session, device: DeviceRow) -> DevicePublic:
    state = session.get(DeviceStateRow, device.id)
    desired = session.get(DeviceDesiredRow, device.id)
    out = DevicePublic.model_validate(device, from_attributes=True)
    if state is not None:
        out.last_seq = state.last_seq if state.last_seq >= 0 else None
        out.last_received_at = state.last_received_at
        out.online = state.online
        out.reported_version = state.reported_version
    if desired is not None:
        out.desired_version = desired.version
    return out


@router.get("", response_model=list[DevicePublic], responses=PAGED_RESPONSES)
def list_devices(
    *, admin: AdminUser, session: SessionDep, page: PageDep, request: Request, response: Response
) -> list[DevicePublic]:
    """Registered devices by id (a page of them: ``X-Total-Count``, ``Link``)."""
    query = select(DeviceRow)
    page.describe(request, response, crud.count_rows(session, query))
    rows = session.exec(query.order_by(col(DeviceRow.id)).offset(page.offset).limit(page.limit))
    return [_public(session, d) for d in rows.all()]


@router.post("", response_model=DevicePublic, status_code=status.HTTP_201_CREATED)
def register_device(
    *, body: DeviceCreate, admin: AdminUser, session: SessionDep, request: Request
) -> DevicePublic:
    """Register a device: from now on its messages are ingested (409 if the id is taken)."""
    if session.get(DeviceRow, body.id) is not None:
        raise ApiError(409, f"device {body.id} is already registered")
    device = DeviceRow(**body.model_dump(), created_at=now_utc())
    session.add(device)
    audit(session, request, admin, "create", "device", resource_id=body.id)
    session.commit()
    session.refresh(device)
    return _public(session, device)


@router.get("/{device_id}", response_model=DevicePublic)
def get_device(device_id: DeviceId, admin: AdminUser, session: SessionDep) -> DevicePublic:
    device = session.get(DeviceRow, device_id)
    if device is None:
        raise ApiError(404, f"no device {device_id}")
    return _public(session, device)


@router.patch("/{device_id}", response_model=DevicePublic)
def update_device(
    *,
    device_id: DeviceId,
    body: DeviceUpdate,
    admin: AdminUser,
    session: SessionDep,
    state: StateDep,
    request: Request,
) -> DevicePublic:
    """Revoke (as ``POST /devices/{id}/revoke``), un-revoke, set its key or fingerprint."""
    device = session.get(DeviceRow, device_id)
    if device is None:
        raise ApiError(404, f"no device {device_id}")
    changes = body.model_dump(exclude_unset=True)
    for name, value in changes.items():
        if value is not None:
            setattr(device, name, value)
    session.add(device)
    if changes.get("revoked") is True:
        return _revoke(session, request, admin, state, device)
    audit(session, request, admin, "update", "device", resource_id=device_id)
    session.commit()
    session.refresh(device)
    return _public(session, device)


@router.post("/{device_id}/revoke", response_model=DevicePublic)
def revoke(
    *, device_id: DeviceId, admin: AdminUser, session: SessionDep, state: StateDep, request: Request
) -> DevicePublic:
    """Revoke the device: ingest quarantines its messages, its data stays. With the issuing CA on
    this server, its certificates also go on the CRL and ``enrollment.broker_reload_command``
    runs; ``revocation`` says what was done and what is left to do by hand."""
    device = session.get(DeviceRow, device_id)
    if device is None:
        raise ApiError(404, f"no device {device_id}")
    return _revoke(session, request, admin, state, device)


def _revoke(
    session: Session, request: Request, admin: UserRow, state: AppState, device: DeviceRow
) -> DevicePublic:
    done = revoke_and_audit(session, request, admin, state.settings.enrollment, device)
    session.commit()
    # committed first: a device told it is revoked finds it so if it asks (docs/shut-out.md)
    state.desired.notify_revoked(device.id, now_utc())
    session.refresh(device)
    out = _public(session, device)
    out.revocation = done.summary()
    return out


def revoke_and_audit(
    session: Session,
    request: Request,
    user: UserRow,
    settings: EnrollmentSettings,
    device: DeviceRow,
) -> DeviceRevocation:
    """``revoke_device`` with its audit rows (the API and the dashboard share it); the caller
    commits."""
    done = revoke_device(session, settings, device, now=now_utc())
    # "update" on the device, as every change of the registry is audited
    audit(session, request, user, "update", "device", resource_id=device.id)
    for serial in done.listed:
        audit(session, request, user, "revoke", "device_certificate", resource_id=serial)
    if done.broker_reloaded is not None:
        action = "broker_reload" if done.broker_reloaded else "broker_reload_failed"
        audit(session, request, user, action, "broker", resource_id=device.id)
    return done
