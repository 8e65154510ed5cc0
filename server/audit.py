"""The audit log's writer: one ``AuditRow`` per change or read of patient data, added to the
caller's session so it commits with what it records.

Its own module, not the API's dependencies: the API's routes, the dashboard and the program library
all audit, and the library must not know the API layer.
"""

from __future__ import annotations

from fastapi import Request
from sqlmodel import Session

from resonera.server.models import AuditRow, DeviceDesiredRow, UserRow
from resonera.server.security import now_utc


def client_of(request: Request) -> str:
    """The client address of ``request`` (empty when the server cannot tell)."""
    return request.client.host if request.client is not None else ""


def audit(
    session: Session,
    request: Request | None,
    user: UserRow,
    action: str,
    resource: str,
    *,
    resource_id: str = "",
    patient_id: str | None = None,
) -> None:
    """Add an audit row to ``session``: it commits with the change it records (or with the read).
    Without a ``request`` (a script, not HTTP) the row has who and what, no method or path."""
    _add(
        session,
        request,
        (user.id, user.email, user.role),
        action,
        resource,
        resource_id=resource_id,
        patient_id=patient_id,
    )


def audit_device(
    session: Session,
    request: Request,
    device_id: str,
    action: str,
    resource: str,
    *,
    resource_id: str = "",
    patient_id: str | None = None,
) -> None:
    """An audit row for what a device did over HTTPS (authenticated by its client certificate):
    actor ``device:<id>``, role ``device``, no user id."""
    _add(
        session,
        request,
        (None, f"device:{device_id}", "device"),
        action,
        resource,
        resource_id=resource_id,
        patient_id=patient_id,
    )


def audit_device_fetch(
    session: Session, request: Request, device_id: str, resource: str, sha256: str
) -> None:
    """A device fetched the file ``sha256`` (a background, an update bundle): audited and
    committed, under the patient its desired state serves (none for a device without one)."""
    served = session.get(DeviceDesiredRow, device_id)
    audit_device(
        session,
        request,
        device_id,
        "read",
        resource,
        resource_id=sha256,
        patient_id=served.patient_id if served is not None else None,
    )
    session.commit()


def _add(
    session: Session,
    request: Request | None,
    actor: tuple[int | None, str, str],
    action: str,
    resource: str,
    *,
    resource_id: str,
    patient_id: str | None,
) -> None:
    actor_id, email, role = actor
    session.add(
        AuditRow(
            at=now_utc(),
            actor_id=actor_id,
            actor_email=email[:254],
            actor_role=role,
            action=action,
            resource=resource,
            resource_id=resource_id[:128],
            patient_id=patient_id,
            method=request.method if request is not None else "",
            path=request.url.path[:500] if request is not None else "",
            client=client_of(request)[:100] if request is not None else "",
        )
    )
