"""Dashboard pages for admins (devices: the fleet's alert conditions (``fleet_alerts``), who has
each device, assigning one, revoking one with a confirmation) and auditors (the audit log); the
admin pages for patients and users live in ``admin_patients.py`` and ``admin_users.py`` (archiving
in ``admin_archive.py``) and are routed from here."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import select

from resonera.common.topics import DEVICE_ID_PATTERN
from resonera.server import crud, fleet_alerts, patient_archive
from resonera.server.alerts import rules
from resonera.server.api.deps import SessionDep, StateDep
from resonera.server.api.routes import assignments as api_assignments
from resonera.server.api.routes.devices import revoke_and_audit
from resonera.server.models import AssignmentRow, DeviceRow, PatientRow, UserRow
from resonera.server.revocation import REVOCATION_OUTCOMES
from resonera.server.schemas import AssignmentCreate, day_start, server_zone_name
from resonera.server.security import now_utc
from resonera.server.web import admin_archive, admin_patients, admin_users, downloads
from resonera.server.web.admin_forms import FormRefused, checked, through_api
from resonera.server.web.admin_patients import after_last_day, last_day_text, local_when
from resonera.server.web.auth import AdminPage, AuditPage, check_csrf
from resonera.server.web.device_views import device_lines
from resonera.server.web.render import PAGE_HEADERS, PageError, render

router = APIRouter(include_in_schema=False)
router.include_router(downloads.router)
router.include_router(admin_patients.router)
router.include_router(admin_archive.router)
router.include_router(admin_users.router)
#: Revocations that left the device reachable through the broker, or that failed in part: the
#: page shows them as failures (what is left to do), not as a success.
_NOT_DONE: Final = frozenset({"reload_failed", "reload_needed", "manual"})
AUDIT_PAGE_SIZE: Final = 100


DeviceId = Annotated[str, Path(pattern=f"^{DEVICE_ID_PATTERN}$", max_length=64)]


@router.get("/devices")
def devices_page(
    *,
    request: Request,
    web: AdminPage,
    session: SessionDep,
    state: StateDep,
    revoked: Annotated[str, Query(pattern=f"^(|{DEVICE_ID_PATTERN})$", max_length=64)] = "",
    outcome: Annotated[str, Query(max_length=32)] = "",
    assigned: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> HTMLResponse:
    """``revoked`` and ``outcome``: where the Revoke button sends the admin back to (the notice
    is one of the fixed texts, never text from the request); ``assigned``: the assignment just
    made (its patient is named from the database, never from the address)."""
    said = REVOCATION_OUTCOMES.get(outcome)
    notice = (
        f"Device {revoked} is revoked: its messages are quarantined; {said}"
        if revoked and said
        else ""
    )
    now = now_utc()
    lines = device_lines(session, now, timedelta(seconds=state.settings.device_time_skew_s))
    alerts = fleet_alerts.fleet_alerts(session.connection(), now)
    wanted = sorted({line.patient_id for line in lines if line.patient_id is not None})
    made = session.get(AssignmentRow, assigned) if assigned is not None else None
    if made is not None:
        wanted = sorted({*wanted, made.patient_id})
    names = (
        {p.id: p.name for p in admin_patients.patient_lines(session, state, request, web, wanted)}
        if wanted
        else {}
    )
    if made is not None:
        notice = (
            f"Device {made.device_id} is assigned to {names.get(made.patient_id, 'the patient')} "
            f"from {local_when(made.valid_from)} to {last_day_text(made.valid_to)}."
        )
    return render(
        "devices.html",
        {
            "web": web,
            "title": "Devices",
            "lines": lines,
            "names": names,
            "skew_limit_s": state.settings.device_time_skew_s,
            "notice": notice,
            "failed": bool(revoked) and outcome in _NOT_DONE,
            "alerts": alerts,
            # Per rule, the devices it is about: their cells are marked in the table.
            "flagged": {c.rule: {f.device_id for f in c.devices} for c in alerts.met},
            "alerts_offline_days": rules.OFFLINE_AFTER.days,
            "alerts_certificate_days": rules.CERTIFICATE_WITHIN.days,
        },
    )


def _device_or_404(session: SessionDep, device_id: str) -> DeviceRow:
    device = session.get(DeviceRow, device_id)
    if device is None:
        raise PageError(404, f"There is no device {device_id}.")
    return device


@router.get("/devices/{device_id}/revoke")
def revoke_confirmation(device_id: DeviceId, web: AdminPage, session: SessionDep) -> HTMLResponse:
    """The question before a revocation: what it does and that it cannot be undone here."""
    device = _device_or_404(session, device_id)
    return render(
        "revoke.html",
        {"web": web, "title": f"Revoke {device.id}?", "device": device},
    )


def _assign_page(
    request: Request,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    device: DeviceRow,
    *,
    status: int = 200,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    today = datetime.now().astimezone().date().isoformat()
    return render(
        "assign.html",
        {
            "web": web,
            "title": f"Assign {device.id}",
            "device": device,
            "patients": admin_patients.patient_lines(session, state, request, web, archived=False),
            "zone": server_zone_name(),
            "errors": errors or {},
            "form": {"valid_from": today, "last_day": "", "patient_id": "", **(form or {})},
        },
        status=status,
    )


@router.get("/devices/{device_id}/assign")
def assign_form(
    *,
    request: Request,
    device_id: DeviceId,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
) -> HTMLResponse:
    """Whom the device goes to, from which day to which (days in the server's time zone)."""
    return _assign_page(request, web, state, session, _device_or_404(session, device_id))


def _check_in_care(session: SessionDep, patient_id: str) -> None:
    """An archived patient is given no device (``patient_archive.assignment_refusal``): 409."""
    patient = session.get(PatientRow, patient_id.strip()) if patient_id.strip() else None
    refusal = patient_archive.assignment_refusal(patient) if patient is not None else None
    if refusal is not None:
        raise FormRefused(409, {"": refusal[:1].upper() + refusal[1:] + "."})


def _check_days(first: str, last: str) -> None:
    """A last day before the first is the form's mistake, said in its own words."""
    try:
        backwards = date.fromisoformat(last.strip()) < date.fromisoformat(first.strip())
    except ValueError:
        return  # not days: the API's check names the field
    if backwards:
        raise FormRefused(400, {"last_day": "The last day must not be before the first day."})


@router.post("/devices/{device_id}/assign", response_model=None)
def assign_device(
    *,
    request: Request,
    device_id: DeviceId,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    patient_id: Annotated[str, Form(max_length=40)] = "",
    valid_from: Annotated[str, Form(max_length=40)] = "",
    last_day: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    """Assign as ``POST /api/v1/assignments`` does (its checks: overlaps are a 409; its audit; the
    patient's desired state published to the device): from the start of ``valid_from`` to the
    end of ``last_day`` (none: open), days in the server's time zone."""
    check_csrf(web, csrf_token)
    device = _device_or_404(session, device_id)
    form = {"patient_id": patient_id, "valid_from": valid_from, "last_day": last_day}
    try:
        _check_in_care(session, patient_id)
        _check_days(valid_from, last_day)
        body = checked(
            lambda: AssignmentCreate.model_validate(
                {
                    "device_id": device.id,
                    "patient_id": patient_id,
                    "valid_from": valid_from.strip(),
                    "valid_to": after_last_day(last_day) if last_day.strip() else None,
                }
            )
        )
        made = through_api(
            lambda: api_assignments.create_assignment(
                body=body, admin=web.user, state=state, session=session, request=request
            )
        )
    except FormRefused as exc:
        session.rollback()
        errors = {("last_day" if k == "valid_to" else k): v for k, v in exc.errors.items()}
        return _assign_page(
            request, web, state, session, device, status=exc.status, errors=errors, form=form
        )
    return RedirectResponse(
        f"/devices?assigned={made.id}", status_code=303, headers=dict(PAGE_HEADERS)
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
    device = _device_or_404(session, device_id)
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
    """The start of ``day`` in the server's time zone, as the API's days; None for none, and for
    a day so near the calendar's ends that it has no UTC equivalent (no bound there)."""
    if day is None:
        return None
    try:
        return day_start(day)
    except ValueError:
        return None


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
            "zone": server_zone_name(),
            "unknown_actor": unknown_actor,
        },
    )
