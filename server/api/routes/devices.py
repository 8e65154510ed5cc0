"""``/devices`` (admins): the registry ingest checks every message against."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status
from sqlmodel import Session, col, select

from resonera.common.topics import DEVICE_ID_PATTERN
from resonera.server.api.deps import AdminUser, SessionDep, audit
from resonera.server.api.errors import ApiError
from resonera.server.models import DeviceDesiredRow, DeviceRow, DeviceStateRow
from resonera.server.schemas import DeviceCreate, DevicePublic, DeviceUpdate
from resonera.server.security import now_utc

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


@router.get("", response_model=list[DevicePublic])
def list_devices(
    *,
    admin: AdminUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[DevicePublic]:
    rows = session.exec(select(DeviceRow).order_by(col(DeviceRow.id)).offset(offset).limit(limit))
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
    request: Request,
) -> DevicePublic:
    """Revoke (its messages go to quarantine), un-revoke, set its key or fingerprint."""
    device = session.get(DeviceRow, device_id)
    if device is None:
        raise ApiError(404, f"no device {device_id}")
    for name, value in body.model_dump(exclude_unset=True).items():
        if value is not None:
            setattr(device, name, value)
    session.add(device)
    audit(session, request, admin, "update", "device", resource_id=device_id)
    session.commit()
    session.refresh(device)
    return _public(session, device)
