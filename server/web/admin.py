"""Dashboard pages for admins (devices, revocation) and auditors (the audit log)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlmodel import select

from resonera.common.topics import DEVICE_ID_PATTERN
from resonera.server import crud
from resonera.server.api.deps import SessionDep, StateDep
from resonera.server.api.routes.devices import revoke_and_audit
from resonera.server.models import DeviceRow, UserRow
from resonera.server.revocation import REVOCATION_OUTCOMES
from resonera.server.security import now_utc
from resonera.server.web import downloads
from resonera.server.web.auth import AdminPage, AuditPage, check_csrf
from resonera.server.web.device_views import device_lines
from resonera.server.web.render import PAGE_HEADERS, PageError, render

router = APIRouter(include_in_schema=False)
router.include_router(downloads.router)
AUDIT_PAGE_SIZE: Final = 100


DeviceId = Annotated[str, Path(pattern=f"^{DEVICE_ID_PATTERN}$", max_length=64)]


@router.get("/devices")
def devices_page(
    web: AdminPage,
    session: SessionDep,
    state: StateDep,
    revoked: Annotated[str, Query(pattern=f"^(|{DEVICE_ID_PATTERN})$", max_length=64)] = "",
    outcome: Annotated[str, Query(max_length=32)] = "",
) -> HTMLResponse:
    """``revoked`` and ``outcome``: where the Revoke button sends the admin back to (the notice
    is one of the fixed texts, never text from the request)."""
    said = REVOCATION_OUTCOMES.get(outcome)
    notice = (
        f"Device {revoked} is revoked: its messages are quarantined; {said}"
        if revoked and said
        else ""
    )
    return render(
        "devices.html",
        {
            "web": web,
            "title": "Devices",
            "lines": device_lines(
                session, now_utc(), timedelta(seconds=state.settings.device_time_skew_s)
            ),
            "skew_limit_s": state.settings.device_time_skew_s,
            "notice": notice,
        },
    )


@router.post("/devices/{device_id}/revoke")
def revoke_device(
    *,
    request: Request,
    device_id: DeviceId,
    web: AdminPage,
    session: SessionDep,
    state: StateDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> RedirectResponse:
    """Revoke the device as ``POST /api/v1/devices/{id}/revoke`` does: ingest quarantines its
    messages; with the issuing CA on this server its certificates go on the CRL and the broker
    is reloaded. The page then says how that went."""
    check_csrf(web, csrf_token)
    device = session.get(DeviceRow, device_id)
    if device is None:
        raise PageError(404, f"There is no device {device_id}.")
    done = revoke_and_audit(session, request, web.user, state.settings.enrollment, device)
    session.commit()
    state.desired.notify_revoked(device.id, now_utc())  # committed first, as the API does
    query = urlencode({"revoked": device_id, "outcome": done.outcome})
    return RedirectResponse(f"/devices?{query}", status_code=303, headers=dict(PAGE_HEADERS))


def _day(text: str, name: str) -> date | None:
    if not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise PageError(400, f"“{name}” must be a day as YYYY-MM-DD, not {text!r}.") from None


def _day_start(day: date | None) -> datetime | None:
    return None if day is None else datetime.combine(day, time.min, UTC)


@router.get("/audit")
def audit_page(
    *,
    web: AuditPage,
    session: SessionDep,
    actor: Annotated[str, Query(max_length=254)] = "",
    action: Annotated[str, Query(max_length=64)] = "",
    since_text: Annotated[str, Query(alias="from", max_length=10)] = "",
    until_text: Annotated[str, Query(alias="to", max_length=10)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    """Newest first; filter by actor email, action, and days (``to`` inclusive). Empty fields
    (as an unfilled form sends them) filter nothing."""
    since, until = _day(since_text, "from"), _day(until_text, "to")
    actor_id: int | None = None
    unknown_actor = False
    if actor.strip():
        user = session.exec(select(UserRow).where(UserRow.email == actor.strip().lower())).first()
        unknown_actor = user is None
        actor_id = user.id if user is not None else None
    rows = (
        []
        if unknown_actor
        else crud.list_audit(
            session,
            patient_id=None,
            actor_id=actor_id,
            action=action.strip() or None,
            since=_day_start(since),
            # "to" is inclusive: up to the next day's start; the calendar's last day has none.
            until=_day_start(until + timedelta(days=1) if until not in (None, date.max) else None),
            limit=AUDIT_PAGE_SIZE + 1,
            offset=(page - 1) * AUDIT_PAGE_SIZE,
        )
    )
    return render(
        "audit.html",
        {
            "web": web,
            "title": "Audit log",
            "rows": rows[:AUDIT_PAGE_SIZE],
            "more": len(rows) > AUDIT_PAGE_SIZE,
            "page": page,
            "filters": {
                "actor": actor,
                "action": action,
                "from": since.isoformat() if since else "",
                "to": until.isoformat() if until else "",
            },
            "unknown_actor": unknown_actor,
        },
    )
