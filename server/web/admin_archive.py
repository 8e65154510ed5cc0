"""Archiving and restoring a patient from the admin pages (``patient_archive`` has the rules).

Archiving asks first, on a page of its own that says what it does (works without script, as
revoking a device does); restoring needs no question (it undoes nothing). Both go through the API's
route functions: the same checks, the same audit rows, the same refusals, shown on the patient's
admin page where the assignment to end is.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from resonera.server import patient_archive
from resonera.server.api.deps import PatientId, SessionDep, StateDep
from resonera.server.api.routes import patients as api_patients
from resonera.server.security import now_utc
from resonera.server.web.admin_forms import FormRefused, through_api
from resonera.server.web.admin_patients import last_day_text, patient_lines, patient_page
from resonera.server.web.auth import AdminPage, check_csrf
from resonera.server.web.render import PAGE_HEADERS, PageError, render

router = APIRouter(include_in_schema=False)


@router.get("/admin/patients/{patient_id}/archive")
def archive_question(
    *,
    request: Request,
    patient_id: PatientId,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
) -> HTMLResponse:
    """What archiving does, and the button; instead of the button, the devices to take back
    first when the patient still has one."""
    found = patient_lines(session, state, request, web, [patient_id])
    if not found:
        raise PageError(404, "There is no such patient.")
    held = patient_archive.held_assignments(session, patient_id, now_utc())
    return render(
        "admin_archive.html",
        {
            "web": web,
            "title": f"Archive {found[0].name}?",
            "p": found[0],
            "held": [(a.device_id, last_day_text(a.valid_to)) for a in held],
        },
    )


def _changed(
    change: str,
    *,
    request: Request,
    patient_id: str,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
) -> Response:
    route = api_patients.archive_patient if change == "archive" else api_patients.restore_patient
    try:
        through_api(
            lambda: route(patient_id=patient_id, admin=web.user, session=session, request=request)
        )
    except FormRefused as exc:
        session.rollback()
        if exc.status == 404:
            raise PageError(404, "There is no such patient.") from None
        return patient_page(
            request, web, state, session, patient_id, status=exc.status, errors=exc.errors
        )
    done = "archived" if change == "archive" else "restored"
    return RedirectResponse(
        f"/admin/patients/{patient_id}?done={done}", status_code=303, headers=dict(PAGE_HEADERS)
    )


@router.post("/admin/patients/{patient_id}/archive", response_model=None)
def archive(
    *,
    request: Request,
    patient_id: PatientId,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Archive as ``POST /api/v1/patients/{id}/archive`` does."""
    check_csrf(web, csrf_token)
    return _changed(
        "archive", request=request, patient_id=patient_id, web=web, state=state, session=session
    )


@router.post("/admin/patients/{patient_id}/restore", response_model=None)
def restore(
    *,
    request: Request,
    patient_id: PatientId,
    web: AdminPage,
    state: StateDep,
    session: SessionDep,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Restore as ``POST /api/v1/patients/{id}/restore`` does."""
    check_csrf(web, csrf_token)
    return _changed(
        "restore", request=request, patient_id=patient_id, web=web, state=state, session=session
    )
