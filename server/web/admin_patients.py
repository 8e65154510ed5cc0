"""Admin pages for patients (``/admin/patients``): who they are and who cares for them, never how
they are doing.

What an admin sees of a patient: name and date of birth (to tell two people apart), the devices
assigned to them and when, and the clinicians linked to them; what an admin does: add a patient,
correct the name or date of birth, link and unlink clinicians, assign devices (on the devices
page) and end an assignment. Not shown: notes, sessions, dose, safety events, outcomes, the
prescription: the clinical record is the linked clinicians' (``/patients``). Every change goes
through the API's own route function (same checks, same audit rows); every patient shown is an
audited read of their identity, as ``GET /api/v1/patients`` audits it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Final

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, col, select

from resonera.server import crud
from resonera.server.api.deps import AppState, PatientId, SessionDep, StateDep
from resonera.server.api.routes import assignments as api_assignments
from resonera.server.api.routes import patients as api_patients
from resonera.server.audit import audit
from resonera.server.models import AssignmentRow, ClinicianPatientRow, PatientRow, UserRow
from resonera.server.schemas import (
    AssignmentUpdate,
    LinkIn,
    PatientCreate,
    PatientUpdate,
    server_zone_name,
)
from resonera.server.security import now_utc
from resonera.server.web.admin_forms import FormRefused, checked, through_api
from resonera.server.web.auth import AdminPage, check_csrf
from resonera.server.web.render import PAGE_HEADERS, PageError, render
from resonera.server.web.web_user import WebUser

router = APIRouter(include_in_schema=False)

#: What a change's redirect says on the page it lands on (fixed texts: nothing from the request).
DONE: Final = {
    "created": "The patient was added.",
    "saved": "The name and date of birth were saved.",
    "linked": "The clinician can now see and care for this patient.",
    "unlinked": "The clinician no longer sees this patient.",
    "ended": "The assignment was ended.",
    "cancelled": "The assignment was cancelled before it began.",
    "archived": "The patient is archived: clinicians no longer see them in their lists.",
    "restored": "The patient is back in care: their clinicians see them again.",
}


@dataclass(frozen=True)
class PatientLine:
    """A patient as the admin pages show them: identity and care, no health data."""

    id: str
    name: str
    birth_date: date
    devices: tuple[str, ...]
    clinicians: tuple[str, ...]
    #: The day (server's time zone) an admin archived the patient; None: in care.
    archived_on: date | None = None


def local_when(value: datetime | None) -> str:
    """A stored time as the admin entered it: the day in the server's time zone, with the time
    of day only when it is not midnight there; "open" for none."""
    if value is None:
        return "open"
    local = value.astimezone()
    if local.time() == datetime.min.time():
        return local.date().isoformat()
    return local.strftime("%Y-%m-%d %H:%M %Z")


def last_day_text(valid_to: datetime | None) -> str:
    """An exclusive end as the admin pages show it: the last day it covers when it falls at a
    midnight of the server's time zone (the forms take the last day), else the time itself."""
    if valid_to is None:
        return "open"
    local = valid_to.astimezone()
    if local.time() == datetime.min.time():
        return (local.date() - timedelta(days=1)).isoformat()
    return "before " + local.strftime("%Y-%m-%d %H:%M %Z")


def after_last_day(text: str) -> str:
    """The exclusive end the API takes for a form's last day (``YYYY-MM-DD``): the next day;
    text that is no day goes on as it is, for the API's check to name it."""
    try:
        return (date.fromisoformat(text.strip()) + timedelta(days=1)).isoformat()
    except (ValueError, OverflowError):
        return text


def patient_lines(
    session: Session,
    state: AppState,
    request: Request,
    web: WebUser,
    ids: list[str] | None = None,
    *,
    archived: bool = True,
) -> list[PatientLine]:
    """Every patient (or those of ``ids``) by name, each read audited; archived ones too unless
    ``archived`` is False."""
    query = select(PatientRow)
    if ids is not None:
        query = query.where(col(PatientRow.id).in_(ids))
    if not archived:
        query = query.where(col(PatientRow.archived_at).is_(None))
    now = now_utc()
    emails = dict(session.exec(select(UserRow.id, UserRow.email)).all())
    lines = []
    for row in session.exec(query).all():
        identity = crud.patient_public(session, state.cipher, row)
        current = session.exec(
            select(AssignmentRow.device_id).where(
                AssignmentRow.patient_id == row.id,
                col(AssignmentRow.valid_from) <= now,
                (col(AssignmentRow.valid_to).is_(None)) | (col(AssignmentRow.valid_to) > now),
            )
        ).all()
        lines.append(
            PatientLine(
                id=row.id,
                name=identity.name,
                birth_date=identity.birth_date,
                devices=tuple(sorted(current)),
                clinicians=tuple(sorted(emails.get(uid, "?") for uid in identity.clinician_ids)),
                archived_on=row.archived_at.astimezone().date() if row.archived_at else None,
            )
        )
        audit(session, request, web.user, "read", "patient", resource_id=row.id, patient_id=row.id)
    session.commit()
    return sorted(lines, key=lambda line: (line.name.casefold(), line.birth_date, line.id))


def clinicians(session: Session) -> list[UserRow]:
    return list(
        session.exec(
            select(UserRow).where(UserRow.role == "clinician").order_by(col(UserRow.email))
        ).all()
    )


def _go(path: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?done={done}", status_code=303, headers=dict(PAGE_HEADERS))


def _list_page(
    request: Request,
    web: WebUser,
    state: AppState,
    session: Session,
    *,
    done: str = "",
    show_archived: bool = False,
    status: int = 200,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    return render(
        "admin_patients.html",
        {
            "web": web,
            "title": "Patients (admin)",
            "lines": patient_lines(session, state, request, web, archived=show_archived),
            "show_archived": show_archived,
            "clinicians": clinicians(session),
            "notice": DONE.get(done, ""),
            "errors": errors or {},
            "form": form or {},
        },
        status=status,
    )


@router.get("/admin/patients")
def patients_admin(
    *,
    request: Request,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    done: Annotated[str, Query(max_length=16)] = "",
    archived: Annotated[bool, Query()] = False,
) -> HTMLResponse:
    """Patients in care by name; with ``archived`` (the "show archived" box) the archived too."""
    return _list_page(request, web, state, session, done=done, show_archived=archived)


@router.post("/admin/patients", response_model=None)
def add_patient(
    *,
    request: Request,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    name: Annotated[str, Form(max_length=400)] = "",
    birth_date: Annotated[str, Form(max_length=40)] = "",
    clinician_id: Annotated[str, Form(max_length=12)] = "",
) -> Response:
    """A new patient, linked at once to the clinician chosen (if any)."""
    check_csrf(web, csrf_token)
    form = {"name": name, "birth_date": birth_date, "clinician_id": clinician_id}
    try:
        body = checked(lambda: PatientCreate(name=name.strip(), birth_date=birth_date))
        link = checked(lambda: LinkIn(user_id=clinician_id)) if clinician_id else None
        made = through_api(
            lambda: api_patients.create_patient(
                body=body, user=web.user, state=state, session=session, request=request
            )
        )
        if link is not None:
            through_api(
                lambda: api_patients.link_clinician(
                    patient_id=made.id, body=link, admin=web.user, session=session, request=request
                )
            )
    except FormRefused as exc:
        session.rollback()
        return _list_page(
            request, web, state, session, status=exc.status, errors=exc.errors, form=form
        )
    return _go(f"/admin/patients/{made.id}", "created")


def patient_page(
    request: Request,
    web: WebUser,
    state: AppState,
    session: Session,
    patient_id: str,
    *,
    done: str = "",
    status: int = 200,
    errors: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    found = patient_lines(session, state, request, web, [patient_id])
    if not found:
        raise PageError(404, "There is no such patient.")
    line = found[0]
    linked = set(
        session.exec(
            select(ClinicianPatientRow.user_id).where(ClinicianPatientRow.patient_id == patient_id)
        ).all()
    )
    everyone = clinicians(session)
    assignments = session.exec(
        select(AssignmentRow)
        .where(AssignmentRow.patient_id == patient_id)
        .order_by(col(AssignmentRow.valid_from).desc())
    ).all()
    return render(
        "admin_patient.html",
        {
            "web": web,
            "title": f"{line.name} (admin)",
            "p": line,
            "linked": [u for u in everyone if u.id in linked],
            "unlinked": [u for u in everyone if u.id not in linked],
            "assignments": [
                {
                    "id": a.id,
                    "device_id": a.device_id,
                    "from": local_when(a.valid_from),
                    "to": last_day_text(a.valid_to),
                    "open": a.valid_to is None or a.valid_to > now_utc(),
                    "upcoming": a.valid_from > now_utc(),
                }
                for a in assignments
            ],
            "zone": server_zone_name(),
            "today": datetime.now().astimezone().date().isoformat(),
            "notice": DONE.get(done, ""),
            "errors": errors or {},
            "form": {"name": line.name, "birth_date": line.birth_date.isoformat(), **(form or {})},
        },
        status=status,
    )


@router.get("/admin/patients/{patient_id}")
def patient_admin(
    *,
    request: Request,
    patient_id: PatientId,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    done: Annotated[str, Query(max_length=16)] = "",
) -> HTMLResponse:
    return patient_page(request, web, state, session, patient_id, done=done)


def _on_patient_page(
    act: Callable[[], object],
    done: str,
    *,
    request: Request,
    web: WebUser,
    state: AppState,
    session: Session,
    patient_id: str,
    form: dict[str, str] | None = None,
) -> Response:
    """Carry out ``act`` (the API's own route functions, through ``checked`` and ``through_api``)
    and go back to the patient's page saying ``done``; a refusal rolls back and shows that page
    again with why, and what was typed (``form``)."""
    try:
        act()
    except FormRefused as exc:
        session.rollback()
        return patient_page(
            request,
            web,
            state,
            session,
            patient_id,
            status=exc.status,
            errors=exc.errors,
            form=form,
        )
    return _go(f"/admin/patients/{patient_id}", done)


@router.post("/admin/patients/{patient_id}", response_model=None)
def edit_patient(
    *,
    request: Request,
    patient_id: PatientId,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    name: Annotated[str, Form(max_length=400)] = "",
    birth_date: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    """Correct the name and date of birth (notes are the clinicians' and stay as they are)."""
    check_csrf(web, csrf_token)

    def save() -> None:
        body = checked(lambda: PatientUpdate(name=name.strip(), birth_date=birth_date))
        through_api(
            lambda: api_patients.update_patient(
                patient_id=patient_id,
                body=body,
                user=web.user,
                state=state,
                session=session,
                request=request,
            )
        )

    return _on_patient_page(
        save,
        "saved",
        request=request,
        web=web,
        state=state,
        session=session,
        patient_id=patient_id,
        form={"name": name, "birth_date": birth_date},
    )


@router.post("/admin/patients/{patient_id}/clinicians", response_model=None)
def link(
    *,
    request: Request,
    patient_id: PatientId,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    clinician_id: Annotated[str, Form(max_length=12)] = "",
    unlink: Annotated[str, Form(max_length=12)] = "",
) -> Response:
    """Link the clinician ``clinician_id``, or unlink the one ``unlink`` names."""
    check_csrf(web, csrf_token)

    def change() -> None:
        if unlink:
            user_id = checked(lambda: LinkIn(user_id=unlink)).user_id
            through_api(
                lambda: api_patients.unlink_clinician(
                    patient_id=patient_id,
                    user_id=user_id,
                    admin=web.user,
                    session=session,
                    request=request,
                )
            )
        else:
            body = checked(lambda: LinkIn(user_id=clinician_id))
            through_api(
                lambda: api_patients.link_clinician(
                    patient_id=patient_id,
                    body=body,
                    admin=web.user,
                    session=session,
                    request=request,
                )
            )

    done = "unlinked" if unlink else "linked"
    return _on_patient_page(
        change, done, request=request, web=web, state=state, session=session, patient_id=patient_id
    )


@router.post("/admin/assignments/{assignment_id}/end", response_model=None)
def end_assignment(
    *,
    request: Request,
    assignment_id: int,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    last_day: Annotated[str, Form(max_length=40)] = "",
    cancel: Annotated[str, Form(max_length=8)] = "",
) -> Response:
    """End (or shorten) an assignment after its last day (``last_day``, in the server's time
    zone), or cancel (``cancel``) one that has not started yet."""
    check_csrf(web, csrf_token)
    row = session.get(AssignmentRow, assignment_id) if 0 < assignment_id < 2**31 else None
    if row is None:
        raise PageError(404, "There is no such assignment.")
    patient_id = row.patient_id
    valid_to = row.valid_from.isoformat() if cancel else after_last_day(last_day)

    def end() -> None:
        body = checked(lambda: AssignmentUpdate(valid_to=valid_to))
        through_api(
            lambda: api_assignments.end_assignment(
                assignment_id=assignment_id,
                body=body,
                admin=web.user,
                session=session,
                request=request,
            )
        )

    done = "cancelled" if cancel else "ended"
    return _on_patient_page(
        end, done, request=request, web=web, state=state, session=session, patient_id=patient_id
    )
